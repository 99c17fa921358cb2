"""Opening Chroma for the CLI.

An embedded folder (locked, damage detected) or a server, and the collection's stored model
settings.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from qwen3_rag.cli.common import (
    EXIT_DAMAGED,
    EXIT_STORAGE,
    SHARED_OPTIONS,
    CliError,
    add_output_flags,
    flag_name,
    given_options,
    logger,
    model_reference,
)
from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    EmbedderConfig,
    ModelLoadError,
    Qwen3Embedder,
)
from qwen3_rag.core.spec import CHROMA_FUNCTION_NAME

DEFAULT_DB = "./qwen3_rag_db"
DEFAULT_COLLECTION = "qwen3-rag"


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
        f"{key}={given!r}; use the same {flag_name(key)}, or `qwen3-rag index PATH --rebuild` to "
        "re-embed everything with the new value"
    )


def stored_for_index(args: argparse.Namespace, client: Any) -> dict[str, Any] | None:
    """The collection's stored config for an index run; ``--rebuild`` deletes the collection.

    With ``--rebuild`` the stored model is kept unless another is given (written back to
    ``args.embedding_model``); the other settings restart, and None is returned.
    """
    stored = stored_config(client, args.collection)
    if args.rebuild and stored is not None:
        client.delete_collection(args.collection)
        args.embedding_model = args.embedding_model or stored.get("model")
        stored = None
    return stored


def embedder_for_index(args: argparse.Namespace, stored: dict[str, Any] | None) -> Qwen3Embedder:
    """The embedder an index run uses: the user's options, checked against the collection's."""
    model, options = index_model_options(args, stored)
    with model_hint("--embedding-model", "EMBED_MODEL"):
        return Qwen3Embedder(model, show_progress=False, **options)


def index_model_options(
    args: argparse.Namespace, stored: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The model and options an index run embeds with (nothing is loaded).

    The user's options, checked against the collection's stored ones (a mismatch is an
    error); options the user left out take the stored values.
    """
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
    return model or DEFAULT_EMBEDDING_MODEL, options


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
    add_output_flags(parser)
