"""The vector store: an embedded Chroma folder (locked, damage detected) or a Chroma server.

:func:`open_store` returns a :class:`Store`, a context manager that holds the folder's lock
until it closes. Storage faults become the library's own errors
(:class:`~qwen3_rag.indexing.errors.StoreNotWritableError`,
:class:`~qwen3_rag.indexing.errors.StoreDamagedError`), and a collection's stored settings are
read and matched here, with the one check of :func:`~qwen3_rag.integrations.chroma.
check_stored_config`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from qwen3_rag.core import DEFAULT_EMBEDDING_MODEL
from qwen3_rag.core.spec import CHROMA_FUNCTION_NAME
from qwen3_rag.integrations.chroma import CONFIG_KEYS, check_stored_config

from .errors import (
    StoreDamagedError,
    StoreError,
    StoreInUseError,
    StoreNotWritableError,
)
from .options import StoreOptions, model_reference

logger = logging.getLogger(__name__)

#: The embedder settings a collection records and every opener must match (all but the model).
STORED_SETTINGS = CONFIG_KEYS[1:]
#: The lock file inside an embedded database folder.
LOCK_NAME = ".qwen3-rag.lock"
#: Chunk ids are read back from a collection this many at a time.
ID_PAGE = 5000


# -- storage faults --------------------------------------------------------------------------
def storage_error(db: Path | None, rebuild_hint: str, error: BaseException) -> StoreError | None:
    """The library's error for a failed Chroma call, or None if it is not a storage fault."""
    from chromadb.errors import InternalError

    if db is None:  # a server: its own error says it best
        if isinstance(error, InternalError):
            return StoreError(f"the Chroma server failed: {error}")
        return None
    if isinstance(error, OSError) and not isinstance(error, InternalError):
        # Only the file system's own refusals; any other OSError keeps its traceback.
        if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            cause: str | None = f"{error.strerror}"
        elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            cause = f"a database file is not writable ({error.strerror})"
        else:
            return None
    else:
        cause = _storage_cause(error, db)
    if cause is not None:
        return StoreNotWritableError(
            f"cannot write the database in {str(db)!r}: {cause}; free space or fix "
            "permissions and run the same command again (finished work is kept)"
        )
    if not isinstance(error, InternalError):
        return None
    return StoreDamagedError(
        f"the database in {str(db)!r} is damaged ({_first_line(error)}); recreate it from "
        f"the source files with: {rebuild_hint}"
    )


def _storage_cause(error: BaseException, db: Path) -> str | None:
    """Why an embedded Chroma call failed if the storage refused it, else None."""
    text = str(error).lower()
    full = "no space left on the device (or the file size limit was reached)"
    if any(s in text for s in ("disk is full", "no space left", "file too large", "quota")):
        return full
    if any(s in text for s in ("readonly", "read-only", "permission denied")):
        return "a database file is not writable"
    if not _writable(db):
        return "a database file is not writable"
    # Chroma reports a refused write (ENOSPC, EFBIG past a file-size limit) as "disk I/O
    # error" or "Error in compaction", like real damage: ask the file system which it is.
    if _cannot_grow(db):
        return full
    if "disk i/o error" in text:
        return "a disk I/O error while writing"
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _writable(path: Path) -> bool:
    sqlite = path / "chroma.sqlite3"
    return os.access(path, os.W_OK | os.X_OK) and os.access(sqlite, os.W_OK)


# -- the folder lock -------------------------------------------------------------------------
class _FolderLock:
    """An ``flock`` on a database folder, shared by every holder in this process.

    Embedded Chroma is single-process: a second process writing the same folder can hang on
    SQLite's busy timeout or corrupt the index. Writers take the lock exclusively, readers
    shared, so readers run together but never beside a writer. Holders in one process share
    one lock (flock would refuse a second exclusive lock to the same process); the last
    release closes it. A killed process loses its lock with it.
    """

    _held: ClassVar[dict[str, tuple[Any, int]]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def acquire(cls, path: Path, *, exclusive: bool) -> str | None:
        """Lock ``path``; the key to :meth:`release`, or None where no lock is possible."""
        import fcntl

        key = str(path.resolve())
        with cls._guard:
            if key in cls._held:
                handle, count = cls._held[key]
                cls._held[key] = (handle, count + 1)
                return key
            lock_file = path / LOCK_NAME
            try:
                handle = open(lock_file, "a+" if exclusive else "r")  # noqa: SIM115 - held open
            except OSError as e:
                if exclusive:
                    raise StoreError(
                        f"cannot lock the database folder {key!r}: {e.strerror}"
                    ) from e
                try:
                    handle = open(lock_file, "a+")  # noqa: SIM115
                except OSError:
                    # A read-only folder without a lock file: nobody can write it, so a
                    # reader proceeds without a lock.
                    return None
            try:
                fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except OSError as e:
                handle.close()
                raise StoreInUseError(
                    f"the database folder {key!r} is in use by another qwen3-rag process; "
                    "wait for it, or use a Chroma server (--chroma-url) for concurrent access"
                ) from e
            cls._held[key] = (handle, 1)
            return key

    @classmethod
    def release(cls, key: str) -> None:
        """Give back one hold; the last closes the lock file (which releases the lock)."""
        with cls._guard:
            handle, count = cls._held[key]
            if count > 1:
                cls._held[key] = (handle, count - 1)
                return
            del cls._held[key]
            handle.close()


# -- the store -------------------------------------------------------------------------------
class Store:
    """An open Chroma client and what it holds: the folder's lock, a read-only copy.

    Use it as a context manager (or call :meth:`close`): the lock is released and a temporary
    copy removed on exit. The client must not be used after that.

    Attributes:
        client: The ``chromadb`` client.
        options: Where it points.
        path: The embedded folder (None for a server).
        rebuild_hint: How to recreate a damaged database (said in its error).
    """

    def __init__(
        self,
        client: Any,
        options: StoreOptions,
        rebuild_hint: str,
        lock: str | None = None,
        copy: Path | None = None,
    ) -> None:
        self.client = client
        self.options = options
        self.path = options.path
        self.rebuild_hint = rebuild_hint
        self._lock = lock
        self._copy = copy

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock and remove a read-only copy (idempotent)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            _FolderLock.release(lock)
        copy, self._copy = self._copy, None
        if copy is not None:
            shutil.rmtree(copy.parent, ignore_errors=True)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn Chroma's storage failures inside the block into the library's errors."""
        from chromadb.errors import InternalError

        try:
            yield
        except (InternalError, OSError) as e:
            converted = storage_error(self.path, self.rebuild_hint, e)
            if converted is None:
                raise
            raise converted from e

    def stored_config(self, name: str | None = None) -> dict[str, Any] | None:
        """The settings the collection was built with, or None if it does not exist.

        Raises:
            StoreError: If the collection was not built by qwen3-rag.
        """
        from chromadb.errors import NotFoundError

        name = name or self.options.collection
        try:
            collection = self.client.get_collection(name, embedding_function=None)
        except NotFoundError:
            return None
        except ValueError as e:  # a collection made with another embedding function
            raise StoreError(f"collection {name!r}: {e}") from e
        ef = (collection.configuration_json or {}).get("embedding_function") or {}
        if ef.get("name") != CHROMA_FUNCTION_NAME:
            raise StoreError(
                f"collection {name!r} was not built by qwen3-rag (embedding function "
                f"{ef.get('name')!r}); choose another collection"
            )
        return dict(ef.get("config") or {})

    def collection(self, name: str | None = None) -> Any:
        """The collection without an embedding function: get, count, delete load no model."""
        return self.client.get_collection(name or self.options.collection, embedding_function=None)

    def open_for(self, embedder: Any, name: str | None = None) -> Any:
        """The collection for ``embedder``, created if new, refusing other stored settings."""
        from qwen3_rag.integrations.chroma import Qwen3EmbeddingFunction, open_collection

        return open_collection(
            self.client,
            name or self.options.collection,
            Qwen3EmbeddingFunction(embedder),
            metadata={"hnsw:space": "cosine"},
        )


def default_rebuild_hint(options: StoreOptions) -> str:
    """How to recreate a damaged store from Python (the CLI passes its own command line)."""
    return f"qwen3-rag index PATH {options.where} --rebuild (or rebuild=True)"


def open_store(options: StoreOptions, *, write: bool, rebuild_hint: str | None = None) -> Store:
    """Open the embedded folder (locked) or connect to the server of ``options``.

    ``write=False`` (query, a look before prune) neither creates the folder nor needs it
    writable: a read-only folder is read through a private copy.

    Raises:
        StoreError: If the server cannot be reached or the folder cannot be created or locked.
        StoreInUseError: If another process holds the folder.
        StoreNotWritableError: If ``write`` and the folder cannot be written.
        StoreDamagedError: If the database's files are damaged.
    """
    import chromadb
    from chromadb.config import Settings

    hint = rebuild_hint or default_rebuild_hint(options)
    settings = Settings(anonymized_telemetry=False)
    if options.chroma_url:
        url = urlparse(options.chroma_url)
        port = url.port or (443 if url.scheme == "https" else 8000)
        try:
            client = chromadb.HttpClient(
                host=url.hostname or "", port=port, ssl=url.scheme == "https", settings=settings
            )
            client.heartbeat()
        except Exception as e:  # chromadb raises several types for a dead server
            raise StoreError(f"cannot reach the Chroma server at {options.chroma_url}: {e}") from e
        return Store(client, options, hint)
    path = options.path
    assert path is not None
    _check_folder(path, write)
    lock = _FolderLock.acquire(path, exclusive=write)
    copy = None
    try:
        where = path
        if not write and not _writable(path):
            where = copy = _read_only_copy(path)
        client = _persistent_client(chromadb, where, settings, path, hint)
    except BaseException:
        if lock is not None:
            _FolderLock.release(lock)
        if copy is not None:
            shutil.rmtree(copy.parent, ignore_errors=True)
        raise
    return Store(client, options, hint, lock, copy)


def _check_folder(path: Path, write: bool) -> None:
    if write:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the database folder {str(path)!r}: {e.strerror}"
            ) from e
        if not os.access(path, os.W_OK | os.X_OK):
            raise StoreNotWritableError(f"the database folder {str(path)!r} is not writable")
        sqlite = path / "chroma.sqlite3"
        if sqlite.exists() and not os.access(sqlite, os.W_OK):
            raise StoreNotWritableError(
                f"cannot write the database in {str(path)!r}: {sqlite.name} is not writable"
            )
    elif not (path / "chroma.sqlite3").is_file():
        what = "holds no database" if path.is_dir() else "does not exist"
        raise StoreError(
            f"the database folder {str(path)!r} {what}; "
            f"run `qwen3-rag index PATH --db {path}` first"
        )


def _persistent_client(
    chromadb: Any, where: Path, settings: Any, path: Path, rebuild_hint: str
) -> Any:
    from chromadb.errors import InternalError

    try:
        return chromadb.PersistentClient(path=str(where), settings=settings)
    except Exception as e:
        from chromadb.api.client import SharedSystemClient

        # chromadb caches the half-started system per path; drop it so that a later open in
        # this process (after a rebuild moved the files) starts afresh.
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


def _read_only_copy(path: Path) -> Path:
    """A private copy of a read-only database, removed when its store closes.

    Embedded Chroma writes to its folder even to read (SQLite journal, start-up checks), so a
    read-only folder is queried through a copy; nothing is written to the original.
    """
    tmp = Path(tempfile.mkdtemp(prefix="qwen3-rag-readonly-"))
    copy = tmp / "db"
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns(LOCK_NAME))
    for item in [copy, *copy.rglob("*")]:  # the copy keeps the original's modes
        item.chmod(0o700 if item.is_dir() else 0o600)
    logger.info("%s is read-only; querying a copy in %s", path, copy)
    return copy


def move_aside(path: Path) -> Path:
    """Move a damaged embedded database's files (not the lock) to a sibling folder."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    aside.mkdir()
    for item in path.iterdir():
        if item.name != LOCK_NAME:
            shutil.move(str(item), aside / item.name)
    return aside


# -- stored settings ---------------------------------------------------------------------------
def embedder_settings(
    name: str,
    stored: Mapping[str, Any] | None,
    model: str | None,
    given: Mapping[str, Any],
) -> tuple[str, dict[str, Any]]:
    """The model and options to embed a collection with: the given ones, checked against it.

    Settings the caller left out take the collection's stored values; one that differs is
    refused. With no stored config (a new collection) the given ones stand, the model
    defaulting to :data:`~qwen3_rag.core.DEFAULT_EMBEDDING_MODEL`.

    Raises:
        ConfigMismatchError: Naming the setting and both values.
    """
    options = dict(given)
    ref = model_reference(model) if model else None
    if stored is None:
        return ref or DEFAULT_EMBEDDING_MODEL, options
    stored_model = model_reference(str(stored.get("model")))
    asked = {k: v for k, v in options.items() if k in STORED_SETTINGS}
    if ref is not None:
        asked["model"] = ref
    check_stored_config({**stored, "model": stored_model}, asked, name)
    for key in STORED_SETTINGS:
        if key not in options and stored.get(key) is not None:
            options[key] = stored[key]
    return stored_model, options


def existing_ids(collection: Any) -> dict[str, set[str]]:
    """Chunk ids already stored, by source path."""
    by_source: dict[str, set[str]] = {}
    offset = 0
    while True:
        got = collection.get(include=["metadatas"], limit=ID_PAGE, offset=offset)
        for chunk_id, meta in zip(got["ids"], got["metadatas"] or [], strict=True):
            by_source.setdefault(str((meta or {}).get("source")), set()).add(chunk_id)
        if len(got["ids"]) < ID_PAGE:
            return by_source
        offset += ID_PAGE
