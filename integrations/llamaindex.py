"""LlamaIndex adapters: :class:`Qwen3Embedding` (``BaseEmbedding``) and :class:`Qwen3Rerank`.

Example:
    >>> from qwen3_rag.integrations.llamaindex import Qwen3Embedding, Qwen3Rerank
    >>> Settings.embed_model = Qwen3Embedding(model="Qwen/Qwen3-Embedding-0.6B")  # doctest: +SKIP
    >>> engine = index.as_query_engine(  # doctest: +SKIP
    ...     similarity_top_k=20, node_postprocessors=[Qwen3Rerank(top_n=3)])
"""

from __future__ import annotations

import asyncio
import dataclasses
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
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as e:  # pragma: no cover - exercised in a clean environment test
    raise missing_extra("llama-index-core", "llamaindex") from e

__all__ = ["Qwen3Embedding", "Qwen3QueryBundle", "Qwen3Rerank"]

dispatcher = get_dispatcher(__name__)

#: Metadata key under which the reranker keeps the retriever's score.
RETRIEVAL_SCORE_KEY = "retrieval_score"


@dataclasses.dataclass
class Qwen3QueryBundle(QueryBundle):
    """A ``QueryBundle`` that also carries a reranker instruction for this query only.

    Example:
        >>> bundle = Qwen3QueryBundle("how do I reset it?", instruction="Find manuals")
        >>> engine.query(bundle)  # doctest: +SKIP
    """

    instruction: str | None = None


class Qwen3Embedding(CoreOptions, BaseEmbedding):
    """Qwen3-Embedding as a LlamaIndex ``BaseEmbedding``.

    Queries get the task instruction, texts (documents) never do; vectors are unit length.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: Any = Field(
        default=DEFAULT_EMBEDDING_MODEL, description="Hub id, folder or Qwen3Embedder."
    )
    model_name: str = Field(default="", description="Set from `model`.")
    embed_batch_size: int = Field(default=256, gt=0, description="Texts per core call.")
    dimensions: int | None = None
    instruction: str | None = Field(default=None, description="Query task; None: model default.")

    _embedder: Qwen3Embedder = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Build the core embedder (or reuse the one passed as ``model``)."""
        self._embedder = build_embedder(self.model, self.core_options(EMBEDDER_OPTIONS))
        if not self.model_name:
            self.model_name = self._embedder.model_name

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialisation."""
        return "Qwen3Embedding"

    @property
    def embedder(self) -> Qwen3Embedder:
        """The core embedder behind this adapter."""
        return self._embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed_queries([query], instruction=self.instruction)[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder.embed_documents([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.embed_documents(texts).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class Qwen3Rerank(CoreOptions, BaseNodePostprocessor):
    """Qwen3-Reranker as a LlamaIndex node postprocessor.

    Returns new nodes, best first: ``score`` is the rerank score (P("yes")), the retriever's
    score is kept in ``metadata["retrieval_score"]``; the input nodes are not modified. Emits
    LlamaIndex's ``ReRankStartEvent`` / ``ReRankEndEvent``. The instruction for one query can
    come with a :class:`Qwen3QueryBundle`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: Any = Field(
        default=DEFAULT_RERANKER_MODEL, description="Hub id, folder or Qwen3Reranker."
    )
    top_n: int | None = Field(default=3, ge=1, description="Nodes to keep; None keeps all.")
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    instruction: str | None = Field(default=None, description="None: the model's default.")
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata goes into the scored text."
    )
    keep_retrieval_score: bool = Field(default=True)
    share_prefix: bool | None = None

    _reranker: Qwen3Reranker = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Build the core reranker (or reuse the one passed as ``model``)."""
        self._reranker = build_reranker(self.model, self.core_options(RERANKER_OPTIONS))

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialisation."""
        return "Qwen3Rerank"

    @property
    def reranker(self) -> Qwen3Reranker:
        """The core reranker behind this adapter."""
        return self._reranker

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("Qwen3Rerank needs the query: pass query_bundle or query_str")
        if not nodes:
            return []
        instruction = getattr(query_bundle, "instruction", None) or self.instruction
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=self.top_n or len(nodes),
                model_name=self._reranker.model_name,
            )
        )
        texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        scores = self._reranker.score(query_bundle.query_str, texts, instruction)
        order = sorted(range(len(nodes)), key=lambda i: (-scores[i], i))
        kept = filter_by_threshold(
            [(i, scores[i]) for i in order], self.top_n, self.score_threshold
        )
        out = [self._rescored(nodes[i], s) for i, s in kept]
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out

    def _rescored(self, original: NodeWithScore, score: float) -> NodeWithScore:
        node = original.node.model_copy(deep=True)
        if self.keep_retrieval_score:
            node.metadata[RETRIEVAL_SCORE_KEY] = original.score
            # Bookkeeping, not content: keep it out of what the LLM and embedder read.
            for keys in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
                if RETRIEVAL_SCORE_KEY not in keys:
                    keys.append(RETRIEVAL_SCORE_KEY)
        return NodeWithScore(node=node, score=score)
