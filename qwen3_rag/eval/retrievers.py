"""Evaluate a whole LangChain or LlamaIndex retrieval pipeline on a :class:`Dataset`.

The frameworks are imported here only, and only by the functions that build their objects;
:func:`evaluate_retriever` itself calls the retriever's public method (``invoke`` for
LangChain, ``retrieve`` for LlamaIndex), so any retriever of either framework works: vector
stores, BM25, ensembles, compressors with rerankers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .data import Dataset
from .evaluate import RunResult, evaluate_run
from .metrics import Run, parse_metrics

#: The metadata key under which :func:`langchain_documents` and :func:`llamaindex_nodes` store
#: the dataset's document id, and where :func:`evaluate_retriever` looks for it.
ID_KEY = "doc_id"


def langchain_documents(dataset: Dataset, id_key: str = ID_KEY) -> list[Any]:
    """The corpus as LangChain ``Document`` objects (``id`` and ``metadata[id_key]`` = doc id)."""
    from langchain_core.documents import Document

    return [
        Document(page_content=text, metadata={id_key: doc_id}, id=doc_id)
        for doc_id, text in dataset.corpus.items()
    ]


def llamaindex_nodes(dataset: Dataset, id_key: str = ID_KEY) -> list[Any]:
    """The corpus as LlamaIndex ``TextNode`` objects (``id_`` and ``metadata[id_key]`` = doc id).

    The id is excluded from what LlamaIndex embeds and shows an LLM.
    """
    from llama_index.core.schema import TextNode

    # LlamaIndex embeds and prompts with the metadata by default: the id would leak into the
    # vectors (an id such as "json:loads" names the answer), so it is kept out of both.
    return [
        TextNode(
            text=text,
            id_=doc_id,
            metadata={id_key: doc_id},
            excluded_embed_metadata_keys=[id_key],
            excluded_llm_metadata_keys=[id_key],
        )
        for doc_id, text in dataset.corpus.items()
    ]


def _result_id(item: Any, id_key: str) -> tuple[str | None, float | None]:
    """(document id, score or None) of one LangChain Document or LlamaIndex NodeWithScore."""
    node = getattr(item, "node", None)
    if node is not None:  # LlamaIndex NodeWithScore
        meta = getattr(node, "metadata", None) or {}
        found = meta.get(id_key, getattr(node, "node_id", None))
        score = getattr(item, "score", None)
        return (None if found is None else str(found)), score
    meta = getattr(item, "metadata", None) or {}
    found = meta.get(id_key, getattr(item, "id", None))
    return (None if found is None else str(found)), None


def retriever_run(
    retriever: Any,
    dataset: Dataset,
    *,
    id_key: str = ID_KEY,
    doc_id: Callable[[Any], str] | None = None,
) -> Run:
    """Ask ``retriever`` every query of ``dataset``; query id -> {document id: score}.

    The order of the retriever's answer is the ranking: each result scores ``1 / rank`` (its
    own score, when it has one, is not comparable across retrievers). Several chunks of one
    document count once, at the best rank.

    Args:
        retriever: A LangChain retriever (``invoke``) or a LlamaIndex retriever (``retrieve``).
        dataset: The data.
        id_key: Metadata key holding the dataset's document id (default ``"doc_id"``); a result
            without it is identified by its ``id`` (LangChain) or ``node_id`` (LlamaIndex).
        doc_id: A function from one result to its document id, instead of ``id_key``.

    Raises:
        TypeError: If ``retriever`` has neither ``invoke`` nor ``retrieve``.
        ValueError: If a result has no id, or an id that is not in the corpus.
    """
    if callable(getattr(retriever, "invoke", None)):
        ask: Callable[[str], Sequence[Any]] = retriever.invoke
    elif callable(getattr(retriever, "retrieve", None)):
        ask = retriever.retrieve
    else:
        raise TypeError(
            f"{type(retriever).__name__} is neither a LangChain retriever (invoke) nor a "
            "LlamaIndex retriever (retrieve)"
        )
    run: Run = {}
    for qid, query in dataset.queries.items():
        docs: dict[str, float] = {}
        for rank, item in enumerate(ask(query), 1):
            found = doc_id(item) if doc_id is not None else _result_id(item, id_key)[0]
            if found is None:
                raise ValueError(
                    f"query {qid!r}: result {rank} has no document id (no metadata "
                    f"{id_key!r} and no id); pass id_key= or doc_id="
                )
            if found not in dataset.corpus:
                raise ValueError(
                    f"query {qid!r}: result {rank} has id {found!r}, which is not a document "
                    f"of {dataset.name!r}; pass id_key= or doc_id= to map results to corpus ids"
                )
            docs.setdefault(found, 1.0 / rank)
        run[qid] = docs
    return run


def evaluate_retriever(
    retriever: Any,
    dataset: Dataset,
    *,
    name: str | None = None,
    metrics: Sequence[str] | str | None = None,
    id_key: str = ID_KEY,
    doc_id: Callable[[Any], str] | None = None,
) -> RunResult:
    """Retrieval quality of any LangChain or LlamaIndex retriever on ``dataset``.

    Index the corpus with :func:`langchain_documents` or :func:`llamaindex_nodes` (they carry
    the document ids), build the retriever your application uses, and pass it here. Cutoff
    metrics past the retriever's ``k`` count the missing results as not found.

    Args:
        retriever: The retriever (see :func:`retriever_run`).
        dataset: The data.
        name: The row name; default: the retriever's class name.
        metrics: Metric names; None: the defaults.
        id_key: See :func:`retriever_run`.
        doc_id: See :func:`retriever_run`.

    Returns:
        A :class:`~qwen3_rag.eval.RunResult` (``.metrics``, ``.run``, ``.seconds``).

    Example:
        >>> store = InMemoryVectorStore.from_documents(  # doctest: +SKIP
        ...     langchain_documents(data), Qwen3Embeddings())
        >>> evaluate_retriever(store.as_retriever(k=10), data).metrics  # doctest: +SKIP
    """
    names = parse_metrics(metrics)
    started = time.perf_counter()
    run = retriever_run(retriever, dataset, id_key=id_key, doc_id=doc_id)
    return evaluate_run(
        name or type(retriever).__name__, dataset, run, time.perf_counter() - started, names
    )
