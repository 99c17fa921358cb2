"""The two clients and their wire formats.

:class:`RemoteEmbedder` speaks OpenAI's ``POST /v1/embeddings`` (base64 float32 vectors);
:class:`RemoteReranker` speaks Cohere's ``POST /v2/rerank`` and ranks the scores here.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from qwen3_rag.core import EmbedderConfig, RerankerConfig, RerankResult
from qwen3_rag.core.config import build_config
from qwen3_rag.core.reranker import check_ranking, ranked
from qwen3_rag.core.runtime import check_instruction, check_texts
from qwen3_rag.core.spec import DEFAULT_TASK, format_query

from .transport import RemoteError, _RemoteModel

#: Documents per rerank request: Cohere's API takes up to 1,000, and one request for a whole
#: call keeps the scores those of one in-process call.
RERANK_BATCH = 1000
#: Text embedded once to learn the model name and width when they were not given.
_PROBE_TEXT = "probe"


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
        instruction: Default task for queries; ``""`` sends queries without one; None: the
            model card's web-search task (the server's own is not reported: a server of a
            fine-tuned model needs the task it was trained with passed here).
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
        # The server does not report its instruction over these APIs: without one, queries
        # take the model card's task (a fine-tuned server needs its task passed here).
        task = DEFAULT_TASK if instruction is None else instruction
        given = {"dimensions": dimensions, "instruction": task}
        #: What this client knows of the options that decide the vectors (other fields keep
        #: their defaults: the server's own settings are not reported over these APIs).
        self.config: EmbedderConfig = build_config(
            EmbedderConfig, None, {k: v for k, v in given.items() if v is not None}
        )
        self.dimensions = self.config.dimensions
        self.instruction: str = task
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
