"""Request and response bodies of each API, as its owner documents them, and ours.

Requests are validated strictly ("5" is not a number). OpenAI's and our own bodies refuse unknown
fields, so a typo such as ``dimension`` fails loudly; Cohere's, Jina's and TEI's ignore them, as
their servers do (their clients send fields of newer API versions). Responses are built as plain
dicts so that float32 values reach JSON unrounded and large answers skip a validation pass; the
response models here describe them in ``/openapi.json`` (the schema test checks they agree).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _OpenBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


# -- errors --------------------------------------------------------------------------------------
class OpenAIErrorDetail(BaseModel):
    """The ``error`` object of an OpenAI error."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's error body."""

    error: OpenAIErrorDetail


class MessageError(BaseModel):
    """Cohere's (and our own endpoints') error body."""

    message: str


class TEIError(BaseModel):
    """Text-embeddings-inference's error body."""

    error: str
    error_type: str


# -- OpenAI --------------------------------------------------------------------------------------
class OpenAIEmbeddingRequest(_Body):
    """``POST /v1/embeddings`` (OpenAI; also Infinity's ``/embeddings``), plus our fields.

    Ours: ``input_type`` and ``instruction``.

    ``input`` is a string or a list of strings. Token arrays (which OpenAI also accepts) are
    refused with a message naming the item: they hold another tokenizer's ids (tiktoken's, as
    LangChain sends unless ``check_embedding_ctx_length=False``), which mean nothing to Qwen3.
    """

    input: str | list[Any]
    model: str | None = None
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    input_type: Literal["query", "document"] | None = None
    instruction: str | None = None


class OpenAIEmbedding(BaseModel):
    """One vector: floats, or base64 of little-endian float32 bytes."""

    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    """Tokens the model read."""

    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    """The answer of ``/v1/embeddings``."""

    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(BaseModel):
    """One served model."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    """The answer of ``/v1/models``."""

    object: Literal["list"]
    data: list[OpenAIModel]


# -- Cohere, Jina, vLLM --------------------------------------------------------------------------
EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary"]


class CohereEmbedRequest(_OpenBody):
    """``POST /v2/embed`` and ``/v1/embed`` (Cohere), plus ``instruction``."""

    texts: list[str] | None = None
    images: list[Any] | None = None
    inputs: list[Any] | None = None
    max_tokens: int | None = None
    model: str | None = None
    input_type: (
        Literal["search_query", "search_document", "classification", "clustering"] | None
    ) = None
    embedding_types: list[EmbeddingType] | None = None
    output_dimension: int | None = None
    truncate: Literal["NONE", "START", "END"] | None = None
    instruction: str | None = None


class CohereApiVersion(BaseModel):
    """``meta.api_version``."""

    version: str


class CohereBilledUnits(BaseModel):
    """``meta.billed_units``."""

    input_tokens: int | None = None
    search_units: int | None = None


class CohereMeta(BaseModel):
    """Cohere's ``meta`` object."""

    api_version: CohereApiVersion
    billed_units: CohereBilledUnits


class EmbeddingsByType(BaseModel):
    """The vectors in each asked type (Cohere's definitions, see :mod:`.encodings`)."""

    float: list[list[float]] | None = None
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None


class CohereEmbedByTypeResponse(BaseModel):
    """Cohere's embed answer with ``embedding_types`` (always on v2)."""

    response_type: Literal["embeddings_by_type"]
    id: str
    embeddings: EmbeddingsByType
    texts: list[str]
    meta: CohereMeta


class CohereEmbedFloatsResponse(BaseModel):
    """Cohere v1's embed answer without ``embedding_types``."""

    response_type: Literal["embeddings_floats"]
    id: str
    embeddings: list[list[float]]
    texts: list[str]
    meta: CohereMeta


class RerankDocument(_OpenBody):
    """A document given as ``{"text": ...}`` (Cohere v1, Jina, vLLM)."""

    text: str


class CohereRerankRequest(_OpenBody):
    """Rerank with ``documents`` (Cohere, Jina, vLLM, Infinity), plus ``instruction``.

    ``/v2/rerank``, and ``/v1/rerank`` and ``/rerank`` when the body has ``documents``.
    """

    query: str
    documents: list[str | RerankDocument]
    model: str | None = None
    top_n: int | None = Field(default=None)
    return_documents: bool = False
    max_tokens_per_doc: int | None = None
    rank_fields: list[str] | None = None
    instruction: str | None = None


class RerankedDocument(BaseModel):
    """One result: its position in the request, P(yes), and its text if asked."""

    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    """Jina's and vLLM's ``usage``."""

    total_tokens: int


class CohereRerankResponse(BaseModel):
    """The answer of the Cohere/Jina/vLLM rerank endpoints, best first."""

    id: str
    results: list[RerankedDocument]
    meta: CohereMeta
    model: str
    usage: RerankUsage


# -- TEI -----------------------------------------------------------------------------------------
TruncationDirection = Literal["Right", "right", "Left", "left"]


class TEIEmbedRequest(_OpenBody):
    """``POST /embed`` and ``POST /`` (TEI; huggingface_hub's ``feature_extraction``)."""

    inputs: str | list[str]
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: TruncationDirection = "Right"
    prompt_name: str | None = None
    dimensions: int | None = None


class TEITokenizeRequest(_OpenBody):
    """``POST /tokenize`` (text-embeddings-inference)."""

    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


class TEIToken(BaseModel):
    """One token: its id, its text, and where that text lies in the input (None if added)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TEIRerankRequest(_OpenBody):
    """``POST /rerank`` and ``/v1/rerank`` with ``texts`` (text-embeddings-inference)."""

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = False
    truncation_direction: TruncationDirection = "Right"
    instruction: str | None = None


class TEIRank(BaseModel):
    """One TEI rerank result (best first)."""

    index: int
    score: float
    text: str | None = None


class TEIModelType(BaseModel):
    """``model_type``: ``{"embedding": {"pooling": ...}}`` or ``{"reranker": {...}}``."""

    embedding: dict[str, str] | None = None
    reranker: dict[str, Any] | None = None


class TEIInfo(BaseModel):
    """``GET /info``: TEI's fields, for the embedding model (or the reranker if alone)."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: TEIModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    reranker_model_id: str | None = None


# -- ours ----------------------------------------------------------------------------------------
class SearchRequest(_Body):
    """``POST /v1/search``: vector search over the collection, then reranking."""

    query: str
    k: int = 20
    top_n: int = 5
    instruction: str | None = None
    where: dict[str, Any] | None = None


class SearchHit(BaseModel):
    """One passage, reranked."""

    rank: int
    score: float
    id: str
    source: Any = None
    text: str
    vector_distance: float
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    """The answer of ``/v1/search``, best first."""

    query: str
    results: list[SearchHit]


class Health(BaseModel):
    """``GET /health``: ``ok`` once loaded (200), else ``loading`` or ``failed`` (503)."""

    status: Literal["ok", "loading", "failed"]
    error: str | None = None
    embedding_model: str | None = None
    reranker_model: str | None = None
    collection: str | None = None
