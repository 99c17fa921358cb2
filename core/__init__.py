"""The Qwen3 model runtime: exact embeddings and reranking scores, no framework imports."""

from __future__ import annotations

if __name__ != "qwen3_rag.core":  # pragma: no cover - only reached through a wrong sys.path
    raise ImportError("this folder installs as 'qwen3_rag.core'; import it under that name")

from .config import EmbedderConfig, RerankerConfig, RuntimeConfig
from .embedder import Qwen3Embedder
from .errors import (
    InvalidInputError,
    ModelLoadError,
    NonFiniteOutputError,
    OutOfMemoryError,
    Qwen3RagError,
)
from .reranker import Qwen3Reranker, RerankResult
from .runtime import Encoded
from .spec import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    DEFAULT_TASK,
    format_query,
    format_rerank_body,
)

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_RERANKER_MODEL",
    "DEFAULT_TASK",
    "EmbedderConfig",
    "Encoded",
    "InvalidInputError",
    "ModelLoadError",
    "NonFiniteOutputError",
    "OutOfMemoryError",
    "Qwen3Embedder",
    "Qwen3RagError",
    "Qwen3Reranker",
    "RerankResult",
    "RerankerConfig",
    "RuntimeConfig",
    "format_query",
    "format_rerank_body",
]
