"""qwen3-rag: Qwen3-Embedding and Qwen3-Reranker for RAG, exact and fast.

The core runtime and the clients of a served model (:class:`RemoteEmbedder`,
:class:`RemoteReranker`) are importable from here; framework adapters live in
``qwen3_rag.integrations.{langchain,llamaindex,chroma}`` and are imported only on demand.
"""

from __future__ import annotations

from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    DEFAULT_TASK,
    EmbedderConfig,
    ModelLoadError,
    NonFiniteOutputError,
    OutOfMemoryError,
    Qwen3Embedder,
    Qwen3RagError,
    Qwen3Reranker,
    RerankerConfig,
    RerankResult,
)
from qwen3_rag.remote import RemoteEmbedder, RemoteError, RemoteReranker

#: The installed package's version.
__version__ = "0.1.0"

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_RERANKER_MODEL",
    "DEFAULT_TASK",
    "EmbedderConfig",
    "ModelLoadError",
    "NonFiniteOutputError",
    "OutOfMemoryError",
    "Qwen3Embedder",
    "Qwen3RagError",
    "Qwen3Reranker",
    "RemoteEmbedder",
    "RemoteError",
    "RemoteReranker",
    "RerankResult",
    "RerankerConfig",
    "__version__",
]
