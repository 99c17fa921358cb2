"""Hugging Face text-embeddings-inference's API (TEI).

``/embed``, ``POST /``, ``/info``, ``/tokenize`` and ``/rerank``.

``prompt_name="query"`` takes the query path with the server's instruction, as TEI does with a
sentence-transformers model's ``query`` prompt; ``"document"`` (or none) embeds documents.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

import qwen3_rag
from qwen3_rag.core.spec import format_query
from qwen3_rag.core.tokenization import replace_surrogates

from .base import answer, body, errors, parse, service
from .errors import ApiError
from .rerank import rerank_either
from .schemas import (
    CohereRerankRequest,
    CohereRerankResponse,
    TEIEmbedRequest,
    TEIInfo,
    TEIRank,
    TEIRerankRequest,
    TEIToken,
    TEITokenizeRequest,
)

router = APIRouter(tags=["TEI"])

#: TEI's prompt names: sentence-transformers' ``prompts`` of Qwen3-Embedding.
_PROMPTS = ("query", "document")


def _task(request: Request, prompt_name: str | None) -> str | None:
    """The query instruction for ``prompt_name``, or None for documents."""
    if prompt_name is not None and prompt_name not in _PROMPTS:
        raise ApiError(
            422,
            f"prompt_name: {prompt_name!r} is not a prompt of this model; use 'query' (the "
            "query instruction) or 'document'",
            param="prompt_name",
        )
    return service(request).embedder().instruction if prompt_name == "query" else None


async def _embed(request: Request, endpoint: str) -> Response:
    async def run() -> Any:
        req = await parse(request, TEIEmbedRequest)
        if req.truncation_direction.lower() != "right":
            raise ApiError(
                422,
                "truncation_direction: only 'Right' is served (the end of the text is cut)",
                param="truncation_direction",
            )
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        svc = service(request)
        emb = svc.embedder()

        def too_long(count: int) -> ApiError:
            return ApiError(
                413,
                f"inputs: {count} of {len(texts)} inputs are longer than max_length="
                f"{emb.max_length} tokens; send truncate=true to cut them",
                param="inputs",
            )

        out = await svc.embed(
            texts,
            request.is_disconnected,
            task=_task(request, req.prompt_name),
            dimensions=req.dimensions,
            field="inputs",
            refuse_cut=None if req.truncate else too_long,
            normalize=req.normalize,
        )
        return out.vectors.tolist()

    return await answer(request, endpoint, "tei", run)


@router.post(
    "/embed",
    response_model=list[list[float]],
    responses=errors("tei"),
    openapi_extra=body(TEIEmbedRequest),
)
async def embed(request: Request) -> Response:
    """TEI embeddings: ``[[float]]``, unit vectors unless ``normalize=false``."""
    return await _embed(request, "/embed")


@router.post(
    "/",
    response_model=list[list[float]],
    responses=errors("tei"),
    openapi_extra=body(TEIEmbedRequest),
)
async def predict(request: Request) -> Response:
    """The same as ``/embed``: where huggingface_hub's ``feature_extraction`` posts."""
    return await _embed(request, "/")


@router.get("/info", response_model=TEIInfo, responses=errors("tei"))
async def info(request: Request) -> Response:
    """TEI's ``/info``: the embedding model (the reranker when it is served alone)."""

    async def run() -> Any:
        svc = service(request)
        models = svc.ready()
        o = svc.options
        model: Any = models.embedder if models.embedder is not None else models.reranker
        kind = "embedding" if models.embedder is not None else "reranker"
        model_type: dict[str, Any] = (
            {"embedding": {"pooling": "last_token"}}
            if kind == "embedding"
            else {"reranker": {"id2label": {"0": "yes"}, "label2id": {"yes": 0}}}
        )
        return {
            "model_id": svc.model_name(kind),
            "model_sha": None,
            "model_dtype": str(model.dtype).removeprefix("torch."),
            "model_type": model_type,
            "max_concurrent_requests": o.max_queue,
            "max_input_length": model.max_length,
            "max_batch_tokens": model.batch_tokens,
            "max_batch_requests": o.max_batch_requests,
            "max_client_batch_size": o.max_inputs,
            "auto_truncate": False,
            "tokenization_workers": 1,
            "version": qwen3_rag.__version__,
            "reranker_model_id": (
                svc.model_name("reranker") if models.reranker is not None else None
            ),
        }

    return await answer(request, "/info", "tei", run)


@router.post(
    "/tokenize",
    response_model=list[list[TEIToken]],
    responses=errors("tei"),
    openapi_extra=body(TEITokenizeRequest),
)
async def tokenize(request: Request) -> Response:
    """The embedding model's tokens for each input, exactly the ids it sees.

    With ``add_special_tokens`` (the default) the ids are those ``/embed`` embeds (the query
    template with ``prompt_name="query"``, the end-of-text token); ``start``/``stop`` are
    character offsets into the text the tokenizer read (the template included), None for
    tokens the runtime adds.
    """

    async def run() -> Any:
        req = await parse(request, TEITokenizeRequest)
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        svc = service(request)
        emb = svc.embedder()
        task = _task(request, req.prompt_name)
        encoded = await svc.encode(texts, task, "inputs")
        tok = emb.tokenizer
        added = tok.template.get_added_tokens_decoder()
        out = []
        for text, ids in zip(texts, encoded.ids, strict=True):
            read = replace_surrogates(format_query(text, task) if task else text)
            plain = tok.plain.encode(read, add_special_tokens=False)
            tokens = []
            for j, token_id in enumerate(ids):
                aligned = j < len(plain.ids) and plain.ids[j] == token_id
                start, stop = plain.offsets[j] if aligned else (None, None)
                special = token_id in added and bool(added[token_id].special)
                if not req.add_special_tokens and special:
                    continue
                tokens.append(
                    {
                        "id": token_id,
                        "text": tok.template.decode([token_id], skip_special_tokens=False),
                        "special": special,
                        "start": start,
                        "stop": stop,
                    }
                )
            out.append(tokens)
        return out

    return await answer(request, "/tokenize", "tei", run)


@router.post(
    "/rerank",
    response_model=list[TEIRank] | CohereRerankResponse,
    responses=errors("tei", "cohere"),
    openapi_extra=body(TEIRerankRequest, CohereRerankRequest),
)
async def rerank(request: Request) -> Response:
    """TEI rerank (``texts``): ``[{index, score, text?}]`` best first.

    ``raw_scores`` gives the log-odds. vLLM's and Infinity's body (``documents``) gets their
    ``{results}`` answer.
    """

    async def run() -> Any:
        return await rerank_either(request, "/rerank")

    return await answer(request, "/rerank", "tei", run)
