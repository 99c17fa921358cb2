"""Indexing as a library: files into a Chroma collection, questions out, stale chunks pruned.

The ``qwen3-rag index``, ``query`` and ``prune`` commands are thin wrappers of these functions,
and the Ray engine runs the same planning, store checks and counts on a cluster.

Example:
    >>> from qwen3_rag.indexing import IndexOptions, StoreOptions, index, query
    >>> store = StoreOptions(db="./db")
    >>> summary = index(["./docs"], IndexOptions(store))  # doctest: +SKIP
    >>> for hit in query("How do I rotate keys?", store):  # doctest: +SKIP
    ...     print(hit.rank, round(hit.score, 3), hit.metadata["source"])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwen3_rag.integrations.chroma import ConfigMismatchError

    from .documents import SUPPORTED_SUFFIXES, Chunk, DocumentError, SkippedSource, find_sources
    from .errors import (
        IndexingError,
        Interrupted,
        StoreDamagedError,
        StoreError,
        StoreInUseError,
        StoreNotWritableError,
    )
    from .indexer import index
    from .options import (
        DEFAULT_CHUNK_OVERLAP,
        DEFAULT_CHUNK_SIZE,
        DEFAULT_COLLECTION,
        DEFAULT_DB,
        IndexOptions,
        StoreOptions,
    )
    from .plan import IndexSummary
    from .progress import StopRequest, deferred_stop
    from .retrieval import (
        DEFAULT_K,
        DEFAULT_TOP_N,
        Hit,
        PruneSummary,
        collection_embedder,
        prune,
        query,
        rerank_hits,
        search,
    )
    from .store import STORED_SETTINGS, Store, open_store

# Loaded on first use: `qwen3_rag.indexing.options` (chunk defaults) imports without chromadb,
# which only the store needs.
_WHERE = {
    "Chunk": ".documents",
    "ConfigMismatchError": "qwen3_rag.integrations.chroma",
    "DEFAULT_CHUNK_OVERLAP": ".options",
    "DEFAULT_CHUNK_SIZE": ".options",
    "DEFAULT_COLLECTION": ".options",
    "DEFAULT_DB": ".options",
    "DEFAULT_K": ".retrieval",
    "DEFAULT_TOP_N": ".retrieval",
    "DocumentError": ".documents",
    "Hit": ".retrieval",
    "IndexOptions": ".options",
    "IndexSummary": ".plan",
    "IndexingError": ".errors",
    "Interrupted": ".errors",
    "PruneSummary": ".retrieval",
    "STORED_SETTINGS": ".store",
    "SUPPORTED_SUFFIXES": ".documents",
    "SkippedSource": ".documents",
    "StopRequest": ".progress",
    "Store": ".store",
    "StoreDamagedError": ".errors",
    "StoreError": ".errors",
    "StoreInUseError": ".errors",
    "StoreNotWritableError": ".errors",
    "StoreOptions": ".options",
    "collection_embedder": ".retrieval",
    "deferred_stop": ".progress",
    "find_sources": ".documents",
    "index": ".indexer",
    "open_store": ".store",
    "prune": ".retrieval",
    "query": ".retrieval",
    "rerank_hits": ".retrieval",
    "search": ".retrieval",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(where if where.startswith("qwen3_rag") else __name__ + where)
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "DEFAULT_CHUNK_OVERLAP",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_COLLECTION",
    "DEFAULT_DB",
    "DEFAULT_K",
    "DEFAULT_TOP_N",
    "STORED_SETTINGS",
    "SUPPORTED_SUFFIXES",
    "Chunk",
    "ConfigMismatchError",
    "DocumentError",
    "Hit",
    "IndexOptions",
    "IndexSummary",
    "IndexingError",
    "Interrupted",
    "PruneSummary",
    "SkippedSource",
    "StopRequest",
    "Store",
    "StoreDamagedError",
    "StoreError",
    "StoreInUseError",
    "StoreNotWritableError",
    "StoreOptions",
    "collection_embedder",
    "deferred_stop",
    "find_sources",
    "index",
    "open_store",
    "prune",
    "query",
    "rerank_hits",
    "search",
]
