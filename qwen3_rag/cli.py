"""``qwen3-rag``: index a folder into Chroma, then ask questions and get reranked sources.

qwen3-rag index ./docs                      # embedded Chroma in ./qwen3_rag_db
qwen3-rag query "How do I rotate keys?"     # vector search, then Qwen3-Reranker
qwen3-rag query "..." --json                # machine-readable output
qwen3-rag prune                             # drop chunks whose source file is gone

Exit status: 0 done, 1 interrupted (run the same command again to resume), 2 a usage or input
error, 3 the embedded database is damaged (``index --rebuild`` recreates it), 4 the database
cannot be written (disk full, file not writable).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import typing
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    EmbedderConfig,
    ModelLoadError,
    Qwen3Embedder,
    Qwen3RagError,
    Qwen3Reranker,
    RerankerConfig,
    RuntimeConfig,
)
from qwen3_rag.core.config import fields as config_fields
from qwen3_rag.core.spec import CHROMA_FUNCTION_NAME

logger = logging.getLogger("qwen3_rag.cli")

SUPPORTED_SUFFIXES = (".txt", ".md", ".pdf")
DEFAULT_DB = "./qwen3_rag_db"
DEFAULT_COLLECTION = "qwen3-rag"

EXIT_OK = 0
EXIT_INTERRUPTED = 1
EXIT_USAGE = 2
EXIT_DAMAGED = 3
EXIT_STORAGE = 4

#: Chunks per embed-and-write batch start here and adapt so that one batch takes about
#: ``TARGET_BATCH_SECONDS``: progress updates that often, and a kill loses at most that much.
FIRST_WRITE_BATCH = 16
MAX_WRITE_BATCH = 256
TARGET_BATCH_SECONDS = 2.0
#: Seconds between progress lines when stderr is not a terminal.
PROGRESS_SECONDS = 5.0

CLI_INSTALL = 'pip install "qwen3-rag[cli]"'


class CliError(Exception):
    """An error reported to the user as one line, without a traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; raised between writes, so every finished write is kept."""


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _require(*modules: str) -> None:
    """Import the CLI's optional dependencies, or fail with the install line to run."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise CliError(f"{name} is not installed; the CLI needs: {CLI_INSTALL}") from e


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
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    replaced_characters: dict[str, int] = field(default_factory=dict)
    removed_sources: list[str] = field(default_factory=list)


def _source_path(path: Path) -> Path:
    """The absolute path as the user reached it: symlinks are kept, not resolved."""
    return Path(os.path.abspath(path))


def find_files(paths: Sequence[str]) -> list[Path]:
    """Every supported file under ``paths`` (files or folders), sorted, each once.

    Paths are absolute but keep symlinks as given, so a chunk's ``source`` is the path the user
    indexed; removing a link makes its chunks stale like removing a file.
    """
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
            found.add(_source_path(path))
        else:
            found.update(
                _source_path(p)
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
            )
    if not found:
        raise CliError(
            f"no {', '.join(SUPPORTED_SUFFIXES)} files found in: {', '.join(map(str, paths))}"
        )
    return sorted(found)


def decode_text(data: bytes) -> tuple[str, int]:
    r"""UTF-8 text (a BOM dropped), with undecodable bytes as U+FFFD, and how many were replaced.

    Example:
        >>> text, replaced = decode_text(b"caf\xc3\xa9 \xff")
        >>> text == "café \ufffd", replaced
        (True, 1)
    """
    try:
        return data.decode("utf-8-sig"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")
        # U+FFFD already in the file is text, not a replacement.
        original = data.count("\ufffd".encode())
        return text, text.count("\ufffd") - original


def read_text(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """A file's text as (text, metadata) parts, one per PDF page, and replaced characters."""
    if path.suffix.lower() == ".pdf":
        from pypdf import PdfReader

        try:
            reader = PdfReader(str(path))
            return [
                (page.extract_text() or "", {"page": number})
                for number, page in enumerate(reader.pages, start=1)
            ], 0
        except Exception as e:  # pypdf raises many types (KeyError, struct.error...) on damage
            raise ValueError(f"cannot read this PDF: {type(e).__name__}: {e}") from e
    text, replaced = decode_text(path.read_bytes())
    return [(text, {})], replaced


@functools.lru_cache(maxsize=4)
def _splitter(chunk_size: int, chunk_overlap: int) -> Any:
    # One splitter per run: building it per file costs more than splitting a small file.
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True
    )


def chunk_file(path: Path, chunk_size: int, chunk_overlap: int) -> tuple[list[Chunk], int]:
    """Split a file into chunks whose ids depend only on its path and the chunk's content.

    Returns:
        The chunks and how many undecodable bytes were replaced with U+FFFD.
    """
    from qwen3_rag.integrations.chroma import clean_metadata

    splitter = _splitter(chunk_size, chunk_overlap)
    source = str(path)
    chunks: list[Chunk] = []
    parts, replaced = read_text(path)
    for text, extra in parts:
        for doc in splitter.create_documents([text]):
            if not doc.page_content.strip():
                continue
            start = int(doc.metadata["start_index"])
            key = f"{source}\0{extra.get('page', 0)}\0{start}\0{doc.page_content}"
            chunk_id = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
            metadata = {"source": source, "start_index": start, "chunk": len(chunks), **extra}
            chunks.append(Chunk(chunk_id, doc.page_content, clean_metadata(metadata) or {}))
    return chunks, replaced


# -- model options, from the one declaration in core/config.py -----------------------------
#: Runtime options that apply to every model a command loads (query loads two).
SHARED_OPTIONS = tuple(
    f.name
    for f in config_fields(RuntimeConfig)
    if f.metadata["cli"] and not f.metadata["persist"] and f.name != "revision"
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls: type[RuntimeConfig]) -> None:
    """Add one flag per ``cli`` field of ``cls``: name, help and default come from the field.

    Every flag defaults to None ("not given"), so a stored collection's settings can fill in
    what the user did not type; ``--help`` shows the config's default.
    """
    hints = typing.get_type_hints(cls)
    for f in config_fields(cls):
        if not f.metadata["cli"]:
            continue
        kind = next(
            (t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name]
        )
        # argparse %-formats help texts.
        text = f"{f.metadata['help']} (default: {f.default})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        else:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                type=kind,
                default=None,
                metavar=f.name.upper(),
                help=text,
            )


def given_options(args: argparse.Namespace, cls: type[RuntimeConfig]) -> dict[str, Any]:
    """The ``cls`` options the user typed (flags left out are not included)."""
    return {
        f.name: getattr(args, f.name)
        for f in config_fields(cls)
        if f.metadata["cli"] and getattr(args, f.name, None) is not None
    }


def check_options(cls: type[RuntimeConfig], options: dict[str, Any]) -> None:
    """Validate option values before any file, database or model is touched."""
    try:
        cls(**options)
    except (TypeError, ValueError) as e:
        raise CliError(f"bad option: {e}") from e


def model_reference(model: str) -> str:
    """A local folder as its absolute resolved path (stored so any cwd finds it); hub ids as is."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


# -- Chroma --------------------------------------------------------------------------------
def _classify_storage_error(error: BaseException, db: Path) -> tuple[str, int] | None:
    """Why an embedded Chroma call failed: (cause, exit code), or None if not a storage fault."""
    text = str(error).lower()
    full = "no space left on the device (or the file size limit was reached)"
    if any(s in text for s in ("disk is full", "no space left", "file too large", "quota")):
        return full, EXIT_STORAGE
    if any(s in text for s in ("readonly", "read-only", "permission denied")):
        return "a database file is not writable", EXIT_STORAGE
    if not _writable(db):
        return "a database file is not writable", EXIT_STORAGE
    # Chroma reports a refused write (ENOSPC, EFBIG past a file-size limit) as "disk I/O
    # error" or "Error in compaction", like real damage: ask the file system which it is.
    if _cannot_grow(db):
        return full, EXIT_STORAGE
    if "disk i/o error" in text:
        return "a disk I/O error while writing", EXIT_STORAGE
    return None


def _cannot_grow(db: Path) -> bool:
    """True if files in ``db`` cannot grow: little free space, or a file-size limit reached."""
    import resource

    try:
        if shutil.disk_usage(db).free < 64 * 2**20:
            return True
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            largest = max((p.stat().st_size for p in db.rglob("*") if p.is_file()), default=0)
            if largest + 2**20 > limit:
                return True
        probe = db / ".qwen3-rag.probe"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 2**20)
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError:
        return True
    return False


@contextlib.contextmanager
def storage_errors(db: Path | None, rebuild_hint: str) -> Iterator[None]:
    """Turn embedded-Chroma failures into one line naming the folder, the cause and the fix."""
    from chromadb.errors import InternalError

    try:
        yield
    except (InternalError, OSError) as e:
        converted = storage_error(db, rebuild_hint, e)
        if converted is None:
            raise
        raise converted from e


def storage_error(db: Path | None, rebuild_hint: str, error: BaseException) -> CliError | None:
    """The one-line error for a failed Chroma call, or None if it is not a storage fault."""
    from chromadb.errors import InternalError

    if db is None:  # a server: its own error says it best
        if isinstance(error, InternalError):
            return CliError(f"the Chroma server failed: {error}")
        return None
    if isinstance(error, OSError) and not isinstance(error, InternalError):
        # Only the file system's own refusals; any other OSError keeps its traceback.
        if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            known: tuple[str, int] | None = (f"{error.strerror}", EXIT_STORAGE)
        elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            known = (f"a database file is not writable ({error.strerror})", EXIT_STORAGE)
        else:
            return None
    else:
        known = _classify_storage_error(error, db)
    if known is not None:
        cause, code = known
        return CliError(
            f"cannot write the database in {str(db)!r}: {cause}; free space or fix "
            "permissions and run the same command again (finished work is kept)",
            code,
        )
    if not isinstance(error, InternalError):
        return None
    return CliError(
        f"the database in {str(db)!r} is damaged ({_first_line(error)}); recreate it from "
        f"the source files with: {rebuild_hint}",
        EXIT_DAMAGED,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def db_path(args: argparse.Namespace) -> Path | None:
    """The embedded database folder, absolute; None for a Chroma server."""
    if args.chroma_url:
        return None
    return Path(os.path.abspath(Path(args.db or DEFAULT_DB).expanduser()))


def open_client(args: argparse.Namespace, *, write: bool, rebuild_hint: str) -> Any:
    """An embedded Chroma in ``--db`` (locked), or a client of the server at ``--chroma-url``.

    ``write=False`` (query, and prune's look) neither creates the folder nor needs it writable.
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if args.chroma_url:
        url = urlparse(args.chroma_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise CliError(f"--chroma-url must look like http://host:8000, got {args.chroma_url!r}")
        port = url.port or (443 if url.scheme == "https" else 8000)
        try:
            client = chromadb.HttpClient(
                host=url.hostname, port=port, ssl=url.scheme == "https", settings=settings
            )
            client.heartbeat()
        except Exception as e:  # chromadb raises several types for a dead server
            raise CliError(f"cannot reach the Chroma server at {args.chroma_url}: {e}") from e
        return client
    path = db_path(args)
    assert path is not None
    if write:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CliError(f"cannot create the database folder {str(path)!r}: {e.strerror}") from e
        if not os.access(path, os.W_OK | os.X_OK):
            raise CliError(f"the database folder {str(path)!r} is not writable", EXIT_STORAGE)
        sqlite = path / "chroma.sqlite3"
        if sqlite.exists() and not os.access(sqlite, os.W_OK):
            raise CliError(
                f"cannot write the database in {str(path)!r}: {sqlite.name} is not writable",
                EXIT_STORAGE,
            )
    elif not (path / "chroma.sqlite3").is_file():
        what = "holds no database" if path.is_dir() else "does not exist"
        raise CliError(
            f"the database folder {str(path)!r} {what}; "
            f"run `qwen3-rag index PATH --db {path}` first"
        )
    _lock_folder(path, exclusive=write)
    from chromadb.errors import InternalError

    where = path
    if not write and not _writable(path):
        where = _read_only_copy(path)
    try:
        return chromadb.PersistentClient(path=str(where), settings=settings)
    except Exception as e:
        from chromadb.api.client import SharedSystemClient

        # chromadb caches the half-started system per path; drop it so that a later open in
        # this process (after --rebuild moved the files) starts afresh.
        SharedSystemClient.clear_system_cache()
        # A failed start makes chromadb's own clean-up raise (AttributeError) with the real
        # error as its context; find that one.
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, (InternalError, OSError)):
            cause = cause.__context__
        converted = None if cause is None else storage_error(path, rebuild_hint, cause)
        if converted is None:
            raise
        raise converted from e


def _writable(path: Path) -> bool:
    sqlite = path / "chroma.sqlite3"
    return os.access(path, os.W_OK | os.X_OK) and os.access(sqlite, os.W_OK)


def _read_only_copy(path: Path) -> Path:
    """A private copy of a read-only database, removed at exit.

    Embedded Chroma writes to its folder even to read (SQLite journal, start-up checks), so a
    read-only folder is queried through a copy; nothing is written to the original.
    """
    import atexit
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="qwen3-rag-readonly-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    copy = tmp / "db"
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns(".qwen3-rag.lock"))
    for item in [copy, *copy.rglob("*")]:  # the copy keeps the original's modes
        item.chmod(0o700 if item.is_dir() else 0o600)
    logger.info("%s is read-only; querying a copy in %s", path, copy)
    return copy


_held_locks: dict[str, Any] = {}


def _lock_folder(path: Path, *, exclusive: bool) -> None:
    """Hold a lock on an embedded database folder for this process's lifetime.

    Embedded Chroma is single-process: a second process writing the same folder can hang on
    SQLite's busy timeout or corrupt the index. Writers (``index``, ``prune``) take the lock
    exclusively, readers (``query``) shared, so queries run together but never beside a writer.
    A read-only folder without a lock file cannot be written by anyone here, so a reader
    proceeds without one. The lock goes when the process exits (also when it is killed).
    """
    key = str(path.resolve())
    if key in _held_locks:
        return
    import fcntl

    lock_file = path / ".qwen3-rag.lock"
    try:
        handle = open(lock_file, "a+" if exclusive else "r")  # noqa: SIM115 - held open
    except OSError as e:
        if exclusive:
            raise CliError(f"cannot lock the database folder {key!r}: {e.strerror}") from e
        try:
            handle = open(lock_file, "a+")  # noqa: SIM115
        except OSError:
            return
    try:
        fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
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
    if ef.get("name") != CHROMA_FUNCTION_NAME:
        raise CliError(
            f"collection {name!r} was not built by qwen3-rag (embedding function "
            f"{ef.get('name')!r}); choose another --collection"
        )
    return dict(ef.get("config") or {})


def _mismatch(name: str, key: str, stored: Any, given: Any) -> CliError:
    return CliError(
        f"collection {name!r} was built with {key}={stored!r}, but this run asks for "
        f"{key}={given!r}; use the same {_flag(key)}, or `qwen3-rag index PATH --rebuild` to "
        "re-embed everything with the new value"
    )


def embedder_for_index(args: argparse.Namespace, stored: dict[str, Any] | None) -> Qwen3Embedder:
    """The embedder an index run uses: the user's options, checked against the collection's."""
    options = given_options(args, EmbedderConfig)
    model = model_reference(args.embedding_model) if args.embedding_model else None
    if stored is not None:
        stored_model = model_reference(str(stored.get("model")))
        if model is not None and model != stored_model:
            raise _mismatch(args.collection, "model", stored_model, model)
        model = stored_model
        for key in ("max_length", "instruction", "dimensions", "revision"):
            if key in options and key in stored and options[key] != stored[key]:
                raise _mismatch(args.collection, key, stored[key], options[key])
            if key in stored and key not in options and stored[key] is not None:
                options[key] = stored[key]
    with model_hint("--embedding-model", "EMBED_MODEL"):
        return Qwen3Embedder(model or DEFAULT_EMBEDDING_MODEL, show_progress=False, **options)


def embedder_for_query(args: argparse.Namespace, stored: dict[str, Any]) -> Qwen3Embedder:
    """The collection's own embedder (model, revision, dimensions, max_length, instruction)."""
    stored_model = model_reference(str(stored.get("model")))
    if args.embedding_model and model_reference(args.embedding_model) != stored_model:
        raise _mismatch(
            args.collection, "model", stored_model, model_reference(args.embedding_model)
        )
    options = {k: getattr(args, k) for k in SHARED_OPTIONS if getattr(args, k) is not None}
    for key in ("max_length", "instruction", "dimensions", "revision"):
        if stored.get(key) is not None:
            options[key] = stored[key]
    with model_hint("--embedding-model", "EMBED_MODEL"):
        return Qwen3Embedder(stored_model, show_progress=False, **options)


def open_collection_with(client: Any, name: str, embedder: Qwen3Embedder) -> Any:
    """The collection for ``embedder``, created if new, refusing a model/dimension mismatch."""
    from qwen3_rag.integrations.chroma import (
        ConfigMismatchError,
        Qwen3EmbeddingFunction,
        open_collection,
    )

    ef = Qwen3EmbeddingFunction(embedder)
    try:
        return open_collection(client, name, ef, metadata={"hnsw:space": "cosine"})
    except ConfigMismatchError as e:
        raise CliError(str(e)) from e


@contextlib.contextmanager
def model_hint(flag: str, make_variable: str) -> Iterator[None]:
    """Add the CLI's ways to a model-loading error: a local folder, offline use, ``make demo``."""
    try:
        yield
    except ModelLoadError as e:
        raise CliError(
            f"{e} [CLI: {flag} /path/to/folder uses a local copy; --local-files-only or "
            f"HF_HUB_OFFLINE=1 uses only the cache; make demo: {make_variable}=/path/to/folder]"
        ) from e


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


def _gone(source: str) -> bool:
    """True when a stored source file no longer exists (a dangling link counts as gone)."""
    return not Path(source).is_file()


# -- signals and progress ------------------------------------------------------------------
@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM; the index loop stops after the write in flight."""

    signal_name: str | None = None


@contextlib.contextmanager
def deferred_stop() -> Iterator[StopRequest]:
    """Handle SIGINT and SIGTERM by finishing the current write, then stopping.

    A second signal stops at once (``KeyboardInterrupt``). The previous handlers come back on
    exit. Outside the main thread signals cannot be handled, and the defaults stay.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.signal_name is not None:
            raise KeyboardInterrupt
        stop.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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
            eta = f"done in {_duration(elapsed)}"
        else:
            eta = f"ETA {_duration(expected / rate)}" if rate > 0 else "ETA ?"
        line = (
            f"index: {written:,} chunks written, {rate:,.1f} chunks/s, "
            f"{files_read}/{self.files} files read, {eta}"
        )
        if self.tty:
            sys.stderr.write("\r" + line.ljust(self.width) + ("\n" if final else ""))
            self.width = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


# -- index -----------------------------------------------------------------------------------
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
    _require("chromadb", "langchain_text_splitters", "pypdf")
    if args.chunk_size < 1:
        raise CliError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    if not 0 <= args.chunk_overlap < args.chunk_size:
        raise CliError(
            f"--chunk-overlap must be from 0 to --chunk-size - 1 ({args.chunk_size - 1}), "
            f"got {args.chunk_overlap}"
        )
    check_options(EmbedderConfig, given_options(args, EmbedderConfig))
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
        stored = stored_config(client, args.collection)
        if args.rebuild and stored is not None:
            client.delete_collection(args.collection)
            # The stored model is kept unless another is given; the other settings restart.
            args.embedding_model = args.embedding_model or stored.get("model")
            stored = None
        embedder = embedder_for_index(args, stored)
        collection = open_collection_with(client, args.collection, embedder)
        stats = _index_files(args, files, collection, embedder, stop)
        count = collection.count()
    elapsed = time.perf_counter() - started
    if args.json:
        payload = {
            **{k: v for k, v in vars(stats).items() if k != "sources"},
            "sources": len(stats.sources),
            "collection_count": count,
            "seconds": round(elapsed, 2),
        }
        _out(json.dumps(payload, ensure_ascii=False))
    else:
        _out(
            f"indexed {stats.files} files ({stats.skipped} skipped): {stats.chunks} chunks, "
            f"{stats.new} new, {stats.unchanged} unchanged, {stats.removed} removed "
            f"in {elapsed:.1f}s -> collection {args.collection!r} ({count} chunks)"
        )
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

    with _truncation_summary(embedder.max_length):
        _index_loop(args, files, existing, stats, writer, sizes, show, check_stop)
    # Chunks of files that no longer exist (anywhere), or that are no longer supported
    # under an indexed folder, go; other folders' chunks stay.
    roots = [_source_path(Path(p).expanduser()) for p in args.paths]
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
    show(final=True)
    return stats


@contextlib.contextmanager
def _truncation_summary(max_length: int) -> Iterator[None]:
    """Count the embedder's per-batch truncation warnings and log one total at the end."""
    counts = [0, 0]

    def count(record: logging.LogRecord) -> bool:
        if "were truncated" not in str(record.msg) or not isinstance(record.args, tuple):
            return True
        counts[0] += int(record.args[0])
        counts[1] += int(record.args[1])
        return False

    source = logging.getLogger("qwen3_rag.core.runtime")
    source.addFilter(count)
    try:
        yield
    finally:
        source.removeFilter(count)
        if counts[0]:
            logger.warning(
                "%d of %d chunks were longer than max_length=%d tokens and were truncated "
                "(a smaller --chunk-size keeps all text)",
                counts[0],
                counts[1],
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
        try:
            chunks, replaced = chunk_file(path, args.chunk_size, args.chunk_overlap)
        except (OSError, ValueError) as e:
            logger.warning("skipped %s: %s", path, e)
            stats.skipped += 1
            stats.skipped_files.append({"path": str(path), "reason": str(e)})
            continue
        if replaced:
            logger.warning(
                "%s: %d undecodable bytes replaced with U+FFFD (not UTF-8)", path, replaced
            )
            stats.replaced_characters[str(path)] = replaced
        source = str(path)
        stats.files += 1
        stats.chunks += len(chunks)
        stats.sources.add(source)
        stored = existing.get(source, set())
        # Duplicate chunks within a file share an id; Chroma refuses duplicate ids.
        fresh = list({c.id: c for c in chunks if c.id not in stored}.values())
        stats.unchanged += len(chunks) - len(fresh)
        writer.add_file(source, fresh, stored - {c.id for c in chunks})
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
    _require("chromadb")
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
        _out(
            json.dumps(
                {"removed": removed, "removed_sources": sorted(gone), "collection_count": count}
            )
        )
    else:
        for source in sorted(gone):
            _out(f"removed {len(gone[source])} chunks of {source}")
        _out(
            f"pruned {removed} chunks of {len(gone)} missing files -> collection "
            f"{args.collection!r} ({count} chunks)"
        )
    return EXIT_OK


# -- query -----------------------------------------------------------------------------------
def cmd_query(args: argparse.Namespace) -> int:
    """Vector search, rerank, print the best sources."""
    _require("chromadb")
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
        _out(json.dumps({"query": args.question, "results": results}, ensure_ascii=False, indent=2))
        return EXIT_OK
    _out(f"query: {args.question}")
    _out(f"{'#':>2}  {'score':>6}  source")
    for r in results:
        where = f"{r['source']}" + (f" (page {r['page']})" if r.get("page") else "")
        snippet = " ".join(str(r["text"]).split())
        if len(snippet) > 160:
            snippet = snippet[:157] + "..."
        _out(f"{r['rank']:>2}  {r['score']:.4f}  {where}")
        _out(f"    {snippet}")
    return EXIT_OK


# -- entry point ---------------------------------------------------------------------------
def _store_flags(parser: argparse.ArgumentParser) -> None:
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--db", default=None, help=f"embedded Chroma folder (default: {DEFAULT_DB})")
    store.add_argument(
        "--chroma-url", default=None, help="Chroma server, e.g. http://localhost:8000"
    )
    parser.add_argument(
        "--collection",
        default=DEFAULT_COLLECTION,
        help=f"collection name (default: {DEFAULT_COLLECTION})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show library logs and progress bars (weight loading, PDF warnings)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``qwen3-rag`` argument parser."""
    from qwen3_rag import __version__

    parser = argparse.ArgumentParser(
        prog="qwen3-rag",
        description="Index files into Chroma with Qwen3-Embedding; ask with Qwen3-Reranker.",
        epilog="exit status: 0 done, 1 interrupted (run again to resume), 2 bad input, "
        "3 damaged database (index --rebuild), 4 database not writable (disk full, permissions)",
    )
    parser.add_argument("--version", action="version", version=f"qwen3-rag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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
    return parser


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, so redirections are honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


@contextlib.contextmanager
def _log_to_stderr(verbose: bool) -> Iterator[None]:
    # The CLI owns its process while it runs: the library's warnings (skipped files,
    # truncation) and errors go to stderr as one line each, whatever logging setup exists.
    # pypdf's warnings go the same way (quiet_libraries decides whether they show).
    package = logging.getLogger("qwen3_rag")
    pypdf = logging.getLogger("pypdf")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    saved = [(lg, lg.level, lg.propagate) for lg in (package, pypdf)]
    for lg in (package, pypdf):
        lg.addHandler(handler)
        lg.propagate = False
    package.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


@contextlib.contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Hide transformers' progress bars and info logs and pypdf's warnings, then restore them.

    The CLI draws its own progress; a ``Loading weights`` bar or ``EOF marker not found``
    between its lines is noise. ``-v`` keeps them. Whatever the caller had set comes back on
    exit, so embedding ``main`` in another program changes nothing for it.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    pypdf = logging.getLogger("pypdf")
    pypdf_level = pypdf.level
    if not verbose:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        pypdf.setLevel(logging.ERROR)
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()
        hf_logging.set_verbosity(verbosity)
        pypdf.setLevel(pypdf_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    with _log_to_stderr(args.verbose), quiet_libraries(args.verbose):
        try:
            return int(args.func(args))
        except CliError as e:
            logger.error("%s", e)
            return e.code
        # ValueError is what the runtime raises for a bad option value (a --dimensions out of
        # range for this model, an unknown --device), so it is the user's to fix; anything else
        # is a bug and keeps its traceback.
        except (Qwen3RagError, ValueError) as e:
            logger.error("%s", e)
            return EXIT_USAGE
        except Interrupted as e:
            logger.error("%s; run the same command again to resume", e)
            return EXIT_INTERRUPTED
        except KeyboardInterrupt:
            logger.error("interrupted; run the same command again to resume")
            return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
