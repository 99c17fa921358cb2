"""Request bodies of each API, as its owner documents them (OpenAI, Cohere/Jina, TEI), and ours.

Every body is validated strictly ("5" is not a number) and unknown fields are refused, so a typo
such as ``dimension`` fails loudly instead of being ignored. Responses are built as plain dicts
in :mod:`qwen3_rag.server.app` so that float32 values reach JSON unrounded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _OpenBody(BaseModel):
    # Clients of these APIs send fields of newer API versions; unknown ones are ignored, as the
    # owners' servers do.
    model_config = ConfigDict(strict=True, extra="ignore")


# -- OpenAI ------------------------------------------------------------------------------------
class OpenAIEmbeddingRequest(_Body):
    """``POST /v1/embeddings`` (OpenAI), plus ``input_type`` and ``instruction``.

    ``input`` is a string or a list of strings. Token arrays (which OpenAI also accepts) are
    refused with a message naming the field: they hold another tokenizer's ids (tiktoken's, as
    LangChain sends unless ``check_embedding_ctx_length=False``), which mean nothing to Qwen3.
    """

    input: str | list[Any]
    model: str | None = None
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    input_type: Literal["query", "document"] | None = None
    instruction: str | None = None


# -- Cohere --------------------------------------------------------------------------------------
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
    embedding_types: list[str] | None = None
    output_dimension: int | None = None
    truncate: Literal["NONE", "START", "END"] | None = None
    instruction: str | None = None


class RerankDocument(_OpenBody):
    """A document given as ``{"text": ...}`` (Cohere v1, Jina)."""

    text: str


class CohereRerankRequest(_OpenBody):
    """``POST /v2/rerank`` and ``/v1/rerank`` (Cohere, Jina), plus ``instruction``."""

    query: str
    documents: list[str | RerankDocument]
    model: str | None = None
    top_n: int | None = Field(default=None)
    return_documents: bool = False
    max_tokens_per_doc: int | None = None
    rank_fields: list[str] | None = None
    instruction: str | None = None


# -- TEI -----------------------------------------------------------------------------------------
class TEIRerankRequest(_OpenBody):
    """``POST /rerank`` (Hugging Face text-embeddings-inference)."""

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = False
    truncation_direction: Literal["Right", "right", "Left", "left"] = "Right"
    instruction: str | None = None


# -- ours ----------------------------------------------------------------------------------------
class SearchRequest(_Body):
    """``POST /v1/search``: vector search over the collection, then reranking."""

    query: str
    k: int = 20
    top_n: int = 5
    instruction: str | None = None
    where: dict[str, Any] | None = None
