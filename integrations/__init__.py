"""Adapters for LangChain, LlamaIndex and Chroma; each module needs its framework's extra."""

from __future__ import annotations

if __name__ != "qwen3_rag.integrations":  # pragma: no cover - only through a wrong sys.path
    raise ImportError("this folder installs as 'qwen3_rag.integrations'; import it under that name")
