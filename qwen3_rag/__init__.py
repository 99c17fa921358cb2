"""qwen3-rag: Qwen3-Embedding and Qwen3-Reranker for RAG, exact and fast.

The core runtime and the clients of a served model (:class:`RemoteEmbedder`,
:class:`RemoteReranker`) are importable from here; framework adapters live in
``qwen3_rag.integrations.{langchain,llamaindex,chroma}`` and are imported only on demand.
"""

from __future__ import annotations

import importlib.util as _importlib_util

# The repository keeps the core in ./core (installed as qwen3_rag.core). Python run from the
# clone's root finds ./qwen3_rag before any installed copy, and only an editable install maps
# ./core into it; any other install is shadowed there, and the import would fail deep inside
# with "No module named 'qwen3_rag.core'". Say what to do instead, in one line.
if _importlib_util.find_spec("qwen3_rag.core") is None:
    raise ImportError(
        f"qwen3_rag is imported from the clone's source folder {__path__[0]!r}, which works "
        "only with an editable install: run `pip install -e .` (or `make venv`) in the clone, "
        "or run Python from outside the clone to use the installed package"
    )

from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    DEFAULT_TASK,
    EmbedderConfig,
    Encoded,
    InvalidInputError,
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
    "Encoded",
    "InvalidInputError",
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
