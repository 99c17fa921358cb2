r"""Model facts: the official prompt formats, special tokens and defaults, each stated once.

Everything here follows the model cards' transformers code (Qwen/Qwen3-Embedding-*,
Qwen/Qwen3-Reranker-*). Where the official sources disagree (the vLLM reranker example joins the
user turn with ``\\n\\n``; ``examples/`` uses another default instruction) the model cards win.
"""

from __future__ import annotations

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B"
"""The embedding model loaded when none is named (a hub id)."""
#: The reranker loaded when none is named (a hub id).
DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"

#: The default task for both models, as in the model cards.
DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"

#: Appended (by id) to every embedding input; its hidden state is the embedding. This is
#: ``<|endoftext|>`` (151643), *not* the tokenizer's ``eos_token`` (``<|im_end|>``, 151645).
EMBEDDING_EOS_TOKEN = "<|endoftext|>"

#: Smallest MRL output dimension the models were trained for.
MIN_DIMENSIONS = 32

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


def format_rerank_body(query: str, document: str, instruction: str) -> str:
    r"""Build the user-turn body that sits between :data:`RERANK_PREFIX` and :data:`RERANK_SUFFIX`.

    Only this part is ever truncated; the prefix and suffix are kept whole.

    Example:
        >>> format_rerank_body("q", "d", "t")
        '<Instruct>: t\n<Query>: q\n<Document>: d'
    """
    return RERANK_BODY_TEMPLATE.format(instruction=instruction, query=query, document=document)
