"""What indexing a file means against the stored chunks, and the counts of a whole run.

Every engine plans files with :func:`plan_file` and counts them with :meth:`IndexSummary.
record`, so chunk ids, duplicates, stale chunks and skipped files are handled identically
whoever reads the file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwen3_rag.core.runtime import warn_truncated as core_warn_truncated

from .documents import (
    SUPPORTED_SUFFIXES,
    Chunk,
    DocumentError,
    SkippedSource,
    _source_path,
    chunk_file,
    is_gone,
)

logger = logging.getLogger("qwen3_rag.indexing")


@dataclass
class FilePlan:
    """What indexing one file means against the chunks already stored for it."""

    source: str
    #: All chunks of the file (duplicates included), as counted in the summary.
    chunks: int = 0
    #: Chunks to embed and store: ids not stored yet, each id once.
    fresh: list[Chunk] = field(default_factory=list)
    #: Stored ids the file no longer has; removed once all of ``fresh`` is stored.
    stale: set[str] = field(default_factory=set)
    #: Why the file could not be read (it is skipped), or None.
    skipped: str | None = None
    #: Undecodable bytes replaced with U+FFFD.
    replaced: int = 0
    #: Chunks already stored.
    unchanged: int = 0


def plan_file(path: Path, stored: set[str], chunk_size: int, chunk_overlap: int) -> FilePlan:
    """Read and chunk ``path``; split its chunks into fresh ones and stale stored ids."""
    plan = FilePlan(str(path))
    try:
        chunks, plan.replaced = chunk_file(path, chunk_size, chunk_overlap)
    except OSError as e:
        plan.skipped = f"cannot read it: {e.strerror or e}"
        return plan
    except DocumentError as e:  # a damaged PDF (documents.read_text says which)
        plan.skipped = str(e)
        return plan
    plan.chunks = len(chunks)
    # Duplicate chunks within a file share an id; Chroma refuses duplicate ids.
    plan.fresh = list({c.id: c for c in chunks if c.id not in stored}.values())
    plan.stale = stored - {c.id for c in chunks}
    plan.unchanged = plan.chunks - len(plan.fresh)
    return plan


@dataclass
class IndexSummary:
    """The counts of an index run, as the CLI prints them (``--json``: :meth:`as_dict`).

    Attributes:
        files: Files read.
        skipped: Sources not read (files and folders; see ``skipped_files``).
        chunks: Chunks of the files read.
        new: Chunks embedded and stored by this run.
        unchanged: Chunks already stored.
        removed: Stored chunks removed (stale versions, files gone).
        sources: The files read.
        skipped_files: ``{"path", "reason"}`` of each source not read.
        replaced_characters: Undecodable bytes replaced with U+FFFD, per file.
        removed_sources: Files whose chunks all went (gone, or no longer supported).
        truncated: Chunks longer than ``max_length`` tokens, cut (of ``new``).
        changed: Settings a rebuild changed: ``{name: [before, after]}``.
        collection_count: Chunks in the collection at the end.
        seconds: Wall time of the run.
    """

    files: int = 0
    skipped: int = 0
    chunks: int = 0
    new: int = 0
    unchanged: int = 0
    removed: int = 0
    sources: set[str] = field(default_factory=set)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    replaced_characters: dict[str, int] = field(default_factory=dict)
    removed_sources: list[str] = field(default_factory=list)
    truncated: int = 0
    changed: dict[str, list[Any]] = field(default_factory=dict)
    collection_count: int = 0
    seconds: float = 0.0

    def skip(self, source: SkippedSource) -> None:
        """Count a source that was not read, and say why."""
        logger.warning("skipped %s: %s", source.path, source.reason)
        self.skipped += 1
        self.skipped_files.append({"path": source.path, "reason": source.reason})

    def record(self, plan: FilePlan) -> None:
        """Count a planned file and log why it was skipped or altered."""
        if plan.skipped is not None:
            self.skip(SkippedSource(plan.source, plan.skipped))
            return
        if plan.replaced:
            logger.warning(
                "%s: %d undecodable bytes replaced with U+FFFD (not UTF-8)",
                plan.source,
                plan.replaced,
            )
            self.replaced_characters[plan.source] = plan.replaced
        self.files += 1
        self.chunks += plan.chunks
        self.sources.add(plan.source)
        self.unchanged += plan.unchanged

    def as_dict(self) -> dict[str, Any]:
        """The counts as ``qwen3-rag index --json`` prints them (``sources`` as a count)."""
        out = asdict(self)
        out["sources"] = len(self.sources)
        out["seconds"] = round(self.seconds, 2)
        return out


def remove_missing_sources(
    paths: Sequence[str],
    existing: dict[str, set[str]],
    summary: IndexSummary,
    collection: Any,
) -> None:
    """Delete the chunks of stored sources this run did not see and that should go.

    Chunks of files that no longer exist (:func:`~qwen3_rag.indexing.documents.is_gone`:
    only "no such file" counts, so a file in a folder made unreadable keeps its chunks), or
    that are no longer supported under an indexed folder, go; other folders' chunks stay.
    """
    roots = [_source_path(Path(p).expanduser()) for p in paths]
    for source, ids in sorted(existing.items()):
        if source in summary.sources:
            continue
        src = Path(source)
        unsupported = src.suffix.lower() not in SUPPORTED_SUFFIXES and any(
            src.is_relative_to(r) for r in roots
        )
        if unsupported or is_gone(source):
            collection.delete(ids=sorted(ids))
            summary.removed += len(ids)
            summary.removed_sources.append(source)


def warn_truncated(truncated: int, total: int, max_length: int) -> None:
    """Log one total for the chunks cut at ``max_length`` tokens during a run (the core's text)."""
    core_warn_truncated(
        truncated,
        total,
        max_length,
        unit="chunks",
        remedy="use a smaller chunk size (chunk_size, --chunk-size)",
    )
