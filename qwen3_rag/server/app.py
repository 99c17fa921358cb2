"""The FastAPI app: OpenAI, Cohere/Jina and TEI endpoints over one worker per model."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, JSONResponse, Response

from qwen3_rag.core import Qwen3Embedder, Qwen3Reranker
from qwen3_rag.core.reranker import ranked
from qwen3_rag.core.spec import MIN_DIMENSIONS

from .errors import ApiError, ApiStyle, validation_error
from .metrics import Metrics
from .schemas import (
    CohereEmbedRequest,
    CohereRerankRequest,
    OpenAIEmbeddingRequest,
    SearchRequest,
    TEIRerankRequest,
)
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

logger = logging.getLogger(__name__)

B = TypeVar("B", bound=BaseModel)


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
    """

    api_key: str | None = None
    max_body_bytes: int = 16 * 2**20
    max_inputs: int = 2048
    max_request_tokens: int = 1_000_000
    timeout: float = 300.0
    max_queue: int = 256
    max_batch_requests: int = 64
    retry_after: int = 1


@dataclass
class Models:
    """What the app serves; any part may be None, but not both models.

    Attributes:
        embedder: Serves ``/v1/embeddings`` and ``/v{1,2}/embed`` (and search's query vector).
        reranker: Serves ``/v{1,2}/rerank`` and ``/rerank``.
        collection: A Chroma collection embedded with ``embedder``: enables ``/v1/search``
            and the search page.
        collection_name: Shown on the search page.
    """

    embedder: Qwen3Embedder | None = None
    reranker: Qwen3Reranker | None = None
    collection: Any = None
    collection_name: str | None = None


class _State:
    """What the routes share: the models once loaded, their workers, the metrics."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.metrics = Metrics()
        self.models: Models | None = None
        self.embed_worker: EmbedWorker | None = None
        self.rerank_worker: RerankWorker | None = None
        self.load_error: BaseException | None = None

    def start(self, models: Models) -> None:
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

    def workers(self) -> list[ModelWorker]:
        return [w for w in (self.embed_worker, self.rerank_worker) if w is not None]


def create_app(
    models: Models | Callable[[], Models],
    options: ServerOptions | None = None,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The server's ASGI app.

    Args:
        models: The loaded models, or a function that loads them: it runs in a thread when the
            app starts, and ``/health`` answers 503 until it returns.
        options: Limits and the API key.
        on_load_error: Called (from the loading thread) if ``models()`` raises; the CLI stops
            the server there.

    Returns:
        A FastAPI app; run it with uvicorn. Its shutdown finishes the work in flight.
    """
    options = options or ServerOptions()
    state = _State(options)

    def load() -> None:
        try:
            loaded = models() if callable(models) else models
            if loaded.embedder is None and loaded.reranker is None:
                raise ValueError("the server needs an embedding model, a reranker, or both")
            state.start(loaded)
        except BaseException as e:
            state.load_error = e
            logger.error("loading the models failed: %s", e)
            if on_load_error is not None:
                on_load_error(e)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if callable(models):
            threading.Thread(target=load, name="qwen3-rag-load", daemon=True).start()
        else:
            load()
        yield
        # uvicorn has answered every request by now (SIGTERM stops new ones and waits for
        # those in flight); the workers finish anything left, then stop.
        for worker in state.workers():
            await run_in_threadpool(worker.close)

    app = FastAPI(
        title="qwen3-rag",
        summary="Qwen3-Embedding and Qwen3-Reranker on the OpenAI, Cohere and TEI APIs",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.qwen3 = state

    # -- plumbing shared by the endpoints ----------------------------------------------------
    async def answer(
        request: Request,
        endpoint: str,
        style: ApiStyle,
        handler: Callable[[], Awaitable[Any]],
        *,
        auth: bool = True,
    ) -> Response:
        started = time.monotonic()
        try:
            if auth:
                check_key(request)
            result = await handler()
            response = result if isinstance(result, Response) else JSONResponse(result)
        except ApiError as e:
            response = e.response(style)
        except Exception as e:  # a bug or a failed forward: the caller gets a 500, not a hang
            logger.exception("%s failed", endpoint)
            response = ApiError(500, f"internal error: {type(e).__name__}").response(style)
        state.metrics.on_answer(endpoint, response.status_code, time.monotonic() - started)
        return response

    def check_key(request: Request) -> None:
        key = options.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # hmac.compare_digest takes the same time wherever the strings differ.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), key.encode()
        ):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def parse(request: Request, model: type[B]) -> B:
        length = request.headers.get("content-length")
        limit = options.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"the request body has {length} bytes, more than {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ApiError(
                400, f"the request body is not UTF-8 (byte {e.start} is {raw[e.start]:#04x})"
            ) from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ApiError(
                400, f"the request body is not JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from e
        if not isinstance(data, dict):
            raise ApiError(422, f"the request body must be a JSON object, got {_kind(data)}")
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise validation_error(e) from e

    def embedder() -> tuple[Qwen3Embedder, EmbedWorker]:
        ready()
        if state.embed_worker is None:
            raise ApiError(
                404, "this server has no embedding model (start it with --embedding-model)"
            )
        return state.embed_worker.embedder, state.embed_worker

    def reranker() -> tuple[Qwen3Reranker, RerankWorker]:
        ready()
        if state.rerank_worker is None:
            raise ApiError(404, "this server has no reranker (start it with --reranker-model)")
        return state.rerank_worker.reranker, state.rerank_worker

    def ready() -> None:
        if state.models is None:
            raise ApiError(503, "the models are still loading", headers={"Retry-After": "5"})

    def check_count(items: list[Any], field: str) -> None:
        if not items:
            raise ApiError(422, f"{field}: must not be empty", param=field)
        if len(items) > options.max_inputs:
            raise ApiError(
                422,
                f"{field}: {len(items)} items, more than this server's limit of "
                f"{options.max_inputs} (--max-inputs)",
                param=field,
            )

    def check_tokens(rows: list[list[int]], field: str) -> int:
        tokens = sum(len(r) for r in rows)
        if tokens > options.max_request_tokens:
            raise ApiError(
                422,
                f"{field}: the request makes {tokens} tokens, more than this server's limit "
                f"of {options.max_request_tokens} (--max-request-tokens)",
                param=field,
            )
        return tokens

    async def run_job(request: Request, worker: ModelWorker, job: Job) -> Any:
        """Queue ``job`` and wait for it, dropping it if the client leaves or time runs out."""
        try:
            future = worker.submit(job)
        except QueueFullError as e:
            raise ApiError(
                503,
                f"{e}; retry later",
                headers={"Retry-After": str(options.retry_after)},
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
                if await request.is_disconnected():
                    raise ApiError(499, "the client closed the connection")
        except JobCancelledError as e:
            raise ApiError(499, "the client closed the connection") from e
        finally:
            if not waiting.done():
                job.cancel()
                waiting.cancel()

    async def embed(
        request: Request,
        texts: list[str],
        *,
        task: str | None,
        dimensions: int | None,
        field: str,
        refuse_cut: bool = False,
        dimensions_field: str = "dimensions",
    ) -> tuple[np.ndarray, int]:
        """Embed ``texts`` (as queries with instruction ``task`` unless None)."""
        emb, worker = embedder()
        check_count(texts, field)
        if dimensions is not None and not MIN_DIMENSIONS <= dimensions <= emb.output_dimensions:
            raise ApiError(
                422,
                f"{dimensions_field}={dimensions} is out of range: this model gives "
                f"{MIN_DIMENSIONS} to {emb.output_dimensions}",
                param=dimensions_field,
            )
        try:
            ids, truncated = await run_in_threadpool(emb._tokenize, texts, task or "")
        except ValueError as e:  # an instruction that leaves no room for the query
            raise ApiError(422, f"instruction: {e}", param="instruction") from e
        if truncated and refuse_cut:
            raise ApiError(
                422,
                f"{field}: {truncated} of {len(texts)} texts are longer than max_length="
                f"{emb.max_length} tokens; send truncate='END' to cut them",
                param=field,
            )
        emb._warn_truncated(truncated, len(texts))
        tokens = check_tokens(ids, field)
        vectors = await run_job(
            request, worker, EmbedJob(rows=ids, dimensions=dimensions or emb.dimensions)
        )
        state.metrics.tokens.labels("embedding").inc(tokens)
        return vectors, tokens

    async def score(
        request: Request,
        query: str,
        documents: list[str],
        *,
        instruction: str | None,
        field: str,
    ) -> tuple[list[float], list[float], int, int]:
        """P(yes) and log-odds per document, the tokens read and how many pairs were cut."""
        rr, worker = reranker()
        check_count(documents, field)
        task = rr.instruction if instruction is None else instruction
        try:
            seqs, cut = await run_in_threadpool(rr._tokenize, query, documents, task, warn=True)
        except ValueError as e:
            raise ApiError(422, f"instruction: {e}", param="instruction") from e
        tokens = check_tokens(seqs, field)
        scores, log_odds = await run_job(request, worker, RerankJob(rows=seqs))
        state.metrics.tokens.labels("reranker").inc(tokens)
        return scores, log_odds, tokens, cut

    def model_name(kind: str) -> str:
        models_ = state.models
        if models_ is None:
            return kind
        model = models_.embedder if kind == "embedding" else models_.reranker
        return model.model_name if model is not None else kind

    # -- OpenAI ------------------------------------------------------------------------------
    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request) -> Response:
        """OpenAI embeddings; documents unless ``input_type="query"`` or an instruction."""

        async def run() -> Any:
            body = await parse(request, OpenAIEmbeddingRequest)
            texts = _openai_texts(body.input)
            if body.input_type == "document" and body.instruction is not None:
                raise ApiError(
                    422,
                    "instruction: applies to queries only; drop it or set input_type='query'",
                    param="instruction",
                )
            as_query = body.input_type == "query" or body.instruction is not None
            emb, _ = embedder()
            task = body.instruction if body.instruction is not None else emb.instruction
            vectors, tokens = await embed(
                request,
                texts,
                task=task if as_query else None,
                dimensions=body.dimensions,
                field="input",
            )
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _base64(v) if body.encoding_format == "base64" else v.tolist(),
                }
                for i, v in enumerate(vectors)
            ]
            return {
                "object": "list",
                "data": data,
                "model": model_name("embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }

        return await answer(request, "/v1/embeddings", "openai", run)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        """The served models, OpenAI style."""

        async def run() -> Any:
            ready()
            kinds = [
                k
                for k, w in (("embedding", state.embed_worker), ("reranker", state.rerank_worker))
                if w is not None
            ]
            return {
                "object": "list",
                "data": [
                    {"id": model_name(k), "object": "model", "created": 0, "owned_by": "qwen3-rag"}
                    for k in kinds
                ],
            }

        return await answer(request, "/v1/models", "openai", run)

    # -- Cohere ------------------------------------------------------------------------------
    async def cohere_embed(request: Request, endpoint: str) -> Response:
        async def run() -> Any:
            body = await parse(request, CohereEmbedRequest)
            for name in ("images", "inputs"):
                if getattr(body, name) is not None:
                    raise ApiError(422, f"{name}: only texts are served", param=name)
            if body.texts is None:
                raise ApiError(422, "texts: field required", param="texts")
            texts = body.texts
            types = body.embedding_types or ["float"]
            bad = [t for t in types if t != "float"]
            if bad:
                raise ApiError(
                    422,
                    f"embedding_types: {bad[0]!r} is not served; only 'float' is",
                    param="embedding_types",
                )
            if body.truncate == "START":
                raise ApiError(
                    422, "truncate: 'START' is not served; texts are cut at their end ('END')"
                )
            emb, _ = embedder()
            as_query = body.input_type == "search_query"
            if body.instruction is not None and not as_query:
                raise ApiError(
                    422,
                    "instruction: applies to input_type='search_query' only",
                    param="instruction",
                )
            task = body.instruction if body.instruction is not None else emb.instruction
            if body.max_tokens is not None:
                texts = _cut_texts(emb, texts, _positive(body.max_tokens, "max_tokens"))
            vectors, tokens = await embed(
                request,
                texts,
                task=task if as_query else None,
                dimensions=body.output_dimension,
                field="texts",
                refuse_cut=body.truncate == "NONE",
                dimensions_field="output_dimension",
            )
            embeddings = [v.tolist() for v in vectors]
            meta = {
                "api_version": {"version": "2" if endpoint.startswith("/v2") else "1"},
                "billed_units": {"input_tokens": tokens},
            }
            if endpoint.startswith("/v1") and body.embedding_types is None:
                return {
                    "response_type": "embeddings_floats",
                    "id": str(uuid.uuid4()),
                    "embeddings": embeddings,
                    "texts": body.texts,
                    "meta": meta,
                }
            return {
                "response_type": "embeddings_by_type",
                "id": str(uuid.uuid4()),
                "embeddings": {"float": embeddings},
                "texts": body.texts,
                "meta": meta,
            }

        return await answer(request, endpoint, "cohere", run)

    @app.post("/v2/embed")
    async def cohere_embed_v2(request: Request) -> Response:
        """Cohere embed v2: ``input_type="search_query"`` gets the query instruction."""
        return await cohere_embed(request, "/v2/embed")

    @app.post("/v1/embed")
    async def cohere_embed_v1(request: Request) -> Response:
        """Cohere embed v1 (the same, with v1's response shape when no types are asked)."""
        return await cohere_embed(request, "/v1/embed")

    async def cohere_rerank(request: Request, endpoint: str) -> Response:
        async def run() -> Any:
            body = await parse(request, CohereRerankRequest)
            rr, _ = reranker()
            documents = [d if isinstance(d, str) else d.text for d in body.documents]
            if body.top_n is not None:
                _positive(body.top_n, "top_n")
            if body.max_tokens_per_doc is not None:
                limit = _positive(body.max_tokens_per_doc, "max_tokens_per_doc")
                documents = _cut_texts(rr, documents, limit)
            scores, _, tokens, _ = await score(
                request, body.query, documents, instruction=body.instruction, field="documents"
            )
            results: list[dict[str, Any]] = []
            for r in ranked(scores, documents, body.top_n):
                item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
                if body.return_documents:
                    item["document"] = {"text": r.document}
                results.append(item)
            return {
                "id": str(uuid.uuid4()),
                "results": results,
                "meta": {
                    "api_version": {"version": "2" if endpoint.startswith("/v2") else "1"},
                    "billed_units": {"search_units": 1},
                },
                # Jina's fields, for its clients.
                "model": model_name("reranker"),
                "usage": {"total_tokens": tokens},
            }

        return await answer(request, endpoint, "cohere", run)

    @app.post("/v2/rerank")
    async def cohere_rerank_v2(request: Request) -> Response:
        """Cohere rerank v2 (also Jina's): results best first, ``relevance_score`` = P(yes)."""
        return await cohere_rerank(request, "/v2/rerank")

    @app.post("/v1/rerank")
    async def cohere_rerank_v1(request: Request) -> Response:
        """Cohere rerank v1 / Jina rerank: documents may be ``{"text": ...}`` objects."""
        return await cohere_rerank(request, "/v1/rerank")

    # -- TEI ---------------------------------------------------------------------------------
    @app.post("/rerank")
    async def tei_rerank(request: Request) -> Response:
        """TEI rerank: ``[{index, score, text?}]`` best first; ``raw_scores`` gives log-odds."""

        async def run() -> Any:
            body = await parse(request, TEIRerankRequest)
            if body.truncation_direction.lower() != "right":
                raise ApiError(
                    422,
                    "truncation_direction: only 'Right' is served (the end of the document is cut)",
                    param="truncation_direction",
                )
            scores, log_odds, _, cut = await score(
                request, body.query, body.texts, instruction=body.instruction, field="texts"
            )
            if cut and not body.truncate:
                raise ApiError(
                    413,
                    f"texts: {cut} of {len(body.texts)} pairs are longer than max_length; "
                    "send truncate=true to cut them",
                    param="texts",
                )
            out = []
            for r in ranked(scores, body.texts):
                item: dict[str, Any] = {
                    "index": r.index,
                    "score": log_odds[r.index] if body.raw_scores else r.score,
                }
                if body.return_text:
                    item["text"] = r.document
                out.append(item)
            return out

        return await answer(request, "/rerank", "tei", run)

    # -- search --------------------------------------------------------------------------------
    @app.post("/v1/search")
    async def search(request: Request) -> Response:
        """Vector search over the collection, reranked: the best passages with their sources."""

        async def run() -> Any:
            body = await parse(request, SearchRequest)
            ready()
            models_ = state.models
            assert models_ is not None
            collection = models_.collection
            if collection is None:
                raise ApiError(404, "no collection is served (start with --db or --chroma-url)")
            if not body.query.strip():
                raise ApiError(422, "query: must not be empty", param="query")
            for name in ("k", "top_n"):
                value = getattr(body, name)
                if not 1 <= value <= options.max_inputs:
                    raise ApiError(
                        422, f"{name}: must be 1 to {options.max_inputs}, got {value}", name
                    )
            emb, _ = embedder()
            vector, _ = await embed(
                request, [body.query], task=emb.instruction, dimensions=None, field="query"
            )
            count = await run_in_threadpool(collection.count)
            if count == 0:
                return {"query": body.query, "results": []}
            hits = await run_in_threadpool(
                collection.query,
                query_embeddings=[vector[0].tolist()],
                n_results=min(body.k, count),
                where=body.where,
                include=["documents", "metadatas", "distances"],
            )
            documents = list(hits["documents"][0])
            if not documents:
                return {"query": body.query, "results": []}
            metadatas = hits["metadatas"][0]
            distances = hits["distances"][0]
            scores, _, _, _ = await score(
                request, body.query, documents, instruction=body.instruction, field="query"
            )
            return {
                "query": body.query,
                "results": [
                    {
                        "rank": rank,
                        "score": r.score,
                        "id": hits["ids"][0][r.index],
                        "source": (metadatas[r.index] or {}).get("source"),
                        "text": r.document,
                        "vector_distance": float(distances[r.index]),
                        "metadata": metadatas[r.index] or {},
                    }
                    for rank, r in enumerate(ranked(scores, documents, body.top_n), start=1)
                ],
            }

        return await answer(request, "/v1/search", "ours", run)

    # -- health, metrics, page ---------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        """200 once the models are loaded; 503 while loading or after a failed load."""
        if state.load_error is not None:
            return JSONResponse(
                {"status": "failed", "error": str(state.load_error)}, status_code=503
            )
        if state.models is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "embedding_model": model_name("embedding") if state.embed_worker else None,
                "reranker_model": model_name("reranker") if state.rerank_worker else None,
                "collection": state.models.collection_name,
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    static = files("qwen3_rag.server").joinpath("static")

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        """The search page (when a collection is served)."""
        if state.models is not None and state.models.collection is None:
            return JSONResponse(
                {"message": "no collection is served; the API is under /v1, /v2 and /rerank"},
                status_code=404,
            )
        return HTMLResponse(static.joinpath("index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        """The page's script and style sheet."""
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            return JSONResponse({"message": "not found"}, status_code=404)
        return Response(static.joinpath(name).read_text(encoding="utf-8"), media_type=types[name])

    return app


# -- helpers -------------------------------------------------------------------------------------
def _kind(value: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _openai_texts(value: str | list[Any]) -> list[str]:
    """OpenAI's ``input`` as a list of texts; token arrays are refused, naming the item."""
    if isinstance(value, str):
        return [value]
    for i, item in enumerate(value):
        if isinstance(item, (int, list)):
            raise ApiError(
                422,
                f"input[{i}]: token arrays are not accepted, send text (they would be another "
                "tokenizer's ids; with LangChain's OpenAIEmbeddings set "
                "check_embedding_ctx_length=False)",
                param=f"input[{i}]",
            )
        if not isinstance(item, str):
            raise ApiError(
                422, f"input[{i}]: must be a string, got {_kind(item)}", param=f"input[{i}]"
            )
    return list(value)


def _base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes, base64: what the openai client decodes."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")


def _positive(value: int, name: str) -> int:
    if value < 1:
        raise ApiError(422, f"{name}: must be at least 1, got {value}", param=name)
    return value


def _cut_texts(
    model: Qwen3Embedder | Qwen3Reranker, texts: list[str], max_tokens: int
) -> list[str]:
    """Each text cut after its first ``max_tokens`` tokens (Cohere's max_tokens[_per_doc]).

    The cut falls at the end of the last kept token's characters, so the kept text is what
    those tokens spell.
    """
    from qwen3_rag.core.tokenization import replace_surrogates

    clean = [replace_surrogates(d) for d in texts]
    encodings = model.tokenizer.plain.encode_batch(clean, add_special_tokens=False)
    out = []
    for doc, enc in zip(clean, encodings, strict=True):
        if len(enc.ids) > max_tokens:
            doc = doc[: enc.offsets[max_tokens - 1][1]]
        out.append(doc)
    return out


__all__ = ["Models", "ServerOptions", "create_app"]
