"""The settings of an index run and of the store it writes: the one home of their defaults.

:class:`StoreOptions` says where the chunks live (an embedded Chroma folder or a Chroma
server, and the collection); :class:`IndexOptions` says how files become chunks and vectors
and which engine runs. Both check their values at construction, so a bad one fails before any
file, database or model is touched. The CLI's flags, :func:`~qwen3_rag.indexing.index` and the
Ray engine all take these objects; nothing else declares a chunk size or a collection name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlparse

from qwen3_rag.core import EmbedderConfig

from .errors import IndexingError

#: Characters per chunk.
DEFAULT_CHUNK_SIZE = 1000
#: Characters shared by neighbouring chunks.
DEFAULT_CHUNK_OVERLAP = 150
#: The embedded database folder when neither a folder nor a server is named.
DEFAULT_DB = "./qwen3_rag_db"
#: The collection name when none is given.
DEFAULT_COLLECTION = "qwen3-rag"
#: Chunks per embed-and-upsert batch of the Ray engine: large enough to fill a GPU's token
#: budget with paragraph-sized chunks, small enough that a killed worker redoes little.
DEFAULT_RAY_BATCH_SIZE = 256

Engine = Literal["local", "ray"]
ENGINES: tuple[Engine, ...] = ("local", "ray")


def check_chunking(chunk_size: object, chunk_overlap: object) -> None:
    """Require ``chunk_size >= 1`` and ``0 <= chunk_overlap < chunk_size`` (ints).

    Raises:
        IndexingError: Naming the bad value.
    """
    for name, value in (("chunk_size", chunk_size), ("chunk_overlap", chunk_overlap)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise IndexingError(f"{name} must be an int, got {value!r}")
    assert isinstance(chunk_size, int) and isinstance(chunk_overlap, int)
    if chunk_size < 1:
        raise IndexingError(f"chunk_size must be at least 1, got {chunk_size}")
    if not 0 <= chunk_overlap < chunk_size:
        raise IndexingError(
            f"chunk_overlap must be from 0 to chunk_size - 1 ({chunk_size - 1}), "
            f"got {chunk_overlap}"
        )


def model_reference(model: str | os.PathLike[str]) -> str:
    """A local folder as its absolute resolved path (stored so any cwd finds it); hub ids as is."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else os.fspath(model)


@dataclass(frozen=True)
class StoreOptions:
    """Where the chunks are stored.

    Attributes:
        db: The embedded Chroma folder (default :data:`DEFAULT_DB`); None with a server.
        chroma_url: A Chroma server, e.g. ``"http://localhost:8000"``, instead of a folder.
        collection: The collection name.
    """

    db: str | None = None
    chroma_url: str | None = None
    collection: str = DEFAULT_COLLECTION

    def __post_init__(self) -> None:
        if self.db is not None and self.chroma_url is not None:
            raise IndexingError(
                "give an embedded database folder (db) or a Chroma server (chroma_url), not both"
            )
        if self.chroma_url is not None:
            url = urlparse(self.chroma_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise IndexingError(
                    f"chroma_url must look like http://host:8000, got {self.chroma_url!r}"
                )
        if not isinstance(self.collection, str) or not self.collection:
            raise IndexingError(f"collection must be a non-empty str, got {self.collection!r}")

    @property
    def path(self) -> Path | None:
        """The embedded database folder, absolute; None for a Chroma server."""
        if self.chroma_url:
            return None
        return Path(os.path.abspath(Path(self.db or DEFAULT_DB).expanduser()))

    @property
    def where(self) -> str:
        """The store as the CLI's flags name it (``--db PATH`` or ``--chroma-url URL``)."""
        return f"--chroma-url {self.chroma_url}" if self.chroma_url else f"--db {self.path}"


@dataclass(frozen=True)
class IndexOptions:
    """How an index run turns files into stored vectors.

    Attributes:
        store: Where the chunks go.
        chunk_size: Characters per chunk.
        chunk_overlap: Characters shared by neighbouring chunks.
        embedding_model: Hub id or folder; None takes the collection's model, else the
            default model.
        embedder: :class:`~qwen3_rag.core.EmbedderConfig` options given by the user. A stored
            collection fills in the settings left out (:data:`~qwen3_rag.indexing.store.
            STORED_SETTINGS`) and refuses different ones.
        rebuild: Delete the collection (or move a damaged database aside) and start afresh,
            keeping the stored settings that are not given again.
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data, into a Chroma server).
        progress: Show progress lines on stderr.
        verbose: Let the libraries' own logs through (Ray's workers, progress bars).
        ray_address: The Ray cluster to join; None starts a local Ray (engine ``"ray"``).
        workers: Embedding workers (engine ``"ray"``; default: GPUs / ``gpus_per_worker``,
            else 1).
        gpus_per_worker: GPUs each worker reserves (default: 1 where there are GPUs, else 0).
        batch_size: Chunks per embed-and-upsert batch (engine ``"ray"``).

    Raises:
        IndexingError: For a bad value (named), or Ray settings with the local engine.
    """

    store: StoreOptions = field(default_factory=StoreOptions)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    embedding_model: str | None = None
    embedder: Mapping[str, Any] = field(default_factory=dict)
    rebuild: bool = False
    engine: Engine = "local"
    progress: bool = False
    verbose: bool = False
    ray_address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        check_chunking(self.chunk_size, self.chunk_overlap)
        if self.engine not in ENGINES:
            raise IndexingError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        # A read-only copy: the caller's dict stays theirs, and the options stay frozen.
        object.__setattr__(self, "embedder", MappingProxyType(dict(self.embedder)))
        check_embedder_options(self.embedder)
        if self.engine == "local":
            given = [name for name in RAY_SETTINGS if getattr(self, name) is not None]
            if given:
                raise IndexingError(f"{', '.join(given)} need(s) engine='ray'")
            return
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise IndexingError(f"workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise IndexingError(f"gpus_per_worker must be 0 or more, got {self.gpus_per_worker}")
        if self.batch_size is not None and self.batch_size < 1:
            raise IndexingError(f"batch_size must be at least 1, got {self.batch_size}")

    def with_model(self, model: str | None, embedder: Mapping[str, Any]) -> IndexOptions:
        """A copy with another model and embedder options (as a stored collection decides)."""
        return replace(self, embedding_model=model, embedder=dict(embedder))

    @property
    def ray_batch_size(self) -> int:
        """Chunks per embed-and-upsert batch of the Ray engine."""
        return self.batch_size or DEFAULT_RAY_BATCH_SIZE


#: The settings that only the Ray engine reads.
RAY_SETTINGS = ("ray_address", "workers", "gpus_per_worker", "batch_size")


def check_embedder_options(options: Mapping[str, Any]) -> EmbedderConfig:
    """The :class:`~qwen3_rag.core.EmbedderConfig` for ``options``, or the error naming one.

    Raises:
        IndexingError: For an unknown option or a bad value.
    """
    try:
        return EmbedderConfig(**options)
    except (TypeError, ValueError) as e:
        raise IndexingError(f"bad option: {e}") from e
