r"""Model facts: the official prompt formats, special tokens and defaults, each stated once.

Everything here follows the model cards' transformers code (Qwen/Qwen3-Embedding-*,
Qwen/Qwen3-Reranker-*). Where the official sources disagree (the vLLM reranker example joins the
user turn with ``\\n\\n``; ``examples/`` uses another default instruction) the model cards win.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B"
"""The embedding model loaded when none is named (a hub id)."""
#: The reranker loaded when none is named (a hub id).
DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"

#: The default task for both models, as in the model cards.
DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"

#: Appended (by id) to every embedding input; its hidden state is the embedding. This is
#: ``<|endoftext|>`` (151643), *not* the tokenizer's ``eos_token`` (``<|im_end|>``, 151645).
EMBEDDING_EOS_TOKEN = "<|endoftext|>"

#: The tokenizers' padding token. Padding is masked out, so it never reaches a result.
PAD_TOKEN = "<|endoftext|>"

#: The tokens the runtime's inputs are delimited with: the chat turns and the end of text. The
#: tokenizer must flag them ``special``, so that user text spelling them stays text.
CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: Smallest MRL output dimension the models were trained for.
MIN_DIMENSIONS = 32

#: Tokens of context the official checkpoints were trained for (both kinds, every size).
MAX_CONTEXT = 32768

# No space after "Query:": the model card's get_detailed_instruct() writes it this way.
QUERY_TEMPLATE = "Instruct: {task}\nQuery:{query}"

RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
    'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
# Single "\n" separators, as in the transformers example (not the vLLM example's "\n\n").
RERANK_BODY_TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
RERANK_YES = "yes"
RERANK_NO = "no"

#: Name under which the Chroma embedding function registers and persists its config.
CHROMA_FUNCTION_NAME = "qwen3_rag"

ModelKind = Literal["embedding", "reranker"]


@dataclass(frozen=True)
class ModelDescription:
    """What one official checkpoint is, known before anything is downloaded.

    Attributes:
        model: The hub id, e.g. ``"Qwen/Qwen3-Embedding-0.6B"``.
        kind: ``"embedding"`` (:class:`~qwen3_rag.core.Qwen3Embedder`) or ``"reranker"``
            (:class:`~qwen3_rag.core.Qwen3Reranker`).
        size: Parameter count as the model name states it (``"0.6B"``, ``"4B"``, ``"8B"``).
        hidden_size: Width of the last hidden state: the full embedding length.
        max_context: Tokens of context the model was trained for.
        min_dimensions: Smallest MRL output length (embedding models); None for rerankers.
    """

    model: str
    kind: ModelKind
    size: str
    hidden_size: int
    max_context: int = MAX_CONTEXT
    min_dimensions: int | None = None


#: Hidden size of each official size (the rerankers share the embedding models' backbones).
_HIDDEN_SIZES = {"0.6B": 1024, "4B": 2560, "8B": 4096}
_KINDS: tuple[tuple[ModelKind, str], ...] = (("embedding", "Embedding"), ("reranker", "Reranker"))

#: The official Qwen3-Embedding and Qwen3-Reranker checkpoints.
OFFICIAL_MODELS: tuple[ModelDescription, ...] = tuple(
    ModelDescription(
        model=f"Qwen/Qwen3-{name}-{size}",
        kind=kind,
        size=size,
        hidden_size=hidden,
        min_dimensions=MIN_DIMENSIONS if kind == "embedding" else None,
    )
    for kind, name in _KINDS
    for size, hidden in _HIDDEN_SIZES.items()
)
_BY_HUB_ID = {d.model.lower(): d for d in OFFICIAL_MODELS}


def describe_model(model: str | os.PathLike[str]) -> ModelDescription | None:
    """The description of an official checkpoint by hub id (case-insensitive), else None.

    Local folders and other hub ids return None: nothing is known about them before loading.

    Example:
        >>> describe_model("Qwen/Qwen3-Embedding-4B").hidden_size
        2560
        >>> describe_model("./my-finetune") is None
        True
    """
    if not isinstance(model, str):
        return None
    return _BY_HUB_ID.get(model.strip().lower())


def format_query(query: str, task: str) -> str:
    r"""Build the embedding input for a query.

    Args:
        query: The user's query, passed through unchanged.
        task: One-sentence task description; ``""`` means no instruction at all.

    Returns:
        ``"Instruct: {task}\\nQuery:{query}"``, or ``query`` itself when ``task`` is empty.

    Example:
        >>> format_query("what is RAG?", "Find answers")
        'Instruct: Find answers\nQuery:what is RAG?'
        >>> format_query("what is RAG?", "")
        'what is RAG?'
    """
    if not task:
        return query
    return QUERY_TEMPLATE.format(task=task, query=query)


def query_prompt_task(prompt: str) -> str | None:
    r"""The task of a query prompt that :func:`format_query` writes with an empty query.

    The inverse of ``format_query("", task)``: sentence-transformers folders store the query
    instruction this way (``config_sentence_transformers.json``'s ``prompts["query"]``).

    Returns:
        The task; ``""`` for an empty prompt (queries without instruction); None for a prompt
        that is not this template (another model's prompt format).

    Example:
        >>> query_prompt_task("Instruct: Find answers\nQuery:")
        'Find answers'
        >>> query_prompt_task("query: ") is None
        True
    """
    if prompt == "":
        return ""
    head, _, tail = QUERY_TEMPLATE.partition("{task}")
    suffix = tail.replace("{query}", "")
    if not (prompt.startswith(head) and prompt.endswith(suffix)):
        return None
    task = prompt[len(head) : len(prompt) - len(suffix)]
    return task if task and format_query("", task) == prompt else None


def format_rerank_body(query: str, document: str, instruction: str) -> str:
    r"""Build the user-turn body that sits between :data:`RERANK_PREFIX` and :data:`RERANK_SUFFIX`.

    Only this part is ever truncated; the prefix and suffix are kept whole.

    Example:
        >>> format_rerank_body("q", "d", "t")
        '<Instruct>: t\n<Query>: q\n<Document>: d'
    """
    return RERANK_BODY_TEMPLATE.format(instruction=instruction, query=query, document=document)
