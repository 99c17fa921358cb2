"""LlamaIndex adapters: :class:`Qwen3Embedding` (``BaseEmbedding``) and :class:`Qwen3Rerank`.

Every option of :class:`~qwen3_rag.core.EmbedderConfig` / :class:`~qwen3_rag.core.RerankerConfig`
is a field (None: the core default). Fields are validated on assignment and changing one
rebuilds the core object; ``to_dict()`` names the model and every option that decides the
output, as in effect, so ingestion caches never mix configurations.

Example:
    >>> from qwen3_rag.integrations.llamaindex import Qwen3Embedding, Qwen3Rerank
    >>> Settings.embed_model = Qwen3Embedding(model="Qwen/Qwen3-Embedding-0.6B")  # doctest: +SKIP
    >>> engine = index.as_query_engine(  # doctest: +SKIP
    ...     similarity_top_k=20, node_postprocessors=[Qwen3Rerank(top_n=3)])
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    Qwen3Embedder,
    Qwen3Reranker,
    format_query,
)
from qwen3_rag.remote import RemoteEmbedder

from ._common import missing_extra, options_model

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import ConfigDict, Field
    from llama_index.core.callbacks import CBEventType, EventPayload
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

if TYPE_CHECKING:  # the option fields are derived from the core configs at import time
    _EmbedderOptions = Any
    _RerankerOptions = Any
else:
    _EmbedderOptions = options_model(
        "EmbedderOptions",
        Qwen3Embedder,
        DEFAULT_EMBEDDING_MODEL,
        "Hub id, local folder, or a built Qwen3Embedder (model_name is the same thing).",
    )
    _RerankerOptions = options_model(
        "RerankerOptions",
        Qwen3Reranker,
        DEFAULT_RERANKER_MODEL,
        "Hub id, local folder, or a built Qwen3Reranker.",
    )


@dataclasses.dataclass
class Qwen3QueryBundle(QueryBundle):
    """A ``QueryBundle`` that also carries a reranker instruction for this query only.

    ``instruction=None`` keeps the reranker's instruction; ``""`` means none.

    Example:
        >>> bundle = Qwen3QueryBundle("how do I reset it?", instruction="Find manuals")
        >>> engine.query(bundle)  # doctest: +SKIP
    """

    instruction: str | None = None


class Qwen3Embedding(_EmbedderOptions, BaseEmbedding):  # type: ignore[misc]
    r"""Qwen3-Embedding as a LlamaIndex ``BaseEmbedding``.

    Queries get the task instruction, texts (documents) never do; vectors are unit length.
    ``model`` and ``model_name`` both name the model (``model_name="/path"`` works as in
    ``HuggingFaceEmbedding``; giving two different ones is an error), and ``model_name`` always
    reports the model that runs. With an ``embeddings_cache``, a query is cached under the exact
    text the model embeds (``"Instruct: …\\nQuery:…"``), so it never gets a document's vector.
    """

    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        protected_namespaces=(),
        validate_assignment=True,
    )

    embed_batch_size: int = Field(default=256, gt=0, description="Texts per core call.")
    # LlamaIndex draws bars only when asked (``show_progress=True`` on its calls, default False);
    # so does the core here, the weight loading's included, unless ``show_progress`` is set.
    unset_options: ClassVar[Mapping[str, Any]] = {"show_progress": False}

    def __init__(self, **data: Any) -> None:
        # ``model_name`` is the model, as in LlamaIndex's own embeddings. Mapped here, not in
        # a validator: validators also run on every later assignment.
        name = data.pop("model_name", None)
        if name not in (None, ""):
            model = data.get("model")
            # A built model (in-process or a server's client) names itself.
            running = (
                model.model_name if isinstance(model, (Qwen3Embedder, RemoteEmbedder)) else model
            )
            if model is None:
                data["model"] = name
            elif not (
                isinstance(running, (str, os.PathLike))
                and isinstance(name, (str, os.PathLike))
                and os.fspath(running) == os.fspath(name)
            ):
                raise ValueError(
                    f"model={running!r} and model_name={name!r} name different models; "
                    "give one of them (model_name is the same as model)"
                )
        super().__init__(**data)

    def __setattr__(self, name: str, value: Any) -> None:
        # model_name is the model: setting it switches the model, like model= does.
        super().__setattr__("model" if name == "model_name" else name, value)

    def _sync(self) -> None:
        super()._sync()
        self.__dict__["model_name"] = self._core.model_name

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialisation."""
        return "Qwen3Embedding"

    @property
    def embedder(self) -> Qwen3Embedder:
        """The core embedder behind this adapter."""
        core: Qwen3Embedder = self.core
        return core

    def _task(self) -> str:
        return self.embedder.instruction if self.instruction is None else self.instruction

    def get_query_embedding(self, query: str) -> list[float]:
        """Embed a query (with the instruction); cached under its model input, if cached."""
        if self.embeddings_cache is None:
            return list(super().get_query_embedding(query))
        # LlamaIndex's cache keys by text alone; the model input keeps queries and documents
        # apart and gives the same vector (a document's text is its model input).
        return list(self.get_text_embedding(format_query(query, self._task())))

    async def aget_query_embedding(self, query: str) -> list[float]:
        """Async :meth:`get_query_embedding`."""
        if self.embeddings_cache is None:
            return list(await super().aget_query_embedding(query))
        return list(await self.aget_text_embedding(format_query(query, self._task())))

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.embedder.embed_queries([query], instruction=self.instruction)[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.embedder.embed_documents([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed_documents(texts).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class Qwen3Rerank(_RerankerOptions, BaseNodePostprocessor):  # type: ignore[misc]
    """Qwen3-Reranker as a LlamaIndex node postprocessor.

    Returns new nodes, best first: ``score`` is the rerank score (P("yes")), the retriever's
    score is kept in ``metadata["retrieval_score"]``; the input nodes are not modified. Emits
    LlamaIndex's ``ReRankStartEvent`` / ``ReRankEndEvent`` and the legacy callback event
    ``CBEventType.RERANKING``. The instruction for one query can come with a
    :class:`Qwen3QueryBundle`.
    """

    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        protected_namespaces=(),
        validate_assignment=True,
    )

    top_n: int | None = Field(default=3, description="Nodes to keep; None keeps all.")
    unset_options: ClassVar[Mapping[str, Any]] = {"show_progress": False}  # as Qwen3Embedding
    score_threshold: float | None = Field(
        default=None, description="Drop nodes scoring below this, in [0, 1]."
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata goes into the scored text."
    )
    keep_retrieval_score: bool = Field(default=True)

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialisation."""
        return "Qwen3Rerank"

    @property
    def reranker(self) -> Qwen3Reranker:
        """The core reranker behind this adapter."""
        core: Qwen3Reranker = self.core
        return core

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("Qwen3Rerank needs the query: pass query_bundle or query_str")
        if not nodes:
            return []
        instruction = getattr(query_bundle, "instruction", None)
        if instruction is None:  # "" is an instruction too: none at all
            instruction = self.instruction
        reranker = self.reranker
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=self.top_n or len(nodes),
                model_name=reranker.model_name,
            )
        )
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: reranker.model_name,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n or len(nodes),
            },
        ) as event:
            texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
            results = reranker.rerank(
                query_bundle.query_str,
                texts,
                top_n=self.top_n,
                instruction=instruction,
                score_threshold=self.score_threshold,
            )
            out = [self._rescored(nodes[r.index], r.score) for r in results]
            event.on_end(payload={EventPayload.NODES: out})
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
