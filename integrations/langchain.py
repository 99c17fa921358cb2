"""LangChain adapters: :class:`Qwen3Embeddings` (``Embeddings``) and :class:`Qwen3Rerank`.

Every option of :class:`~qwen3_rag.core.EmbedderConfig` / :class:`~qwen3_rag.core.RerankerConfig`
is a field (None: the core default). Fields are validated on assignment and changing one
rebuilds the core object, so a field always reports what is in effect; copies share the loaded
model, pickles reload it on the other side.

Example:
    >>> from qwen3_rag.integrations.langchain import Qwen3Embeddings, Qwen3Rerank
    >>> embeddings = Qwen3Embeddings(model="Qwen/Qwen3-Embedding-0.6B")  # doctest: +SKIP
    >>> reranker = Qwen3Rerank(model="Qwen/Qwen3-Reranker-0.6B", top_n=3)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from copy import deepcopy
from typing import TYPE_CHECKING, Any

from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    Qwen3Embedder,
    Qwen3Reranker,
)

from ._common import missing_extra, options_model

try:
    from langchain_core.callbacks import BaseCallbackManager, Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
    from pydantic import Field
except ImportError as e:  # pragma: no cover - exercised in a clean environment test
    raise missing_extra("langchain-core", "langchain") from e

#: Metadata key, in a run's config, that overrides the reranker instruction for that run:
#: ``retriever.invoke(q, config={"metadata": {INSTRUCTION_METADATA_KEY: "..."}})``.
INSTRUCTION_METADATA_KEY = "qwen3_rerank_instruction"

__all__ = ["INSTRUCTION_METADATA_KEY", "Qwen3Embeddings", "Qwen3Rerank"]

if TYPE_CHECKING:  # the option fields are derived from the core configs at import time
    _EmbedderOptions = Any
    _RerankerOptions = Any
else:
    _EmbedderOptions = options_model(
        "EmbedderOptions",
        Qwen3Embedder,
        DEFAULT_EMBEDDING_MODEL,
        "Hub id, local folder, or a built Qwen3Embedder.",
    )
    _RerankerOptions = options_model(
        "RerankerOptions",
        Qwen3Reranker,
        DEFAULT_RERANKER_MODEL,
        "Hub id, local folder, or a built Qwen3Reranker.",
    )


class Qwen3Embeddings(_EmbedderOptions, Embeddings):  # type: ignore[misc]
    """Qwen3-Embedding as a LangChain ``Embeddings``.

    ``embed_query`` adds the task instruction (``Instruct: … Query:``); ``embed_documents``
    never does. Texts are passed unchanged, and vectors are unit length. ``model`` is a hub
    id, a folder (``str`` or path) or a built :class:`~qwen3_rag.Qwen3Embedder`; every core
    option (``dimensions``, ``instruction``, ``max_length``, ...) is a field.

    Example:
        >>> emb = Qwen3Embeddings(dimensions=256)  # doctest: +SKIP
        >>> len(emb.embed_query("hello"))  # doctest: +SKIP
        256
    """

    @property
    def embedder(self) -> Qwen3Embedder:
        """The core embedder behind this adapter."""
        core: Qwen3Embedder = self.core
        return core

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (no instruction)."""
        return self.embedder.embed_documents(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one query, with the instruction."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.embedder.embed_queries([text], instruction=self.instruction)[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Like :meth:`embed_documents`, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Like :meth:`embed_query`, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_query, text)


class Qwen3Rerank(_RerankerOptions, BaseDocumentCompressor):  # type: ignore[misc]
    """Qwen3-Reranker as a LangChain document compressor.

    Returns copies of the best ``top_n`` documents, best first, each with
    ``metadata["relevance_score"]`` (P("yes"), in [0, 1]); the inputs are never modified. Use it
    in ``ContextualCompressionRetriever``, or in LCEL through :meth:`as_runnable`.

    The instruction comes from, in order: the ``instruction`` argument of
    :meth:`compress_documents` (or the ``"instruction"`` key of :meth:`as_runnable`'s input);
    the run's config metadata under :data:`INSTRUCTION_METADATA_KEY`; the ``instruction``
    field; the model's default.

    Example:
        >>> rerank = Qwen3Rerank(model="Qwen/Qwen3-Reranker-0.6B", top_n=3)  # doctest: +SKIP
        >>> retriever = ContextualCompressionRetriever(  # doctest: +SKIP
        ...     base_compressor=rerank, base_retriever=store.as_retriever(search_kwargs={"k": 20}))
    """

    top_n: int | None = Field(default=3, description="Documents to keep; None keeps all.")
    score_threshold: float | None = Field(
        default=None, description="Drop documents scoring below this, in [0, 1]."
    )

    @property
    def reranker(self) -> Qwen3Reranker:
        """The core reranker behind this adapter."""
        core: Qwen3Reranker = self.core
        return core

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
        results = self.reranker.rerank(
            query,
            [d.page_content for d in documents],
            top_n=self.top_n,
            instruction=instruction,
            score_threshold=self.score_threshold,
        )
        out = []
        for result in results:
            doc = documents[result.index]
            metadata = deepcopy(doc.metadata)
            metadata["relevance_score"] = result.score
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
        """An LCEL step: ``{"query": str, "documents": [...], "instruction": str}`` -> the best.

        ``"instruction"`` is optional; without it the run's config metadata under
        :data:`INSTRUCTION_METADATA_KEY` applies, then the ``instruction`` field.
        """

        def arguments(inputs: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
            if not isinstance(inputs, dict):
                raise TypeError(
                    'Qwen3Rerank.as_runnable() takes {"query": ..., "documents": [...]}, '
                    f"got {type(inputs).__name__}"
                )
            unknown = sorted(set(inputs) - {"query", "documents", "instruction"})
            missing = sorted({"query", "documents"} - set(inputs))
            if unknown or missing:
                raise ValueError(
                    'Qwen3Rerank.as_runnable() takes {"query", "documents", "instruction"}; '
                    f"missing {missing}, unknown {unknown}"
                )
            instruction = inputs.get("instruction")
            if instruction is None:
                instruction = (config.get("metadata") or {}).get(INSTRUCTION_METADATA_KEY)
            return {
                "documents": inputs["documents"],
                "query": inputs["query"],
                "instruction": instruction,
            }

        def run(inputs: dict[str, Any], config: RunnableConfig) -> list[Document]:
            return list(self.compress_documents(**arguments(inputs, config)))

        async def arun(inputs: dict[str, Any], config: RunnableConfig) -> list[Document]:
            return list(await self.acompress_documents(**arguments(inputs, config)))

        return RunnableLambda(run, afunc=arun, name="Qwen3Rerank")
