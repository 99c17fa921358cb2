"""LangChain adapters: :class:`Qwen3Embeddings` (``Embeddings``) and :class:`Qwen3Rerank`.

Example:
    >>> from qwen3_rag.integrations.langchain import Qwen3Embeddings, Qwen3Rerank
    >>> embeddings = Qwen3Embeddings(model="Qwen/Qwen3-Embedding-0.6B")  # doctest: +SKIP
    >>> reranker = Qwen3Rerank(model="Qwen/Qwen3-Reranker-0.6B", top_n=3)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from copy import deepcopy
from typing import Any

from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    Qwen3Embedder,
    Qwen3Reranker,
)

from ._common import (
    EMBEDDER_OPTIONS,
    RERANKER_OPTIONS,
    CoreOptions,
    build_embedder,
    build_reranker,
    filter_by_threshold,
    missing_extra,
)

try:
    from langchain_core.callbacks import BaseCallbackManager, Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.runnables import Runnable, RunnableLambda
    from pydantic import Field, PrivateAttr
except ImportError as e:  # pragma: no cover - exercised in a clean environment test
    raise missing_extra("langchain-core", "langchain") from e

#: Metadata key, in a run's config, that overrides the reranker instruction for that run:
#: ``retriever.invoke(q, config={"metadata": {INSTRUCTION_METADATA_KEY: "..."}})``.
INSTRUCTION_METADATA_KEY = "qwen3_rerank_instruction"

__all__ = ["INSTRUCTION_METADATA_KEY", "Qwen3Embeddings", "Qwen3Rerank"]


class Qwen3Embeddings(CoreOptions, Embeddings):
    """Qwen3-Embedding as a LangChain ``Embeddings``.

    ``embed_query`` adds the task instruction (``Instruct: … Query:``); ``embed_documents``
    never does. Texts are passed unchanged, and vectors are unit length.

    Example:
        >>> emb = Qwen3Embeddings(dimensions=256)  # doctest: +SKIP
        >>> len(emb.embed_query("hello"))  # doctest: +SKIP
        256
    """

    model: str | Qwen3Embedder = DEFAULT_EMBEDDING_MODEL
    """Hub id, local folder, or a built :class:`~qwen3_rag.Qwen3Embedder`."""
    dimensions: int | None = None
    """MRL output size, 32 up to the model's hidden size."""
    instruction: str | None = None
    """Task for queries; None keeps the model's default, "" sends none."""

    _embedder: Qwen3Embedder = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Build the core embedder (or reuse the one passed as ``model``)."""
        self._embedder = build_embedder(self.model, self.core_options(EMBEDDER_OPTIONS))

    @property
    def embedder(self) -> Qwen3Embedder:
        """The core embedder behind this adapter."""
        return self._embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (no instruction)."""
        return self._embedder.embed_documents(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one query, with the instruction."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._embedder.embed_queries([text], instruction=self.instruction)[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Like :meth:`embed_documents`, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Like :meth:`embed_query`, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_query, text)


class Qwen3Rerank(CoreOptions, BaseDocumentCompressor):
    """Qwen3-Reranker as a LangChain document compressor.

    Returns copies of the best ``top_n`` documents, best first, each with
    ``metadata["relevance_score"]`` (P("yes"), in [0, 1]); the inputs are never modified. Use it
    in ``ContextualCompressionRetriever``, or in LCEL through :meth:`as_runnable`.

    The instruction comes from, in order: the ``instruction`` argument of
    :meth:`compress_documents`; the run's config metadata under
    :data:`INSTRUCTION_METADATA_KEY`; the ``instruction`` field; the model's default.

    Example:
        >>> rerank = Qwen3Rerank(model="Qwen/Qwen3-Reranker-0.6B", top_n=3)  # doctest: +SKIP
        >>> retriever = ContextualCompressionRetriever(  # doctest: +SKIP
        ...     base_compressor=rerank, base_retriever=store.as_retriever(search_kwargs={"k": 20}))
    """

    model: str | Qwen3Reranker = DEFAULT_RERANKER_MODEL
    """Hub id, local folder, or a built :class:`~qwen3_rag.Qwen3Reranker`."""
    top_n: int | None = Field(default=3, ge=1)
    """Documents to keep; None keeps all."""
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Drop documents scoring below this."""
    instruction: str | None = None
    """Instruction for every call; None keeps the model's default."""
    share_prefix: bool | None = None
    """Reuse the shared prompt prefix across documents (default True)."""

    _reranker: Qwen3Reranker = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Build the core reranker (or reuse the one passed as ``model``)."""
        self._reranker = build_reranker(self.model, self.core_options(RERANKER_OPTIONS))

    @property
    def reranker(self) -> Qwen3Reranker:
        """The core reranker behind this adapter."""
        return self._reranker

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
        *,
        instruction: str | None = None,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query`` and keep the best.

        Args:
            documents: Retrieved documents; their ``page_content`` is scored.
            query: The query.
            callbacks: Run callbacks; their metadata may carry an instruction override.
            instruction: Instruction for this call only.

        Returns:
            New documents, best first, with ``metadata["relevance_score"]``.
        """
        if not documents:
            return []
        if instruction is None and isinstance(callbacks, BaseCallbackManager):
            instruction = callbacks.inheritable_metadata.get(INSTRUCTION_METADATA_KEY)
        instruction = self.instruction if instruction is None else instruction
        scores = self._reranker.score(query, [d.page_content for d in documents], instruction)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        kept = filter_by_threshold(
            [(i, scores[i]) for i in order], self.top_n, self.score_threshold
        )
        out = []
        for i, score in kept:
            doc = documents[i]
            metadata = deepcopy(doc.metadata)
            metadata["relevance_score"] = score
            out.append(doc.model_copy(update={"metadata": metadata}))
        return out

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
        *,
        instruction: str | None = None,
    ) -> Sequence[Document]:
        """Like :meth:`compress_documents`, in a worker thread."""
        return await asyncio.to_thread(
            self.compress_documents, documents, query, callbacks, instruction=instruction
        )

    def as_runnable(self) -> Runnable[dict[str, Any], list[Document]]:
        """An LCEL step taking ``{"query": str, "documents": [...]}`` and returning the best."""

        def run(inputs: dict[str, Any]) -> list[Document]:
            return list(self.compress_documents(inputs["documents"], inputs["query"]))

        async def arun(inputs: dict[str, Any]) -> list[Document]:
            return list(await self.acompress_documents(inputs["documents"], inputs["query"]))

        return RunnableLambda(run, afunc=arun, name="Qwen3Rerank")
