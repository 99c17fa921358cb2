r"""Clients for a model served over HTTP, with the methods of the in-process core objects.

:class:`RemoteEmbedder` and :class:`RemoteReranker` have the methods and return types of
:class:`~qwen3_rag.Qwen3Embedder` / :class:`~qwen3_rag.Qwen3Reranker`, so code written for one
runs on the other, and every adapter (LangChain, LlamaIndex, Chroma) takes them as ``model=``.

They speak the APIs that ``qwen3-rag serve`` and vLLM both serve:

- embeddings: OpenAI ``POST /v1/embeddings`` with ``encoding_format="base64"`` (float32 bytes,
  bit-exact). Queries are formatted here, ``"Instruct: {task}\nQuery:{query}"``, and sent as
  plain input: the vLLM convention, which ``qwen3-rag serve`` answers with the exact query vector
  too. No extension field is needed, so a vLLM server cannot silently ignore one.
- reranking: Cohere ``POST /v2/rerank``. The instruction travels as the ``instruction`` field
  (``qwen3-rag serve``) or, with ``server="vllm"``, as ``chat_template_kwargs`` for vLLM's Qwen3
  reranker chat template.

HTTP goes through ``httpx`` (``pip install "qwen3-rag[client]"``). Requests that meet a full
queue (503, 429) or a connection failure are retried with exponential backoff, honouring
``Retry-After``; other failures raise :class:`RemoteError` naming the URL and the status.

The clients and their wire formats are in :mod:`.clients`, the HTTP plumbing they share
(retries, errors, pickling) in :mod:`.transport`.

Example:
    >>> from qwen3_rag import RemoteEmbedder, RemoteReranker
    >>> emb = RemoteEmbedder("http://127.0.0.1:8000", api_key="secret")  # doctest: +SKIP
    >>> emb.embed_queries(["what is RAG?"]).shape  # doctest: +SKIP
    (1, 1024)
"""

from __future__ import annotations

from .clients import RemoteEmbedder, RemoteReranker
from .transport import RemoteError, RemoteTimeoutError

__all__ = ["RemoteEmbedder", "RemoteError", "RemoteReranker", "RemoteTimeoutError"]
