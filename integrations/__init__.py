"""Adapters for LangChain, LlamaIndex and Chroma; each module needs its framework's extra.

Importing any adapter registers the Chroma embedding function (when chromadb is installed), so
a collection built by ``open_collection`` or the CLI opens in any process that uses an adapter,
for example through ``langchain_chroma.Chroma``. Chroma has no plugin entry point to do this.
"""

from __future__ import annotations

if __name__ != "qwen3_rag.integrations":  # pragma: no cover - only through a wrong sys.path
    raise ImportError("this folder installs as 'qwen3_rag.integrations'; import it under that name")

import importlib.util

try:
    _HAS_CHROMA = importlib.util.find_spec("chromadb") is not None
except (ImportError, ValueError):  # a broken or blocked chromadb: its own import will say why
    _HAS_CHROMA = False
if _HAS_CHROMA:
    from . import chroma as _chroma  # noqa: F401  (registers "qwen3_rag" with Chroma)
