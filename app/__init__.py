"""qwen3-rag: Qwen3-Embedding and Qwen3-Reranker for RAG, exact and fast.

The core runtime is importable from here; framework adapters live in
``qwen3_rag.integrations.{langchain,llamaindex,chroma}`` and are imported only on demand.
"""

from __future__ import annotations

if __name__ != "qwen3_rag":  # pragma: no cover - only reached through a wrong sys.path
    raise ImportError("this folder installs as 'qwen3_rag'; import it under that name")

from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    DEFAULT_TASK,
    ModelLoadError,
    NonFiniteOutputError,
    OutOfMemoryError,
    Qwen3Embedder,
    Qwen3RagError,
    Qwen3Reranker,
    RerankResult,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_RERANKER_MODEL",
    "DEFAULT_TASK",
    "ModelLoadError",
    "NonFiniteOutputError",
    "OutOfMemoryError",
    "Qwen3Embedder",
    "Qwen3RagError",
    "Qwen3Reranker",
    "RerankResult",
    "__version__",
]
