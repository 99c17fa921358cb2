"""HTTP plumbing the remote clients share: base URL, key, retries with backoff, errors, pickling.

Requests that meet a full queue (503, 429) or a connection failure are retried with exponential
backoff, honouring ``Retry-After``; other failures raise :class:`RemoteError` naming the URL and
the status.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from qwen3_rag.core import Qwen3RagError
from qwen3_rag.core.runtime import check_positive_int

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

#: Environment variable read for the API key when none is given (the server reads it too).
API_KEY_ENV = "QWEN3_RAG_API_KEY"
#: HTTP statuses that mean "busy, try again": a full queue (503) or a rate limit (429).
RETRY_STATUSES = frozenset({429, 503})
#: The servers whose rerank instruction field is known.
SERVERS = ("qwen3-rag", "vllm")


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
