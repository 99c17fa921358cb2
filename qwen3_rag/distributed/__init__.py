"""Scale-out indexing on Ray Data into a Chroma server: an alias of the indexing library's engine.

The same chunks, ids and stale-chunk handling as the single-process indexer; the command is
``qwen3-rag index PATH --engine ray --chroma-url URL``, and :func:`qwen3_rag.indexing.index`
with ``IndexOptions(engine="ray")`` is the same from Python. :func:`index_with_ray` keeps the
keyword form of earlier versions.

Example:
    >>> from qwen3_rag.distributed import index_with_ray
    >>> index_with_ray(["./docs"], "http://localhost:8000")  # doctest: +SKIP
    {'files': 12, 'skipped': 0, 'chunks': 340, 'new': 340, ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qwen3_rag.core import EmbedderConfig
from qwen3_rag.core.config import fields
from qwen3_rag.indexing import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_COLLECTION,
    IndexOptions,
    StoreOptions,
    deferred_stop,
    index,
)

__all__ = ["index_with_ray"]


def index_with_ray(
    paths: Sequence[str],
    chroma_url: str,
    *,
    collection: str = DEFAULT_COLLECTION,
    embedding_model: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ray_address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    batch_size: int | None = None,
    rebuild: bool = False,
    progress: bool = False,
    **embedder_options: Any,
) -> dict[str, Any]:
    """Index files into a Chroma server with Ray, as ``qwen3-rag index --engine ray`` does.

    Args:
        paths: Files or folders (.txt, .md, .pdf), visible at the same paths on every node.
        chroma_url: The Chroma server, e.g. ``"http://localhost:8000"``.
        collection: Collection name.
        embedding_model: Hub id or folder (default: the collection's model, else the default).
        chunk_size: Characters per chunk.
        chunk_overlap: Characters shared by neighbouring chunks.
        ray_address: A cluster to join; None starts a local Ray and stops it at the end.
        workers: Embedding workers (default: GPUs / ``gpus_per_worker``, else 1).
        gpus_per_worker: GPUs per worker (default: 1 where the cluster has GPUs, else 0).
        batch_size: Chunks per embed-and-upsert batch (default 256).
        rebuild: Delete the collection first and index from scratch.
        progress: Show progress lines on stderr.
        **embedder_options: Fields of :class:`~qwen3_rag.core.EmbedderConfig` (``max_length``,
            ``dimensions``, ``instruction``, ``dtype``, ...).

    Returns:
        The counts the CLI prints with ``--json`` (files, chunks, new, unchanged, removed...).

    Raises:
        ValueError: For bad input (a path, an option, an unreachable server or cluster); the
            message names it (:class:`~qwen3_rag.indexing.IndexingError` is a ValueError).
        TypeError: For an option that is not an embedder option.
    """
    known = {f.name for f in fields(EmbedderConfig) if f.metadata["cli"]}
    unknown = sorted(set(embedder_options) - known)
    if unknown:
        raise TypeError(f"unknown embedding option(s): {', '.join(unknown)}")
    options = IndexOptions(
        StoreOptions(chroma_url=chroma_url, collection=collection),
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        embedding_model=embedding_model,
        embedder=embedder_options,
        rebuild=rebuild,
        engine="ray",
        progress=progress,
        ray_address=ray_address,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        batch_size=batch_size,
    )
    with deferred_stop() as stop:
        return index(paths, options, stop=stop).as_dict()
