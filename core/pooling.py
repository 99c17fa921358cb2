"""Pure tensor math: last-token pooling, MRL truncation with normalisation, the reranker head."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at each row's last attended position, for left or right padding.

    The position comes from the mask alone: Qwen3's pad id equals its EOS id (151643), so
    comparing ids with the pad id would pool the wrong token.

    Args:
        hidden: ``[batch, seq, hidden]`` states.
        attention_mask: ``[batch, seq]``, 1 for real tokens.

    Returns:
        ``[batch, hidden]``.

    Example:
        >>> h = torch.arange(6.0).reshape(2, 3, 1)
        >>> last_token_pool(h, torch.tensor([[0, 1, 1], [1, 1, 0]])).flatten().tolist()
        [2.0, 4.0]
    """
    seq_len = attention_mask.shape[1]
    last = seq_len - 1 - attention_mask.flip(dims=[1]).to(torch.int64).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def truncate_and_normalize(embeddings: torch.Tensor, dimensions: int | None) -> torch.Tensor:
    """Keep the first ``dimensions`` values (MRL), then L2-normalise in float32.

    Normalising *after* slicing is what the model card does; the other order gives vectors
    that are not unit length.

    Example:
        >>> truncate_and_normalize(torch.tensor([[3.0, 4.0, 12.0]]), 2).tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    x = embeddings.float()
    if dimensions is not None:
        x = x[:, :dimensions]
    return F.normalize(x, p=2, dim=1)


def yes_no_logit(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """``z_yes - z_no`` (the log-odds of "yes") from final hidden states, in float32.

    ``z_yes - z_no == h · (W_yes - W_no)``, so one float32 dot product with
    ``head = W_yes - W_no`` replaces the vocabulary-sized LM head.

    Args:
        hidden: ``[batch, hidden]`` states at the last position.
        head: ``[hidden]`` float32 vector ``W_yes - W_no``.

    Example:
        >>> yes_no_logit(torch.tensor([[2.0, 0.0]]), torch.tensor([1.5, 9.0])).tolist()
        [3.0]
    """
    return hidden.float() @ head


def yes_probability(logits: torch.Tensor) -> torch.Tensor:
    """P("yes") against P("no") from :func:`yes_no_logit`'s log-odds.

    ``softmax([z_no, z_yes])[1] == sigmoid(z_yes - z_no)``. Every caller turns log-odds into
    scores here, so the same log-odds give the same bits wherever they are scored.

    Example:
        >>> yes_probability(torch.tensor([0.0])).tolist()
        [0.5]
    """
    return torch.sigmoid(logits)
