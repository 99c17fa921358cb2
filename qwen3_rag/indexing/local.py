"""The single-process engine: read, chunk, embed and write in this process, in time-sized batches.

A kill at any moment loses at most the batch in flight: each batch is stored before the next
is embedded, and a file's old chunks go only once all its new ones are stored.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen3_rag.core import Qwen3Embedder

from .documents import Chunk, SkippedSource
from .errors import Interrupted
from .options import IndexOptions
from .plan import IndexSummary, plan_file, remove_missing_sources, warn_truncated
from .progress import Progress, StopRequest

#: Chunks per embed-and-write batch start here and adapt so that one batch takes about
#: ``TARGET_BATCH_SECONDS``: progress updates that often, and a kill loses at most that much.
FIRST_WRITE_BATCH = 16
MAX_WRITE_BATCH = 256
TARGET_BATCH_SECONDS = 2.0


@dataclass
class _FileState:
    """A file whose new chunks are queued: its stale chunks go once all of them are stored."""

    remaining: int
    stale: set[str]


class _Writer:
    """Embeds and writes queued chunks across files in bounded, time-sized batches."""

    def __init__(self, collection: Any, embedder: Qwen3Embedder, summary: IndexSummary) -> None:
        self.collection = collection
        self.embedder = embedder
        self.summary = summary
        self.queue: deque[Chunk] = deque()
        self.files: dict[str, _FileState] = {}
        self.size = FIRST_WRITE_BATCH
        self.written = 0
        #: Bytes of the files read so far (for the progress estimate).
        self.bytes_read = 0

    def add_file(self, source: str, fresh: list[Chunk], stale: set[str]) -> None:
        if fresh:
            self.files[source] = _FileState(len(fresh), stale)
            self.queue.extend(fresh)
        elif stale:
            self._delete(stale)

    def write(self, *, drain: bool = False) -> bool:
        """Write one batch if a full one is queued (any if ``drain``); True if it wrote."""
        if not self.queue or (len(self.queue) < self.size and not drain):
            return False
        batch = [self.queue.popleft() for _ in range(min(self.size, len(self.queue)))]
        started = time.perf_counter()
        encoded = self.embedder.encode_documents([c.text for c in batch])
        vectors = self.embedder.embed_encoded(encoded)
        # Counted here and reported once per run (plan.warn_truncated), not per batch.
        self.summary.truncated += encoded.truncated
        self.collection.add(
            ids=[c.id for c in batch],
            embeddings=vectors,
            documents=[c.text for c in batch],
            metadatas=[c.metadata for c in batch],
        )
        self.written += len(batch)
        self.summary.new += len(batch)
        # A file's old chunks go only after all its new ones are stored: an interrupted run
        # never leaves a file with neither version.
        stale: set[str] = set()
        for chunk in batch:
            state = self.files[chunk.metadata["source"]]
            state.remaining -= 1
            if state.remaining == 0:
                stale |= state.stale
                del self.files[chunk.metadata["source"]]
        if stale:
            self._delete(stale)
        seconds = time.perf_counter() - started
        wanted = int(TARGET_BATCH_SECONDS * len(batch) / max(seconds, 1e-6))
        self.size = max(1, min(wanted, 2 * self.size, MAX_WRITE_BATCH))
        return True

    def _delete(self, ids: set[str]) -> None:
        self.collection.delete(ids=sorted(ids))
        self.summary.removed += len(ids)


def index_locally(
    paths: Sequence[str],
    files: list[Path],
    skipped: list[SkippedSource],
    existing: dict[str, set[str]],
    collection: Any,
    embedder: Qwen3Embedder,
    options: IndexOptions,
    stop: StopRequest,
) -> IndexSummary:
    """Index ``files`` into ``collection`` with ``embedder``; the counts of the run.

    Raises:
        Interrupted: When ``stop`` is requested (after the write in flight).
    """
    summary = IndexSummary()
    for source in skipped:
        summary.skip(source)
    writer = _Writer(collection, embedder, summary)
    sizes = {p: _size(p) for p in files}
    total_bytes = max(sum(sizes.values()), 1)
    progress = Progress(options.progress, len(files))

    def show(final: bool = False) -> None:
        # Chunks still to come: the queue, plus the unread bytes at the density seen so far.
        queued, done = len(writer.queue), max(writer.bytes_read, 1)
        remaining = queued + (total_bytes - writer.bytes_read) * (writer.written + queued) / done
        progress.update(
            written=writer.written,
            files_read=summary.files + summary.skipped - len(skipped),
            remaining=remaining,
            final=final,
        )

    def check_stop() -> None:
        if stop.signal_name is not None:
            raise Interrupted(
                f"stopped by {stop.signal_name} after writing {writer.written} chunks"
            )

    try:
        for path in files:
            check_stop()
            writer.bytes_read += sizes[path]
            plan = plan_file(
                path, existing.get(str(path), set()), options.chunk_size, options.chunk_overlap
            )
            summary.record(plan)
            if plan.skipped is not None:
                continue
            writer.add_file(plan.source, plan.fresh, plan.stale)
            while writer.write():
                show()
                check_stop()
            show()
        while writer.write(drain=True):
            show()
            check_stop()
    finally:
        # One total for the run, also when it stops early: of the chunks embedded so far.
        warn_truncated(summary.truncated, writer.written, embedder.max_length)
    remove_missing_sources(paths, existing, summary, collection)
    show(final=True)
    return summary


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # read (and reported) as skipped when its turn comes
        return 0
