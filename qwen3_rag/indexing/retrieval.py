"""Questions in, reranked sources out; and ``prune``, which drops the chunks of deleted files.

:func:`search` embeds a question with the collection's own embedder (its stored settings) and
returns the nearest chunks; :func:`rerank_hits` orders them with Qwen3-Reranker; :func:`query`
does both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qwen3_rag.core import Qwen3Embedder, Qwen3Reranker

from .documents import is_gone
from .errors import IndexingError, StoreError
from .options import StoreOptions
from .store import Store, embedder_settings, existing_ids, open_store

#: Vector-search candidates handed to the reranker.
DEFAULT_K = 20
#: Results kept after reranking.
DEFAULT_TOP_N = 5


@dataclass(frozen=True)
class Hit:
    """One chunk found for a question.

    Attributes:
        text: The chunk's text.
        metadata: Its metadata (``source``, ``page``, ``start_index``, ...).
        vector_distance: Cosine distance to the question's vector.
        score: P("yes") from the reranker; None before reranking.
        rank: Position after reranking (1 is best); None before.
    """

    text: str
    metadata: dict[str, Any]
    vector_distance: float
    score: float | None = None
    rank: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as ``qwen3-rag query --json`` prints it."""
        meta = self.metadata
        return {
            "rank": self.rank,
            "score": None if self.score is None else round(self.score, 6),
            "source": meta.get("source"),
            "page": meta.get("page"),
            "start_index": meta.get("start_index"),
            "vector_distance": round(self.vector_distance, 6),
            "text": self.text,
        }


def collection_embedder(
    store: Store, model: str | None = None, runtime: Mapping[str, Any] | None = None
) -> Qwen3Embedder:
    """The collection's own embedder: its stored model and settings, with ``runtime`` options.

    Args:
        store: An open store.
        model: A model the caller names; it must be the collection's.
        runtime: Options that do not change the vectors (``device``, ``dtype``, ...), or
            stored ones that must then match.

    Raises:
        IndexingError: If the collection does not exist.
        ConfigMismatchError: If ``model`` or a stored setting in ``runtime`` differs.
    """
    name = store.options.collection
    stored = store.stored_config()
    if stored is None:
        raise IndexingError(f"collection {name!r} does not exist; run `qwen3-rag index PATH` first")
    ref, options = embedder_settings(name, stored, model, runtime or {})
    return Qwen3Embedder(ref, show_progress=False, **options)


def search(
    question: str,
    store: Store,
    *,
    k: int = DEFAULT_K,
    embedder: Qwen3Embedder | None = None,
) -> list[Hit]:
    """The ``k`` chunks nearest to ``question``, nearest first.

    Args:
        question: The question.
        store: An open store (:func:`~qwen3_rag.indexing.open_store`).
        k: How many chunks.
        embedder: The collection's embedder (:func:`collection_embedder`, loaded if None).

    Raises:
        IndexingError: If ``k`` is not positive, or the collection is missing or empty.
    """
    _check_positive(k, "k")
    with store.errors():
        embedder = embedder or collection_embedder(store)
        collection = store.open_for(embedder)
        count = collection.count()
        if count == 0:
            raise IndexingError(
                f"collection {store.options.collection!r} is empty; run `qwen3-rag index PATH` "
                "first"
            )
        found = collection.query(
            query_texts=[question],
            n_results=min(k, count),
            include=["documents", "metadatas", "distances"],
        )
    return [
        Hit(str(text or ""), dict(meta or {}), float(distance))
        for text, meta, distance in zip(
            found["documents"][0], found["metadatas"][0], found["distances"][0], strict=True
        )
    ]


def rerank_hits(
    reranker: Qwen3Reranker, question: str, hits: list[Hit], *, top_n: int = DEFAULT_TOP_N
) -> list[Hit]:
    """``hits`` ordered by the reranker's P("yes"), best first, the ``top_n`` best kept."""
    _check_positive(top_n, "top_n")
    ranked = reranker.rerank(question, [h.text for h in hits], top_n=top_n)
    return [
        Hit(r.document, hits[r.index].metadata, hits[r.index].vector_distance, r.score, rank)
        for rank, r in enumerate(ranked, start=1)
    ]


def query(
    question: str,
    store: StoreOptions | None = None,
    *,
    reranker: Qwen3Reranker | str | None = None,
    k: int = DEFAULT_K,
    top_n: int = DEFAULT_TOP_N,
    runtime: Mapping[str, Any] | None = None,
) -> list[Hit]:
    """Vector search in an indexed collection, then reranking: the best ``top_n`` chunks.

    Args:
        question: The question.
        store: Where the collection is (default: :class:`StoreOptions` defaults).
        reranker: A loaded reranker, a hub id or folder, or None for the default one.
        k: Vector-search candidates.
        top_n: Results kept after reranking.
        runtime: Runtime options for the embedder (``device``, ``dtype``...).

    Example:
        >>> from qwen3_rag.indexing import StoreOptions, query
        >>> for hit in query("How do I rotate keys?", StoreOptions(db="./db")):  # doctest: +SKIP
        ...     print(hit.rank, round(hit.score, 3), hit.metadata["source"])
    """
    _check_positive(top_n, "top_n")
    with open_store(store or StoreOptions(), write=False) as opened:
        embedder = collection_embedder(opened, runtime=runtime)
        hits = search(question, opened, k=k, embedder=embedder)
    if not isinstance(reranker, Qwen3Reranker):
        reranker = Qwen3Reranker(*([reranker] if reranker else []), show_progress=False)
    return rerank_hits(reranker, question, hits, top_n=top_n)


@dataclass
class PruneSummary:
    """What :func:`prune` removed.

    Attributes:
        removed: Chunks removed.
        removed_sources: The files they came from, sorted.
        by_source: Chunks removed per file.
        collection_count: Chunks left.
    """

    removed: int = 0
    removed_sources: list[str] = field(default_factory=list)
    by_source: dict[str, int] = field(default_factory=dict)
    collection_count: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counts as ``qwen3-rag prune --json`` prints them."""
        return {
            "removed": self.removed,
            "removed_sources": self.removed_sources,
            "collection_count": self.collection_count,
        }


def prune(store: StoreOptions | None = None, *, rebuild_hint: str | None = None) -> PruneSummary:
    """Remove the chunks of files that no longer exist; no model is loaded.

    Only a file that is really gone (no such file) counts: one in a folder that cannot be read
    now keeps its chunks.

    Raises:
        IndexingError: If there is no database or no such collection.
    """
    options = store or StoreOptions()
    path = options.path
    if path is not None and not (path / "chroma.sqlite3").is_file():
        raise StoreError(f"no database in {str(path)!r}; nothing to prune")
    summary = PruneSummary()
    with open_store(options, write=True, rebuild_hint=rebuild_hint) as opened, opened.errors():
        if opened.stored_config() is None:
            raise IndexingError(f"collection {options.collection!r} does not exist")
        collection = opened.collection()
        gone = {s: ids for s, ids in existing_ids(collection).items() if is_gone(s)}
        for source in sorted(gone):
            collection.delete(ids=sorted(gone[source]))
            summary.by_source[source] = len(gone[source])
        summary.removed_sources = sorted(gone)
        summary.removed = sum(summary.by_source.values())
        summary.collection_count = collection.count()
    return summary


def _check_positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise IndexingError(f"{name} must be a positive int, got {value!r}")
