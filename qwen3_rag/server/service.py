"""The model work behind every API: one service object over the core's public interface.

Routers parse a request, call the service, and shape its answer; the service checks the request's
size, tokenizes (in the request's thread), queues the ids on the model's worker
(:mod:`.workers`), and waits, dropping the work if the client leaves or time runs out. It knows
nothing of any API's wire format.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from starlette.concurrency import run_in_threadpool

from qwen3_rag.core import Encoded, InvalidInputError, Qwen3Embedder, Qwen3Reranker
from qwen3_rag.core.config import check_dimensions
from qwen3_rag.core.tokenization import replace_surrogates

from .errors import ApiError
from .metrics import Metrics
from .workers import (
    EmbedJob,
    EmbedWorker,
    Job,
    JobCancelledError,
    ModelWorker,
    QueueFullError,
    RerankJob,
    RerankWorker,
    ShuttingDownError,
)


@dataclass(frozen=True)
class ServerOptions:
    """Limits and switches of the server (``qwen3-rag serve`` flags of the same names).

    Attributes:
        api_key: Required as ``Authorization: Bearer <key>`` on every endpoint but ``/health``,
            ``/metrics`` and the search page's files; None leaves the server open.
        max_body_bytes: Largest request body; larger ones get 413.
        max_inputs: Most texts or documents in one request.
        max_request_tokens: Most tokens one request may make the model read.
        timeout: Seconds a request may wait for its result; then 504 and its work is dropped.
        max_queue: Requests each model holds at once (running included); more get 503 with
            ``Retry-After``.
        max_batch_requests: Most requests whose texts share one forward; 1 disables batching
            across requests.
        retry_after: Seconds the 503 answer's ``Retry-After`` suggests.
        read_timeout: Seconds a client may take to send its request body; then 408.
        cors_origins: Origins a browser page may call the API from (CORS); none by default.
        served_model_name: The embedding model's name in answers; None: its hub id, or the
            folder's name for a local folder (never the path, unless given here).
        reranker_served_model_name: The same for the reranker.
        rerank_documents: How ``/rerank`` returns a document with ``return_documents``:
            ``"object"`` (``{"text": ...}``: vLLM's, Cohere's and Jina's shape) or
            ``"string"`` (Infinity's). LiteLLM's ``hosted_vllm/`` and ``infinity/`` post the
            same body to that path and each reads only its own server's shape.
    """

    api_key: str | None = None
    max_body_bytes: int = 16 * 2**20
    max_inputs: int = 2048
    max_request_tokens: int = 1_000_000
    timeout: float = 300.0
    max_queue: int = 256
    max_batch_requests: int = 64
    retry_after: int = 1
    read_timeout: float = 60.0
    cors_origins: tuple[str, ...] = ()
    served_model_name: str | None = None
    reranker_served_model_name: str | None = None
    rerank_documents: Literal["object", "string"] = "object"


@dataclass
class Models:
    """What the app serves; any part may be None, but not both models.

    Attributes:
        embedder: Serves the embedding endpoints (and search's query vector).
        reranker: Serves the rerank endpoints.
        collection: A Chroma collection embedded with ``embedder``: enables ``/v1/search``
            and the search page.
        collection_name: Shown on the search page.
    """

    embedder: Qwen3Embedder | None = None
    reranker: Qwen3Reranker | None = None
    collection: Any = None
    collection_name: str | None = None


def public_name(model: str) -> str:
    """A model's name for answers: a hub id as is, a local folder by its own name only."""
    if os.path.isabs(model) or os.path.isdir(model):
        return os.path.basename(os.path.normpath(model)) or model
    return model


#: Returns True once the client has gone (the request's ``is_disconnected``).
Disconnected = Callable[[], Awaitable[bool]]


@dataclass
class Embedded:
    """Vectors of one request and the tokens the model read for them."""

    vectors: np.ndarray
    tokens: int


@dataclass
class Scored:
    """P(yes) and log-odds per document, the tokens read and how many pairs were cut."""

    scores: list[float]
    log_odds: list[float]
    tokens: int
    truncated: int


@dataclass
class ModelService:
    """The loaded models, their workers and the metrics; what every router calls.

    Args:
        options: The server's limits.
    """

    options: ServerOptions
    metrics: Metrics = field(default_factory=Metrics)
    models: Models | None = None
    embed_worker: EmbedWorker | None = None
    rerank_worker: RerankWorker | None = None
    load_error: BaseException | None = None

    def start(self, models: Models) -> None:
        """Start one worker per model; the service answers from now on."""
        if models.embedder is None and models.reranker is None:
            raise ValueError("the server needs an embedding model, a reranker, or both")
        o, m = self.options, self.metrics
        kwargs: dict[str, Any] = dict(
            max_queue=o.max_queue,
            max_batch_requests=o.max_batch_requests,
            on_batch=m.on_batch,
            on_depth=m.on_depth,
        )
        if models.embedder is not None:
            self.embed_worker = EmbedWorker(models.embedder, **kwargs)
        if models.reranker is not None:
            self.rerank_worker = RerankWorker(models.reranker, **kwargs)
        self.models = models

    def load_in_background(
        self,
        load: Callable[[], Models],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Run ``load`` in a thread and :meth:`start` with its models (``/health`` waits)."""

        def run() -> None:
            try:
                self.start(load())
            except BaseException as e:
                self.load_error = e
                if on_error is not None:
                    on_error(e)

        threading.Thread(target=run, name="qwen3-rag-load", daemon=True).start()

    def workers(self) -> list[ModelWorker]:
        """The running workers (closed at shutdown)."""
        return [w for w in (self.embed_worker, self.rerank_worker) if w is not None]

    # -- what is served --------------------------------------------------------------------
    def ready(self) -> Models:
        """The models, or 503 while they load."""
        if self.models is None:
            raise ApiError(503, "the models are still loading", headers={"Retry-After": "5"})
        return self.models

    def embedder(self) -> Qwen3Embedder:
        """The embedding model, or 404 if none is served."""
        self.ready()
        if self.embed_worker is None:
            raise ApiError(
                404, "this server has no embedding model (start it with --embedding-model)"
            )
        return self.embed_worker.embedder

    def reranker(self) -> Qwen3Reranker:
        """The reranker, or 404 if none is served."""
        self.ready()
        if self.rerank_worker is None:
            raise ApiError(404, "this server has no reranker (start it with --reranker-model)")
        return self.rerank_worker.reranker

    def collection(self) -> Any:
        """The Chroma collection, or 404 if none is served."""
        collection = self.ready().collection
        if collection is None:
            raise ApiError(404, "no collection is served (start with --db or --chroma-url)")
        return collection

    def model_name(self, kind: str) -> str:
        """The name answers give the ``embedding`` or ``reranker`` model."""
        given = (
            self.options.served_model_name
            if kind == "embedding"
            else self.options.reranker_served_model_name
        )
        if given is not None:
            return given
        models = self.models
        model = (
            None
            if models is None
            else (models.embedder if kind == "embedding" else models.reranker)
        )
        return kind if model is None else public_name(model.model_name)

    def served_kinds(self) -> list[str]:
        """``embedding`` and/or ``reranker``, as loaded."""
        return [
            kind
            for kind, worker in (("embedding", self.embed_worker), ("reranker", self.rerank_worker))
            if worker is not None
        ]

    # -- checks ----------------------------------------------------------------------------
    def check_count(self, items: list[Any], field: str) -> None:
        """422 for no items or more than ``--max-inputs``."""
        if not items:
            raise ApiError(422, f"{field}: must not be empty", param=field)
        limit = self.options.max_inputs
        if len(items) > limit:
            raise ApiError(
                422,
                f"{field}: {len(items)} items, more than this server's limit of {limit} "
                "(--max-inputs)",
                param=field,
            )

    def check_dimensions(self, dimensions: int | None, field: str) -> None:
        """422 for an output length this model cannot give (the core's one range check)."""
        if dimensions is None:
            return
        try:
            check_dimensions(
                dimensions, self.embedder().output_dimensions, self.model_name("embedding")
            )
        except InvalidInputError as e:
            raise ApiError(422, f"{field}: {e}", param=field) from e

    def _check_tokens(self, rows: list[list[int]], field: str) -> int:
        tokens = sum(len(r) for r in rows)
        limit = self.options.max_request_tokens
        if tokens > limit:
            raise ApiError(
                422,
                f"{field}: the request makes {tokens} tokens, more than this server's limit of "
                f"{limit} (--max-request-tokens)",
                param=field,
            )
        return tokens

    # -- the work --------------------------------------------------------------------------
    async def encode(self, texts: list[str], task: str | None, field: str) -> Encoded:
        """Texts as the embedding model sees them: queries with ``task``, else documents."""
        emb = self.embedder()
        self.check_count(texts, field)
        try:
            if task is None:
                return await run_in_threadpool(emb.encode_documents, texts)
            return await run_in_threadpool(emb.encode_queries, texts, task)
        except ValueError as e:  # an instruction that leaves no room for the query
            raise ApiError(422, f"instruction: {e}", param="instruction") from e

    async def embed(
        self,
        texts: list[str],
        disconnected: Disconnected,
        *,
        task: str | None,
        dimensions: int | None,
        field: str,
        dimensions_field: str = "dimensions",
        refuse_cut: Callable[[int], ApiError] | None = None,
        normalize: bool = True,
    ) -> Embedded:
        """Embed ``texts`` (as queries with instruction ``task`` unless None).

        Args:
            texts: The texts.
            disconnected: The request's disconnect check.
            task: The query instruction; None embeds documents.
            dimensions: Output length (MRL); None uses the model's.
            field: The request field the texts came from (named in errors).
            dimensions_field: The request field ``dimensions`` came from.
            refuse_cut: Given, texts longer than ``max_length`` are refused with the error it
                builds from their count, instead of cut with a warning.
            normalize: False returns the pooled states cut to ``dimensions``, unnormalised.
        """
        emb = self.embedder()
        self.check_dimensions(dimensions, dimensions_field)
        encoded = await self.encode(texts, task, field)
        if encoded.truncated and refuse_cut is not None:
            raise refuse_cut(encoded.truncated)
        emb.warn_truncated(encoded.truncated, len(texts))
        tokens = self._check_tokens(encoded.ids, field)
        assert self.embed_worker is not None
        job = EmbedJob(
            rows=encoded.ids, dimensions=dimensions or emb.dimensions, normalize=normalize
        )
        vectors = await self._run(self.embed_worker, job, disconnected)
        self.metrics.tokens.labels("embedding").inc(tokens)
        return Embedded(vectors, tokens)

    async def score(
        self,
        query: str,
        documents: list[str],
        disconnected: Disconnected,
        *,
        instruction: str | None,
        field: str,
        refuse_cut: Callable[[int], ApiError] | None = None,
    ) -> Scored:
        """P(yes) and log-odds of every (query, document) pair, in document order.

        ``refuse_cut``, given, refuses pairs longer than ``max_length`` (as in :meth:`embed`).
        """
        rr = self.reranker()
        self.check_count(documents, field)
        try:
            encoded = await run_in_threadpool(
                rr.encode_pairs, query, documents, instruction, warn=True
            )
        except ValueError as e:
            raise ApiError(422, f"instruction: {e}", param="instruction") from e
        if encoded.truncated and refuse_cut is not None:
            raise refuse_cut(encoded.truncated)
        tokens = self._check_tokens(encoded.ids, field)
        assert self.rerank_worker is not None
        scores, log_odds = await self._run(
            self.rerank_worker, RerankJob(rows=encoded.ids), disconnected
        )
        self.metrics.tokens.labels("reranker").inc(tokens)
        return Scored(scores, log_odds, tokens, encoded.truncated)

    def cut_texts(
        self, model: Qwen3Embedder | Qwen3Reranker, texts: list[str], max_tokens: int
    ) -> list[str]:
        """Each text cut after its first ``max_tokens`` tokens (Cohere's max_tokens[_per_doc]).

        The cut falls at the end of the last kept token's characters, so the kept text is what
        those tokens spell.
        """
        clean = [replace_surrogates(d) for d in texts]
        encodings = model.tokenizer.plain.encode_batch(clean, add_special_tokens=False)
        out = []
        for doc, enc in zip(clean, encodings, strict=True):
            if len(enc.ids) > max_tokens:
                doc = doc[: enc.offsets[max_tokens - 1][1]]
            out.append(doc)
        return out

    async def _run(self, worker: ModelWorker, job: Job, disconnected: Disconnected) -> Any:
        """Queue ``job`` and wait for it, dropping it if the client leaves or time runs out."""
        options = self.options
        try:
            future = worker.submit(job)
        except QueueFullError as e:
            raise ApiError(
                503, f"{e}; retry later", headers={"Retry-After": str(options.retry_after)}
            ) from e
        except ShuttingDownError as e:
            raise ApiError(503, str(e)) from e
        waiting = asyncio.wrap_future(future)
        deadline = time.monotonic() + options.timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ApiError(
                        504,
                        f"no result within the server's timeout of {options.timeout:g} s "
                        "(--timeout); the request's work was dropped",
                    )
                done, _ = await asyncio.wait({waiting}, timeout=min(left, 0.25))
                if done:
                    return waiting.result()
                if await disconnected():
                    raise ApiError(499, "the client closed the connection")
        except JobCancelledError as e:
            raise ApiError(499, "the client closed the connection") from e
        finally:
            if not waiting.done():
                job.cancel()
                waiting.cancel()
