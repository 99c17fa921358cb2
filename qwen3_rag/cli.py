"""``qwen3-rag``: index a folder into Chroma, then ask questions and get reranked sources.

qwen3-rag index ./docs                      # embedded Chroma in ./qwen3_rag_db
qwen3-rag query "How do I rotate keys?"     # vector search, then Qwen3-Reranker
qwen3-rag query "..." --json                # machine-readable output
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    ModelLoadError,
    Qwen3Embedder,
    Qwen3RagError,
    Qwen3Reranker,
)

logger = logging.getLogger("qwen3_rag.cli")

SUPPORTED_SUFFIXES = (".txt", ".md", ".pdf")
DEFAULT_DB = "./qwen3_rag_db"
DEFAULT_COLLECTION = "qwen3-rag"
#: Chunks embedded and written per Chroma ``add``: each write is committed, so an interrupted
#: run loses at most one batch of work and the next run resumes from there.
WRITE_BATCH = 64


class CliError(Exception):
    """An error reported to the user as one line, without a traceback."""


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


# -- reading and chunking ------------------------------------------------------------------
@dataclass
class Chunk:
    """One piece of a source file, with an id derived from its source and content."""

    id: str
    text: str
    metadata: dict[str, Any]


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


def find_files(paths: Sequence[str]) -> list[Path]:
    """Every supported file under ``paths`` (files or folders), sorted, each once."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise CliError(f"path not found: {raw}")
        if path.is_file():
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise CliError(
                    f"{raw}: unsupported file type (use {', '.join(SUPPORTED_SUFFIXES)})"
                )
            found.add(path.resolve())
        else:
            found.update(
                p.resolve()
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
            )
    if not found:
        raise CliError(
            f"no {', '.join(SUPPORTED_SUFFIXES)} files found in: {', '.join(map(str, paths))}"
        )
    return sorted(found)


def read_text(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Text of a file as (text, metadata) parts: one per PDF page, one for text files."""
    if path.suffix.lower() == ".pdf":
        from pypdf import PdfReader

        try:
            reader = PdfReader(str(path))
            return [
                (page.extract_text() or "", {"page": number})
                for number, page in enumerate(reader.pages, start=1)
            ]
        except Exception as e:  # pypdf raises many types (KeyError, struct.error...) on damage
            raise ValueError(f"cannot read this PDF: {type(e).__name__}: {e}") from e
    return [(path.read_text(encoding="utf-8"), {})]


def chunk_file(path: Path, chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    """Split a file into chunks whose ids depend only on its path and the chunk's content."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from qwen3_rag.integrations.chroma import clean_metadata

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True
    )
    source = str(path)
    chunks: list[Chunk] = []
    for text, extra in read_text(path):
        for doc in splitter.create_documents([text]):
            if not doc.page_content.strip():
                continue
            start = int(doc.metadata["start_index"])
            key = f"{source}\0{extra.get('page', 0)}\0{start}\0{doc.page_content}"
            chunk_id = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
            metadata = {"source": source, "start_index": start, "chunk": len(chunks), **extra}
            chunks.append(Chunk(chunk_id, doc.page_content, clean_metadata(metadata) or {}))
    return chunks


# -- Chroma --------------------------------------------------------------------------------
def open_client(db: str | None, chroma_url: str | None) -> Any:
    """An embedded Chroma in ``db``, or a client of the server at ``chroma_url``."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if chroma_url:
        url = urlparse(chroma_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise CliError(f"--chroma-url must look like http://host:8000, got {chroma_url!r}")
        port = url.port or (443 if url.scheme == "https" else 8000)
        try:
            client = chromadb.HttpClient(
                host=url.hostname, port=port, ssl=url.scheme == "https", settings=settings
            )
            client.heartbeat()
        except Exception as e:  # chromadb raises several types for a dead server
            raise CliError(f"cannot reach the Chroma server at {chroma_url}: {e}") from e
        return client
    path = Path(db or DEFAULT_DB).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create the database folder {str(path)!r}: {e.strerror}") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise CliError(f"the database folder {str(path)!r} is not writable")
    _lock_folder(path)
    return chromadb.PersistentClient(path=str(path), settings=settings)


_held_locks: dict[str, Any] = {}


def _lock_folder(path: Path) -> None:
    """Hold an exclusive lock on an embedded database folder for this process's lifetime.

    Embedded Chroma is single-process: a second process writing the same folder can hang on
    SQLite's busy timeout or corrupt the index. A second ``qwen3-rag`` on the same folder is
    refused at once instead; the lock goes when the process exits (also when it is killed).
    """
    key = str(path.resolve())
    if key in _held_locks:
        return
    import fcntl

    handle = open(path / ".qwen3-rag.lock", "a+")  # noqa: SIM115 - kept open to hold the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.close()
        raise CliError(
            f"the database folder {key!r} is in use by another qwen3-rag process; "
            "wait for it, or use a Chroma server (--chroma-url) for concurrent access"
        ) from e
    _held_locks[key] = handle


def stored_config(client: Any, name: str) -> dict[str, Any] | None:
    """The embedding-function config a collection was created with, or None if it is new."""
    from chromadb.errors import NotFoundError

    try:
        collection = client.get_collection(name, embedding_function=None)
    except NotFoundError:
        return None
    except ValueError as e:  # a collection made with another embedding function
        raise CliError(f"collection {name!r}: {e}") from e
    ef = (collection.configuration_json or {}).get("embedding_function") or {}
    if ef.get("name") != "qwen3_rag":
        raise CliError(
            f"collection {name!r} was not built by qwen3-rag (embedding function "
            f"{ef.get('name')!r}); choose another --collection"
        )
    return dict(ef.get("config") or {})


def open_collection_for(
    client: Any, name: str, args: argparse.Namespace, *, create: bool
) -> tuple[Any, Any]:
    """The collection and its embedding function, refusing a model/dimension mismatch."""
    from qwen3_rag.integrations.chroma import (
        ConfigMismatchError,
        Qwen3EmbeddingFunction,
        open_collection,
    )

    stored = stored_config(client, name)
    if stored is None and not create:
        raise CliError(f"collection {name!r} does not exist; run `qwen3-rag index PATH` first")
    model = args.embedding_model or (stored or {}).get("model") or DEFAULT_EMBEDDING_MODEL
    dimensions = args.dimensions
    if dimensions is None and stored is not None and args.embedding_model is None:
        dimensions = stored.get("dimensions")
    embedder = Qwen3Embedder(
        model,
        dimensions=dimensions,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length or (stored or {}).get("max_length") or 8192,
        revision=(stored or {}).get("revision") if args.embedding_model is None else None,
        show_progress=False,
    )
    ef = Qwen3EmbeddingFunction(embedder, instruction=(stored or {}).get("instruction"))
    try:
        return open_collection(client, name, ef, metadata={"hnsw:space": "cosine"}), ef
    except ConfigMismatchError as e:
        raise CliError(str(e)) from e


# -- commands ------------------------------------------------------------------------------
def _existing_ids(collection: Any) -> dict[str, set[str]]:
    """Chunk ids already stored, by source path."""
    by_source: dict[str, set[str]] = {}
    offset, page = 0, 5000
    while True:
        got = collection.get(include=["metadatas"], limit=page, offset=offset)
        for chunk_id, meta in zip(got["ids"], got["metadatas"] or [], strict=True):
            by_source.setdefault(str((meta or {}).get("source")), set()).add(chunk_id)
        if len(got["ids"]) < page:
            return by_source
        offset += page


def _batches(items: list[Chunk], size: int) -> Iterator[list[Chunk]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cmd_index(args: argparse.Namespace) -> int:
    """Index files into the collection; idempotent and resumable."""
    from tqdm.auto import tqdm

    if args.chunk_overlap >= args.chunk_size:
        raise CliError("--chunk-overlap must be smaller than --chunk-size")
    started = time.perf_counter()
    files = find_files(args.paths)
    client = open_client(args.db, args.chroma_url)
    collection, _ = open_collection_for(client, args.collection, args, create=True)
    existing = _existing_ids(collection)
    stats = IndexStats()
    roots = [Path(p).expanduser().resolve() for p in args.paths]
    with tqdm(total=len(files), unit="file", desc="index", disable=args.quiet) as bar:
        for path in files:
            bar.set_postfix_str(f"{stats.chunks} chunks, {stats.new} new | {path.name[-30:]}")
            try:
                chunks = chunk_file(path, args.chunk_size, args.chunk_overlap)
            except (OSError, UnicodeDecodeError, ValueError) as e:
                logger.warning("skipped %s: %s", path, e)
                stats.skipped += 1
                bar.update(1)
                continue
            stats.files += 1
            stats.chunks += len(chunks)
            stats.sources.add(str(path))
            stored = existing.get(str(path), set())
            fresh = [c for c in chunks if c.id not in stored]
            # Duplicate chunks within a file share an id; Chroma refuses duplicate ids.
            fresh = list({c.id: c for c in fresh}.values())
            for batch in _batches(fresh, WRITE_BATCH):
                collection.add(
                    ids=[c.id for c in batch],
                    documents=[c.text for c in batch],
                    metadatas=[c.metadata for c in batch],
                )
            stats.new += len(fresh)
            stats.unchanged += len(chunks) - len(fresh)
            # Stale chunks go only after the new ones are stored: an interrupted run never
            # leaves a file with neither version.
            stale = stored - {c.id for c in chunks}
            if stale:
                collection.delete(ids=sorted(stale))
                stats.removed += len(stale)
            bar.update(1)
    # Files under an indexed folder that are gone (or no longer supported) lose their chunks.
    for source, ids in existing.items():
        src = Path(source)
        gone = not src.exists() or src.suffix.lower() not in SUPPORTED_SUFFIXES
        if gone and any(src.is_relative_to(r) for r in roots):
            collection.delete(ids=sorted(ids))
            stats.removed += len(ids)
    elapsed = time.perf_counter() - started
    summary = (
        f"indexed {stats.files} files ({stats.skipped} skipped): {stats.chunks} chunks, "
        f"{stats.new} new, {stats.unchanged} unchanged, {stats.removed} removed "
        f"in {elapsed:.1f}s -> collection {args.collection!r} ({collection.count()} chunks)"
    )
    _out(
        json.dumps({**vars(stats), "sources": len(stats.sources), "seconds": round(elapsed, 2)})
        if args.json
        else summary
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Vector search, rerank, print the best sources."""
    if args.k < 1 or args.top_n < 1:
        raise CliError("--k and --top-n must be positive")
    client = open_client(args.db, args.chroma_url)
    collection, _ = open_collection_for(client, args.collection, args, create=False)
    count = collection.count()
    if count == 0:
        raise CliError(f"collection {args.collection!r} is empty; run `qwen3-rag index PATH` first")
    hits = collection.query(
        query_texts=[args.question],
        n_results=min(args.k, count),
        include=["documents", "metadatas", "distances"],
    )
    documents = hits["documents"][0]
    metadatas = hits["metadatas"][0]
    distances = hits["distances"][0]
    reranker = Qwen3Reranker(
        args.reranker_model,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length or 8192,
        show_progress=False,
    )
    ranked = reranker.rerank(
        args.question, list(documents), top_n=args.top_n, instruction=args.instruction
    )
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
        _out(json.dumps({"query": args.question, "results": results}, ensure_ascii=False, indent=2))
        return 0
    _out(f"query: {args.question}")
    _out(f"{'#':>2}  {'score':>6}  source")
    for r in results:
        where = f"{r['source']}" + (f" (page {r['page']})" if r.get("page") else "")
        snippet = " ".join(str(r["text"]).split())
        if len(snippet) > 160:
            snippet = snippet[:157] + "..."
        _out(f"{r['rank']:>2}  {r['score']:.4f}  {where}")
        _out(f"    {snippet}")
    return 0


# -- entry point ---------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--db", default=None, help=f"embedded Chroma folder (default {DEFAULT_DB})")
    store.add_argument(
        "--chroma-url", default=None, help="Chroma server, e.g. http://localhost:8000"
    )
    parser.add_argument("--collection", default=DEFAULT_COLLECTION, help="collection name")
    parser.add_argument(
        "--embedding-model",
        default=None,
        help=f"hub id or folder (default: the collection's model, else {DEFAULT_EMBEDDING_MODEL})",
    )
    parser.add_argument("--dimensions", type=int, default=None, help="MRL output size (32..hidden)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per input (8192)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The ``qwen3-rag`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="qwen3-rag",
        description="Index files into Chroma with Qwen3-Embedding; ask with Qwen3-Reranker.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    index = sub.add_parser("index", help="index .txt, .md and .pdf files")
    index.add_argument("paths", nargs="+", help="files or folders")
    index.add_argument("--chunk-size", type=int, default=1000, help="characters per chunk")
    index.add_argument(
        "--chunk-overlap", type=int, default=150, help="characters shared by neighbours"
    )
    _common(index)
    index.set_defaults(func=cmd_index)
    query = sub.add_parser("query", help="ask a question, get reranked sources")
    query.add_argument("question")
    query.add_argument("--k", type=int, default=20, help="vector-search candidates")
    query.add_argument("--top-n", type=int, default=5, help="results after reranking")
    query.add_argument(
        "--reranker-model", default=DEFAULT_RERANKER_MODEL, help="hub id or local folder"
    )
    query.add_argument("--instruction", default=None, help="reranker instruction")
    _common(query)
    query.set_defaults(func=cmd_query)
    return parser


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, so redirections are honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


@contextlib.contextmanager
def _log_to_stderr() -> Iterator[None]:
    # The CLI owns its process while it runs: the library's warnings (skipped files,
    # truncation) and errors go to stderr as one line each, whatever logging setup exists.
    package = logging.getLogger("qwen3_rag")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    saved = (package.level, package.propagate)
    package.addHandler(handler)
    package.setLevel(logging.WARNING)
    package.propagate = False
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 interrupted, 2 error)."""
    args = build_parser().parse_args(argv)
    # The CLI draws its own progress bar; transformers' weight-loading bar would interleave.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with _log_to_stderr():
        try:
            return int(args.func(args))
        # ValueError is what the runtime raises for a bad option value (a --dimensions out of
        # range, an unknown --device), so it is the user's to fix; anything else is a bug and
        # keeps its traceback.
        except (CliError, ModelLoadError, Qwen3RagError, ValueError) as e:
            logger.error("%s", e)
            return 2
        except KeyboardInterrupt:
            logger.error("interrupted; run the same command again to resume")
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
