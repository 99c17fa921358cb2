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

Example:
    >>> from qwen3_rag import RemoteEmbedder, RemoteReranker
    >>> emb = RemoteEmbedder("http://127.0.0.1:8000", api_key="secret")  # doctest: +SKIP
    >>> emb.embed_queries(["what is RAG?"]).shape  # doctest: +SKIP
    (1, 1024)
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
import math
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from qwen3_rag.core import EmbedderConfig, Qwen3RagError, RerankerConfig, RerankResult
from qwen3_rag.core.config import build_config
from qwen3_rag.core.reranker import check_ranking, ranked
from qwen3_rag.core.runtime import check_instruction, check_positive_int, check_texts
from qwen3_rag.core.spec import format_query

if TYPE_CHECKING:
    import httpx

__all__ = ["RemoteEmbedder", "RemoteError", "RemoteReranker", "RemoteTimeoutError"]

logger = logging.getLogger(__name__)

#: Environment variable read for the API key when none is given (the server reads it too).
API_KEY_ENV = "QWEN3_RAG_API_KEY"
#: HTTP statuses that mean "busy, try again": a full queue (503) or a rate limit (429).
RETRY_STATUSES = frozenset({429, 503})
#: The servers whose rerank instruction field is known.
SERVERS = ("qwen3-rag", "vllm")
#: Documents per rerank request: Cohere's API takes up to 1,000, and one request for a whole
#: call keeps the scores those of one in-process call.
RERANK_BATCH = 1000
#: Text embedded once to learn the model name and width when they were not given.
_PROBE_TEXT = "probe"


class RemoteError(Qwen3RagError):
    """A request to a model server failed; the message names the URL and the status.

    Attributes:
        url: The URL that was called.
        status: The HTTP status, or None when no response came (connection failure, timeout).
    """

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class RemoteTimeoutError(RemoteError, TimeoutError):
    """The server did not answer within the client's ``timeout``."""


class _RemoteModel:
    """HTTP plumbing shared by the two clients: URL, key, retries, errors, pickling."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        model: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        batch_size: int = 64,
        server: Literal["qwen3-rag", "vllm"] = "qwen3-rag",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = _check_base_url(base_url)
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ValueError("api_key must be a non-empty str or None")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ValueError(f"model must be a non-empty str or None, got {model!r}")
        for name, value in (("timeout", timeout), ("backoff", backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(max_backoff, bool) or not isinstance(max_backoff, (int, float)):
            raise ValueError(f"max_backoff must be a number of seconds, got {max_backoff!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if server not in SERVERS:
            raise ValueError(f"server={server!r}; use one of {', '.join(SERVERS)}")
        self._api_key = api_key
        self._model = model
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.server = server
        self._headers = dict(headers or {})
        self._served_model: str | None = None
        self._client = _new_client(self.timeout, self._api_key, self._headers)
        self._lock = threading.Lock()

    # -- identity --------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The served model's name: ``model`` if given, else what the server reports.

        Asking it without a ``model`` sends one small request (then remembered).
        """
        if self._model is not None:
            return self._model
        if self._served_model is None:
            self._probe()
        return self._served_model or self.base_url

    def _probe(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        # Never the key.
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self._model!r})"

    # -- HTTP ------------------------------------------------------------------------------
    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        """POST ``payload`` as JSON, retrying busy answers and connection failures.

        Raises:
            RemoteTimeoutError: If no answer came within ``timeout``.
            RemoteError: For a refused request (the server's message included), a server
                still busy or unreachable after ``max_retries`` retries, or a non-JSON answer.
        """
        import httpx

        url = self.base_url + path
        attempt = 0
        while True:
            try:
                response = self._client.post(url, json=payload)
            except httpx.TimeoutException as e:
                # A connect timeout is a connection failure; a read timeout is a server that
                # took too long, and sending the work again would only add to its load.
                if isinstance(e, httpx.ConnectTimeout) and attempt < self.max_retries:
                    attempt = self._wait(attempt, None, url, "connection timed out")
                    continue
                raise RemoteTimeoutError(
                    f"{url} did not answer within timeout={self.timeout:g} s "
                    f"({type(e).__name__}); raise timeout= or lighten the request",
                    url,
                ) from e
            except httpx.TransportError as e:
                if attempt < self.max_retries:
                    attempt = self._wait(attempt, None, url, f"{type(e).__name__}: {e}")
                    continue
                raise RemoteError(
                    f"cannot reach {url} after {attempt + 1} attempt(s): "
                    f"{type(e).__name__}: {e or 'connection failed'}",
                    url,
                ) from e
            status = response.status_code
            if status in RETRY_STATUSES and attempt < self.max_retries:
                attempt = self._wait(attempt, response, url, f"HTTP {status}")
                continue
            if status >= 400:
                raise RemoteError(_refusal(url, response, attempt), url, status)
            try:
                return response.json()
            except ValueError as e:
                raise RemoteError(
                    f"{url} answered HTTP {status} with a body that is not JSON: "
                    f"{response.text[:200]!r}",
                    url,
                    status,
                ) from e

    def _wait(self, attempt: int, response: httpx.Response | None, url: str, why: str) -> int:
        """Sleep before retry ``attempt + 1``: ``Retry-After`` if given, else backoff."""
        delay = self.backoff * 2**attempt * (0.5 + random.random() / 2)  # jitter: no herds
        hinted = _retry_after(response) if response is not None else None
        if hinted is not None:
            delay = hinted
        delay = min(delay, self.max_backoff)
        logger.warning(
            "%s: %s; retry %d of %d in %.2f s", url, why, attempt + 1, self.max_retries, delay
        )
        time.sleep(delay)
        return attempt + 1

    def close(self) -> None:
        """Close the HTTP connections (the object reopens them if used again)."""
        with self._lock:
            self._client.close()
            self._client = _new_client(self.timeout, self._api_key, self._headers)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pickling: the connection pool and lock stay behind, the rest travels ---------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_client"], state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = _new_client(self.timeout, self._api_key, self._headers)
        self._lock = threading.Lock()

    def _chunks(self, n: int) -> range:
        return range(0, n, self.batch_size)

    def _with_model(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self._model is not None:
            payload["model"] = self._model
        return payload


class RemoteEmbedder(_RemoteModel):
    r"""Qwen3-Embedding on a server (``qwen3-rag serve`` or vLLM), used like a Qwen3Embedder.

    Queries are sent as ``"Instruct: {task}\\nQuery:{query}"`` (formatted here), documents as
    they are; vectors come back as base64 float32, so they equal the server's bit for bit
    (against ``qwen3-rag serve``: the in-process :class:`~qwen3_rag.Qwen3Embedder`'s).

    Args:
        base_url: The server, e.g. ``"http://127.0.0.1:8000"`` (a trailing ``/v1`` is accepted).
        api_key: Sent as ``Authorization: Bearer``; None reads ``QWEN3_RAG_API_KEY``.
        model: The ``model`` field of requests; None sends none (the server's only embedding
            model) and :attr:`model_name` asks the server.
        dimensions: Output size (MRL), sent as ``dimensions``; None keeps the server's.
        instruction: Default task for queries; ``""`` sends queries without one.
        timeout: Seconds to wait for each answer.
        max_retries: Retries of a request answered 503/429 or failing to connect.
        backoff: First retry delay in seconds, doubled each retry (``Retry-After`` wins).
        max_backoff: Longest wait between retries, in seconds.
        batch_size: Texts per request; longer lists are split.
        server: ``"qwen3-rag"`` or ``"vllm"`` (only the reranker's instruction field differs).
        headers: Extra HTTP headers for every request.

    Raises:
        ValueError: For a URL that is not http(s), or a bad option (the message names it).
        ImportError: If httpx is not installed.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        dimensions: int | None = None,
        instruction: str | None = None,
        **options: Any,
    ) -> None:
        given = {"dimensions": dimensions, "instruction": instruction}
        #: What this client knows of the options that decide the vectors (other fields keep
        #: their defaults: the server's own settings are not reported over these APIs).
        self.config: EmbedderConfig = build_config(
            EmbedderConfig, None, {k: v for k, v in given.items() if v is not None}
        )
        self.dimensions = self.config.dimensions
        self.instruction = self.config.instruction
        self._width: int | None = None
        super().__init__(base_url, api_key, **options)

    @property
    def output_dimensions(self) -> int:
        """Length of the returned vectors (without ``dimensions``, asked of the server once)."""
        if self.dimensions is not None:
            return self.dimensions
        if self._width is None:
            self._probe()
        assert self._width is not None
        return self._width

    def embed_queries(self, texts: list[str], instruction: str | None = None) -> np.ndarray:
        """Embed search queries, each prefixed with the task instruction.

        Args:
            texts: The queries.
            instruction: Task for this call; None uses :attr:`instruction`, ``""`` none.

        Returns:
            float32 array ``[len(texts), output_dimensions]`` of unit vectors, in input order.

        Raises:
            TypeError: If ``texts`` is not a list of strings or ``instruction`` not a string.
            RemoteError: If the server refuses or cannot be reached.
        """
        texts = check_texts(texts, "texts")
        task = self.instruction if instruction is None else check_instruction(instruction)
        return self._embed([format_query(t, task) for t in texts])

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Embed documents as they are (no instruction).

        Returns:
            float32 array ``[len(texts), output_dimensions]`` of unit vectors, in input order.

        Raises:
            TypeError: If ``texts`` is not a list of strings.
            RemoteError: If the server refuses or cannot be reached.
        """
        return self._embed(check_texts(texts, "texts"))

    def _probe(self) -> None:
        self._embed([_PROBE_TEXT])

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.output_dimensions), dtype=np.float32)
        parts = [self._request(texts[i : i + self.batch_size]) for i in self._chunks(len(texts))]
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if self._width is None:
            self._width = int(out.shape[1])
        return out

    def _request(self, texts: list[str]) -> np.ndarray:
        payload: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        if self.dimensions is not None:
            payload["dimensions"] = self.dimensions
        answer = self._post("/v1/embeddings", self._with_model(payload))
        url = self.base_url + "/v1/embeddings"
        try:
            items = sorted(answer["data"], key=lambda item: item["index"])
            if [item["index"] for item in items] != list(range(len(texts))):
                raise ValueError(f"indices {[item['index'] for item in items]}")
            rows = [_vector(item["embedding"]) for item in items]
            out = np.stack(rows)
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise RemoteError(
                f"{url} sent a malformed embeddings answer for {len(texts)} input(s): "
                f"{type(e).__name__}: {e}",
                url,
            ) from e
        if self.dimensions is not None and out.shape[1] != self.dimensions:
            raise RemoteError(
                f"{url} returned {out.shape[1]} dimensions, not dimensions={self.dimensions}",
                url,
            )
        if isinstance(answer.get("model"), str) and self._served_model is None:
            self._served_model = answer["model"]
        return out


class RemoteReranker(_RemoteModel):
    """Qwen3-Reranker on a server (``qwen3-rag serve`` or vLLM), used like a Qwen3Reranker.

    Scores come from Cohere's ``/v2/rerank``; :meth:`rerank` sorts, filters and cuts them here,
    exactly as the in-process reranker does (ties keep input order).

    Args:
        base_url: The server, e.g. ``"http://127.0.0.1:8000"`` (a trailing ``/v1`` is accepted).
        api_key: Sent as ``Authorization: Bearer``; None reads ``QWEN3_RAG_API_KEY``.
        model: The ``model`` field of requests; None sends none.
        instruction: Default instruction, sent with every request (``instruction`` field, or
            ``chat_template_kwargs`` with ``server="vllm"``); None means the library's default.
        batch_size: Documents per request; longer lists are split. Each request shares its
            query's prefix among its own documents, so a split call may differ from an unsplit
            one in the last bits of a score (as an in-process call split the same way would).
        **options: ``timeout``, ``max_retries``, ``backoff``, ``max_backoff``, ``server``,
            ``headers``, as for :class:`RemoteEmbedder`.

    Raises:
        ValueError: For a URL that is not http(s), or a bad option (the message names it).
        ImportError: If httpx is not installed.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        instruction: str | None = None,
        batch_size: int = RERANK_BATCH,
        **options: Any,
    ) -> None:
        given = {} if instruction is None else {"instruction": instruction}
        #: What this client knows of the options that decide the scores.
        self.config: RerankerConfig = build_config(RerankerConfig, None, given)
        self.instruction = self.config.instruction
        super().__init__(base_url, api_key, batch_size=batch_size, **options)

    def score(
        self, query: str, documents: list[str], instruction: str | None = None
    ) -> list[float]:
        """Relevance of each document to ``query``, in input order.

        Args:
            query: The query.
            documents: Texts to score.
            instruction: Instruction for this call; None uses :attr:`instruction`.

        Returns:
            P("yes") for each document, floats in [0, 1].

        Raises:
            TypeError: If ``query`` or ``instruction`` is not a string, or ``documents`` is not
                a list of strings.
            RemoteError: If the server refuses or cannot be reached.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        docs = check_texts(documents, "documents")
        task = self.instruction if instruction is None else check_instruction(instruction)
        scores: list[float] = []
        for start in self._chunks(len(docs)):
            scores += self._request(query, docs[start : start + self.batch_size], task)
        return scores

    def rerank(
        self,
        query: str,
        documents: list[str],
        top_n: int | None = None,
        instruction: str | None = None,
        score_threshold: float | None = None,
    ) -> list[RerankResult]:
        """Documents sorted by relevance, best first; ties keep input order.

        Args:
            query: The query.
            documents: Texts to rank.
            top_n: Keep this many results; None keeps all.
            instruction: Instruction for this call; None uses :attr:`instruction`.
            score_threshold: Drop results scoring below this (before ``top_n`` applies).

        Returns:
            :class:`~qwen3_rag.RerankResult` items with ``index``, ``score`` and ``document``.

        Raises:
            ValueError: If ``top_n`` is not a positive int or None, or ``score_threshold`` is
                not a number in [0, 1] or None.
            TypeError: As :meth:`score`.
            RemoteError: If the server refuses or cannot be reached.
        """
        check_ranking(top_n, score_threshold)
        return ranked(self.score(query, documents, instruction), documents, top_n, score_threshold)

    def _probe(self) -> None:
        self._request(_PROBE_TEXT, [_PROBE_TEXT], self.instruction)

    def _request(self, query: str, documents: list[str], task: str) -> list[float]:
        payload: dict[str, Any] = {
            "query": query,
            "documents": documents,
            "top_n": len(documents),
            "return_documents": False,
        }
        if self.server == "vllm":
            payload["chat_template_kwargs"] = {"instruction": task}
        else:
            payload["instruction"] = task
        answer = self._post("/v2/rerank", self._with_model(payload))
        url = self.base_url + "/v2/rerank"
        scores: list[float | None] = [None] * len(documents)
        try:
            for item in answer["results"]:
                index, value = item["index"], item["relevance_score"]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"relevance_score {value!r}")
                if scores[index] is not None or index < 0:
                    raise ValueError(f"index {index} twice or negative")
                scores[index] = float(value)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise RemoteError(
                f"{url} sent a malformed rerank answer for {len(documents)} document(s): "
                f"{type(e).__name__}: {e}",
                url,
            ) from e
        missing = [i for i, s in enumerate(scores) if s is None]
        if missing:
            raise RemoteError(f"{url} returned no score for documents {missing[:10]}", url)
        if isinstance(answer.get("model"), str) and self._served_model is None:
            self._served_model = answer["model"]
        return [s for s in scores if s is not None]


def _check_base_url(base_url: object) -> str:
    """``base_url`` without a trailing slash or ``/v1``; it must be an http(s) URL."""
    if not isinstance(base_url, str):
        raise TypeError(f"base_url must be a str, got {type(base_url).__name__}")
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
    # OpenAI clients take ".../v1" as their base URL; the same string works here.
    return url.removesuffix("/v1")


def _new_client(timeout: float, api_key: str | None, headers: Mapping[str, str]) -> httpx.Client:
    try:
        import httpx
    except ImportError as e:
        raise ImportError(
            'httpx is missing; install the client extra: pip install "qwen3-rag[client]"'
        ) from e
    all_headers = dict(headers)
    if api_key is not None:
        all_headers["Authorization"] = f"Bearer {api_key}"
    return httpx.Client(timeout=timeout, headers=all_headers)


def _vector(embedding: Any) -> np.ndarray:
    """A float32 vector from base64 (little-endian float32 bytes) or a list of floats."""
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding, validate=True)
        if len(raw) % 4:
            raise ValueError(f"{len(raw)} base64 bytes is not a whole number of float32 values")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(embedding, list):
        # A float32 printed as JSON reads back as the same float32.
        return np.asarray(embedding, dtype=np.float32)
    raise TypeError(f"embedding is a {type(embedding).__name__}, not base64 or a list")


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _refusal(url: str, response: httpx.Response, attempt: int) -> str:
    """One line naming the URL, the status and the server's own message."""
    status = response.status_code
    message = _server_message(response)
    if status in (401, 403):
        return (
            f"{url} refused the request (HTTP {status}): {message}; give the server's key as "
            f"api_key= or in {API_KEY_ENV}"
        )
    if status in RETRY_STATUSES:
        return f"{url} was still busy (HTTP {status}) after {attempt} retries: {message}"
    return f"{url} answered HTTP {status}: {message}"


def _server_message(response: httpx.Response) -> str:
    """The error text of an OpenAI, Cohere, TEI or FastAPI error body, else the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "error", "detail"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:300]
