"""``qwen3-rag index``, ``query`` and ``prune``: files into a Chroma collection, questions out."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen3_rag.cli.common import (
    EXIT_DAMAGED,
    EXIT_OK,
    CliError,
    Interrupted,
    StopRequest,
    add_config_flags,
    check_options,
    deferred_stop,
    format_duration,
    given_options,
    logger,
    model_reference,
    out,
    require,
)
from qwen3_rag.cli.store import (
    _existing_ids,
    _gone,
    _store_flags,
    db_path,
    embedder_for_index,
    embedder_for_query,
    model_hint,
    open_client,
    open_collection_with,
    storage_errors,
    stored_config,
    stored_for_index,
)
from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    EmbedderConfig,
    Qwen3Embedder,
    Qwen3Reranker,
    RerankerConfig,
)
from qwen3_rag.documents import (
    SUPPORTED_SUFFIXES,
    Chunk,
    _source_path,
    chunk_file,
    find_files,
)

#: Chunks per embed-and-write batch start here and adapt so that one batch takes about
#: ``TARGET_BATCH_SECONDS``: progress updates that often, and a kill loses at most that much.
FIRST_WRITE_BATCH = 16
MAX_WRITE_BATCH = 256
TARGET_BATCH_SECONDS = 2.0
#: Seconds between progress lines when stderr is not a terminal.
PROGRESS_SECONDS = 5.0
#: The flags of ``--engine ray`` (flag -> argparse dest); refused with the local engine.
RAY_FLAGS = {
    "--ray-address": "ray_address",
    "--workers": "workers",
    "--gpus-per-worker": "gpus_per_worker",
    "--batch-size": "batch_size",
}


@dataclass
class IndexStats:
    """Counts for the summary line."""

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


class Progress:
    """Chunks embedded and written, with rate and ETA, on stderr.

    A terminal gets one line rewritten in place; a pipe or file gets a line every
    :data:`PROGRESS_SECONDS`. The total is estimated from the bytes read so far, so a single
    large file shows its progress from its first batch.
    """

    def __init__(self, enabled: bool, total_bytes: int, files: int) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.total_bytes = max(total_bytes, 1)
        self.files = files
        self.started = time.monotonic()
        self.last = 0.0
        self.width = 0

    def update(
        self, *, written: int, queued: int, bytes_read: int, files_read: int, final: bool = False
    ) -> None:
        """Show the current state (throttled unless ``final``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        interval = 0.2 if self.tty else PROGRESS_SECONDS
        if not final and now - self.last < interval:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = written / elapsed
        # Chunks still to come: the queue, plus the unread bytes at the density seen so far.
        expected = queued + (self.total_bytes - bytes_read) * (
            (written + queued) / max(bytes_read, 1)
        )
        if final:
            eta = f"done in {format_duration(elapsed)}"
        else:
            eta = f"ETA {format_duration(expected / rate)}" if rate > 0 else "ETA ?"
        self.emit(
            f"index: {written:,} chunks written, {rate:,.1f} chunks/s, "
            f"{files_read}/{self.files} files read, {eta}",
            final,
        )

    def emit(self, line: str, final: bool) -> None:
        """Write one progress line: rewritten in place on a terminal, appended otherwise."""
        if self.tty:
            sys.stderr.write("\r" + line.ljust(self.width) + ("\n" if final else ""))
            self.width = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


# -- index -----------------------------------------------------------------------------------
@dataclass
class FilePlan:
    """What indexing one file means against the chunks already stored for it.

    Every engine computes it the same way (:func:`plan_file`), so chunk ids, duplicates and
    stale chunks are handled identically whoever reads the file.
    """

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
    except (OSError, ValueError) as e:
        plan.skipped = str(e)
        return plan
    plan.chunks = len(chunks)
    # Duplicate chunks within a file share an id; Chroma refuses duplicate ids.
    plan.fresh = list({c.id: c for c in chunks if c.id not in stored}.values())
    plan.stale = stored - {c.id for c in chunks}
    plan.unchanged = plan.chunks - len(plan.fresh)
    return plan


def record_plan(stats: IndexStats, plan: FilePlan) -> None:
    """Count a planned file in ``stats`` and log why it was skipped or altered."""
    if plan.skipped is not None:
        logger.warning("skipped %s: %s", plan.source, plan.skipped)
        stats.skipped += 1
        stats.skipped_files.append({"path": plan.source, "reason": plan.skipped})
        return
    if plan.replaced:
        logger.warning(
            "%s: %d undecodable bytes replaced with U+FFFD (not UTF-8)",
            plan.source,
            plan.replaced,
        )
        stats.replaced_characters[plan.source] = plan.replaced
    stats.files += 1
    stats.chunks += plan.chunks
    stats.sources.add(plan.source)
    stats.unchanged += plan.unchanged


def remove_missing_sources(
    paths: list[str], existing: dict[str, set[str]], stats: IndexStats, collection: Any
) -> None:
    """Delete the chunks of stored sources this run did not see and that should go.

    Chunks of files that no longer exist (anywhere), or that are no longer supported under an
    indexed folder, go; other folders' chunks stay.
    """
    roots = [_source_path(Path(p).expanduser()) for p in paths]
    for source, ids in sorted(existing.items()):
        if source in stats.sources:
            continue
        src = Path(source)
        unsupported = src.suffix.lower() not in SUPPORTED_SUFFIXES and any(
            src.is_relative_to(r) for r in roots
        )
        if _gone(source) or unsupported:
            collection.delete(ids=sorted(ids))
            stats.removed += len(ids)
            stats.removed_sources.append(source)


def summary(stats: IndexStats, count: int, elapsed: float) -> dict[str, Any]:
    """An index run's counts as ``--json`` prints them."""
    return {
        **{k: v for k, v in vars(stats).items() if k != "sources"},
        "sources": len(stats.sources),
        "collection_count": count,
        "seconds": round(elapsed, 2),
    }


def report(args: argparse.Namespace, stats: IndexStats, count: int, elapsed: float) -> None:
    """Print the summary line (or ``--json``) of an index run."""
    if args.json:
        out(json.dumps(summary(stats, count, elapsed), ensure_ascii=False))
    else:
        out(
            f"indexed {stats.files} files ({stats.skipped} skipped): {stats.chunks} chunks, "
            f"{stats.new} new, {stats.unchanged} unchanged, {stats.removed} removed "
            f"in {elapsed:.1f}s -> collection {args.collection!r} ({count} chunks)"
        )


def check_index_options(args: argparse.Namespace) -> None:
    """Validate the chunking and model options before anything is opened."""
    if args.chunk_size < 1:
        raise CliError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    if not 0 <= args.chunk_overlap < args.chunk_size:
        raise CliError(
            f"--chunk-overlap must be from 0 to --chunk-size - 1 ({args.chunk_size - 1}), "
            f"got {args.chunk_overlap}"
        )
    check_options(EmbedderConfig, given_options(args, EmbedderConfig))


@dataclass
class _FileState:
    """A file whose new chunks are queued: its stale chunks go once all of them are stored."""

    remaining: int
    stale: set[str]


class _Writer:
    """Embeds and writes queued chunks across files in bounded, time-sized batches."""

    def __init__(self, collection: Any, embedder: Qwen3Embedder, stats: IndexStats) -> None:
        self.collection = collection
        self.embedder = embedder
        self.stats = stats
        self.queue: deque[Chunk] = deque()
        self.files: dict[str, _FileState] = {}
        self.size = FIRST_WRITE_BATCH
        self.written = 0
        #: Chunks embedded so far (the total that truncation warnings are counted against).
        self.embedded = 0
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
        vectors = self.embedder.embed_documents([c.text for c in batch])
        self.embedded += len(batch)
        self.collection.add(
            ids=[c.id for c in batch],
            embeddings=vectors,
            documents=[c.text for c in batch],
            metadatas=[c.metadata for c in batch],
        )
        self.written += len(batch)
        self.stats.new += len(batch)
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
        self.stats.removed += len(ids)


def _rebuild_hint(args: argparse.Namespace) -> str:
    where = f"--chroma-url {args.chroma_url}" if args.chroma_url else f"--db {db_path(args)}"
    paths = " ".join(getattr(args, "paths", None) or ["PATH"])
    return f"qwen3-rag index {paths} {where} --rebuild"


def _move_aside(path: Path) -> Path:
    """Move a damaged embedded database's files (not the lock) to a sibling folder."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    aside.mkdir()
    for item in path.iterdir():
        if item.name != ".qwen3-rag.lock":
            shutil.move(str(item), aside / item.name)
    return aside


def cmd_index(args: argparse.Namespace) -> int:
    """Index files into the collection; idempotent and resumable."""
    require("chromadb", "langchain_text_splitters", "pypdf")
    check_index_options(args)
    if args.engine == "ray":
        from qwen3_rag.distributed.engine import cmd_index_ray

        return cmd_index_ray(args)
    given = [flag for flag, dest in RAY_FLAGS.items() if getattr(args, dest) is not None]
    if given:
        raise CliError(f"{', '.join(given)} need(s) --engine ray")
    # From here on SIGINT/SIGTERM stop the run at the next safe point (between writes).
    with deferred_stop() as stop:
        return _index(args, stop)


def _index(args: argparse.Namespace, stop: StopRequest) -> int:
    started = time.perf_counter()
    files = find_files(args.paths)
    hint = _rebuild_hint(args)
    db = db_path(args)
    try:
        client = open_client(args, write=True, rebuild_hint=hint)
    except CliError as e:
        if not (args.rebuild and e.code == EXIT_DAMAGED and db is not None):
            raise
        aside = _move_aside(db)
        logger.warning("moved the damaged database files to %s", aside)
        client = open_client(args, write=True, rebuild_hint=hint)
    with storage_errors(db, hint):
        stored = stored_for_index(args, client)
        embedder = embedder_for_index(args, stored)
        collection = open_collection_with(client, args.collection, embedder)
        stats = _index_files(args, files, collection, embedder, stop)
        count = collection.count()
    report(args, stats, count, time.perf_counter() - started)
    return EXIT_OK


def _index_files(
    args: argparse.Namespace,
    files: list[Path],
    collection: Any,
    embedder: Qwen3Embedder,
    stop: StopRequest,
) -> IndexStats:
    existing = _existing_ids(collection)
    stats = IndexStats()
    writer = _Writer(collection, embedder, stats)
    sizes = {p: p.stat().st_size for p in files}
    progress = Progress(not args.quiet, sum(sizes.values()), len(files))

    def show(final: bool = False) -> None:
        progress.update(
            written=writer.written,
            queued=len(writer.queue),
            bytes_read=writer.bytes_read,
            files_read=stats.files + stats.skipped,
            final=final,
        )

    def check_stop() -> None:
        if stop.signal_name is not None:
            raise Interrupted(
                f"stopped by {stop.signal_name} after writing {writer.written} chunks"
            )

    truncation = TruncationCount()
    try:
        with truncation.installed():
            _index_loop(args, files, existing, stats, writer, sizes, show, check_stop)
    finally:
        # One total for the run, also when it stops early: of the chunks embedded so far.
        warn_truncated(truncation.truncated, writer.embedded, embedder.max_length)
    remove_missing_sources(args.paths, existing, stats, collection)
    show(final=True)
    return stats


class TruncationCount:
    """Counts the embedder's per-batch truncation warnings (and hides them) while installed."""

    def __init__(self) -> None:
        self.truncated = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """A logging filter: count a truncation record and drop it; pass any other."""
        args = record.args
        if "were truncated" not in str(record.msg) or not isinstance(args, tuple):
            return True
        truncated = args[0]
        if not isinstance(truncated, int):
            return True
        self.truncated += truncated
        return False

    @contextlib.contextmanager
    def installed(self) -> Iterator[TruncationCount]:
        """Count on the runtime's logger for the duration of the block."""
        source = logging.getLogger("qwen3_rag.core.runtime")
        source.addFilter(self)
        try:
            yield self
        finally:
            source.removeFilter(self)


def warn_truncated(truncated: int, total: int, max_length: int) -> None:
    """Log one total for the chunks cut at ``max_length`` tokens during a run."""
    if truncated:
        logger.warning(
            "%d of %d chunks were longer than max_length=%d tokens and were truncated "
            "(a smaller --chunk-size keeps all text)",
            truncated,
            total,
            max_length,
        )


def _index_loop(
    args: argparse.Namespace,
    files: list[Path],
    existing: dict[str, set[str]],
    stats: IndexStats,
    writer: _Writer,
    sizes: dict[Path, int],
    show: Any,
    check_stop: Any,
) -> None:
    for path in files:
        check_stop()
        writer.bytes_read += sizes[path]
        plan = plan_file(path, existing.get(str(path), set()), args.chunk_size, args.chunk_overlap)
        record_plan(stats, plan)
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


# -- prune -----------------------------------------------------------------------------------
def cmd_prune(args: argparse.Namespace) -> int:
    """Remove chunks whose source file no longer exists; no model is loaded."""
    require("chromadb")
    db = db_path(args)
    hint = _rebuild_hint(args)
    if db is not None and not (db / "chroma.sqlite3").is_file():
        raise CliError(f"no database in {str(db)!r}; nothing to prune")
    client = open_client(args, write=True, rebuild_hint=hint)
    with storage_errors(db, hint):
        if stored_config(client, args.collection) is None:
            raise CliError(f"collection {args.collection!r} does not exist")
        collection = client.get_collection(args.collection, embedding_function=None)
        gone = {s: ids for s, ids in _existing_ids(collection).items() if _gone(s)}
        for ids in gone.values():
            collection.delete(ids=sorted(ids))
        count = collection.count()
    removed = sum(len(ids) for ids in gone.values())
    if args.json:
        out(
            json.dumps(
                {"removed": removed, "removed_sources": sorted(gone), "collection_count": count}
            )
        )
    else:
        for source in sorted(gone):
            out(f"removed {len(gone[source])} chunks of {source}")
        out(
            f"pruned {removed} chunks of {len(gone)} missing files -> collection "
            f"{args.collection!r} ({count} chunks)"
        )
    return EXIT_OK


# -- query -----------------------------------------------------------------------------------
def cmd_query(args: argparse.Namespace) -> int:
    """Vector search, rerank, print the best sources."""
    require("chromadb")
    if args.k < 1 or args.top_n < 1:
        raise CliError("--k and --top-n must be positive")
    reranker_options = given_options(args, RerankerConfig)
    check_options(RerankerConfig, reranker_options)
    db = db_path(args)
    hint = _rebuild_hint(args)
    client = open_client(args, write=False, rebuild_hint=hint)
    with storage_errors(db, hint):
        stored = stored_config(client, args.collection)
        if stored is None:
            raise CliError(
                f"collection {args.collection!r} does not exist; run `qwen3-rag index PATH` first"
            )
        embedder = embedder_for_query(args, stored)
        collection = open_collection_with(client, args.collection, embedder)
        count = collection.count()
        if count == 0:
            raise CliError(
                f"collection {args.collection!r} is empty; run `qwen3-rag index PATH` first"
            )
        hits = collection.query(
            query_texts=[args.question],
            n_results=min(args.k, count),
            include=["documents", "metadatas", "distances"],
        )
    documents = hits["documents"][0]
    metadatas = hits["metadatas"][0]
    distances = hits["distances"][0]
    with model_hint("--reranker-model", "RERANK_MODEL"):
        reranker = Qwen3Reranker(
            model_reference(args.reranker_model), show_progress=False, **reranker_options
        )
    ranked = reranker.rerank(args.question, list(documents), top_n=args.top_n)
    results = [
        {
            "rank": rank,
            "score": round(r.score, 6),
            "source": metadatas[r.index].get("source"),
            "page": metadatas[r.index].get("page"),
            "start_index": metadatas[r.index].get("start_index"),
            "vector_distance": round(float(distances[r.index]), 6),
            "text": r.document,
        }
        for rank, r in enumerate(ranked, start=1)
    ]
    if args.json:
        out(json.dumps({"query": args.question, "results": results}, ensure_ascii=False, indent=2))
        return EXIT_OK
    out(f"query: {args.question}")
    out(f"{'#':>2}  {'score':>6}  source")
    for r in results:
        where = f"{r['source']}" + (f" (page {r['page']})" if r.get("page") else "")
        snippet = " ".join(str(r["text"]).split())
        if len(snippet) > 160:
            snippet = snippet[:157] + "..."
        out(f"{r['rank']:>2}  {r['score']:.4f}  {where}")
        out(f"    {snippet}")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``index``, ``query`` and ``prune`` to the ``qwen3-rag`` subcommands."""
    index = sub.add_parser("index", help="index .txt, .md and .pdf files")
    index.add_argument("paths", nargs="+", help="files or folders")
    index.add_argument(
        "--chunk-size", type=int, default=1000, help="characters per chunk (default: 1000)"
    )
    index.add_argument(
        "--chunk-overlap",
        type=int,
        default=150,
        help="characters shared by neighbouring chunks (default: 150)",
    )
    index.add_argument(
        "--rebuild",
        action="store_true",
        help="delete the collection (or move a damaged database aside) and index from scratch",
    )
    index.add_argument(
        "--embedding-model",
        default=None,
        help="hub id or local folder (default: the collection's model, else "
        f"{DEFAULT_EMBEDDING_MODEL})",
    )
    _store_flags(index)
    add_config_flags(index.add_argument_group("embedding model options"), EmbedderConfig)
    ray = index.add_argument_group(
        "scale-out (Ray Data; needs a Chroma server, --chroma-url, and pip install "
        '"qwen3-rag[ray]")'
    )
    ray.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process reads, embeds and writes; ray: a Ray Data pipeline with a "
        "pool of embedding workers (default: local)",
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (auto, HOST:PORT or ray://HOST:10001); default: start a "
        "local Ray sized to this machine and stop it at the end",
    )
    ray.add_argument(
        "--workers",
        type=int,
        default=None,
        help="embedding workers, each holding one model (default: the GPUs / "
        "--gpus-per-worker, else 1)",
    )
    ray.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs each worker reserves; 0.5 puts two workers on a GPU (default: 1 where the "
        "cluster has GPUs, else 0: CPU workers)",
    )
    ray.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="chunks per embed-and-upsert batch; a killed worker redoes at most one (default: 256)",
    )
    index.set_defaults(func=cmd_index)

    query = sub.add_parser("query", help="ask a question, get reranked sources")
    query.add_argument("question")
    query.add_argument("--k", type=int, default=20, help="vector-search candidates (default: 20)")
    query.add_argument("--top-n", type=int, default=5, help="results after reranking (default: 5)")
    query.add_argument(
        "--embedding-model",
        default=None,
        help="must match the collection's (default: the collection's model)",
    )
    query.add_argument(
        "--reranker-model",
        default=DEFAULT_RERANKER_MODEL,
        help=f"hub id or local folder (default: {DEFAULT_RERANKER_MODEL})",
    )
    _store_flags(query)
    add_config_flags(
        query.add_argument_group(
            "reranker options (the runtime ones, such as --device, apply to the embedder "
            "too; it takes the rest from the collection)"
        ),
        RerankerConfig,
    )
    query.set_defaults(func=cmd_query)

    prune = sub.add_parser("prune", help="remove chunks whose source file no longer exists")
    _store_flags(prune)
    prune.set_defaults(func=cmd_prune)
