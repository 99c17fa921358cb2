r"""The Qwen3-Embedding paper's training objectives (arXiv 2506.05176, "Training Objective").

:func:`contrastive_loss` is the embedding model's InfoNCE loss with the paper's mask (eq. 1);
:func:`reranker_loss` is the reranker's supervised fine-tuning loss (eq. 2). Both are pure
tensor functions: the forward passes (packing, gradient caching, LoRA) belong to the trainer.
The reranker's inputs come from :class:`~qwen3_rag.core.reranker.RerankPrompt`, the very code
that builds them at inference, so training and inference see the same ids.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F

#: Temperature of :func:`contrastive_loss` when none is given. The paper states no value. The
#: Qwen3-Embedding repository's training guide (``docs/training/SWIFT.md``) sends users to
#: ms-swift, whose ``infonce`` loss defaults to ``INFONCE_TEMPERATURE=0.01``: the value the
#: authors' own tooling uses, at the low end of the 0.01-0.05 that public recipes use. A low
#: temperature suits the false-negative margin, which is stated in cosine units (0.1 / 0.01 is
#: 10 nats of logit).
DEFAULT_TEMPERATURE = 0.01

#: Cosine margin above the positive's score past which a negative counts as a likely false
#: negative and is masked (the paper's 0.1).
DEFAULT_MARGIN = 0.1

# How far from 1 a row's L2 norm may be: float32 normalisation is exact to ~1e-7, bfloat16 to
# ~4e-3; anything further means the caller passed unnormalised vectors, and the scores would not
# be cosines, so the margin would mean nothing.
_NORM_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
_DEFAULT_NORM_TOLERANCE = 1e-3


def contrastive_loss(
    q: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    margin: float = DEFAULT_MARGIN,
    pos_ids: Sequence[Hashable] | None = None,
    neg_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The paper's embedding loss, with its false-negative and duplicate mask on every term.

    .. math::

        L = -\frac1N \sum_i \log \frac{e^{s(q_i,d_i^+)/\tau}}{Z_i}

    with ``s`` the cosine similarity and

    ``Z_i = e^{s(q_i,d_i+)/τ} + Σ_k m_ik e^{s(q_i,d_ik-)/τ} + Σ_{j≠i} m_ij e^{s(q_i,q_j)/τ}
    + Σ_{j≠i} m_ij e^{s(d_i+,d_j+)/τ} + Σ_{j≠i} m_ij e^{s(q_i,d_j+)/τ}``:
    the positive, ``q_i``'s hard negatives, the other queries, the other positives against
    ``d_i+`` and the other positives against ``q_i``.

    The mask drops a term (sets its ``m`` to 0) when its score exceeds ``s(q_i, d_i+) + margin``
    (a likely unlabelled positive), and drops every in-batch term of an instance ``j`` whose
    positive is the same document as ``d_i+`` (per ``pos_ids``). Hard-negative terms are masked
    by the score condition only. Unlike ms-swift, the document-document term is masked too, as
    the paper writes. The mask is a constant: no gradient flows through the threshold.

    Args:
        q: ``[N, D]`` query embeddings (inputs formatted with the instruction, as at
            inference), L2-normalised.
        pos: ``[N, D]`` embeddings of each query's positive document, L2-normalised.
        neg: ``[N, K, D]`` embeddings of each query's ``K`` hard negatives, L2-normalised; None
            (or ``K = 0``) for in-batch negatives only.
        temperature: ``τ``, > 0. Default :data:`DEFAULT_TEMPERATURE` (0.01; see there).
        margin: Cosine margin of the false-negative mask, >= 0 (the paper's 0.1).
        pos_ids: One hashable per instance naming its positive document (a document id, or the
            text itself); equal ids mark the same document. None: every positive is distinct.
        neg_mask: ``[N, K]`` bool, True where ``neg[i, k]`` is one of instance ``i``'s hard
            negatives: instances with fewer than ``K`` fill the other slots with any finite
            values (their norms are not checked), which add no term. None: every slot is real.

    Returns:
        The mean loss over the ``N`` instances, a scalar (float32 for half-precision inputs,
        else the inputs' dtype).

    Raises:
        ValueError: If a shape, dtype or device disagrees (the message names the tensors and
            their shapes), a row is not L2-normalised, ``temperature``/``margin`` is out of
            range, or ``pos_ids`` has the wrong length.

    Example:
        >>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
        >>> d = torch.nn.functional.normalize(q + 0.1 * torch.randn(4, 8), dim=-1)
        >>> float(contrastive_loss(q, d, temperature=0.05)) >= 0
        True
    """
    slots = _check_neg_mask(neg_mask, neg)
    n = _check_embeddings(q, pos, neg, slots)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not temperature > 0 or temperature != temperature:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    same = _same_positive(pos_ids, n, q.device)

    # Half precision cannot hold scores / 0.01 to useful accuracy: compute in float32.
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, pos = q.to(work), pos.to(work)
    positive = (q * pos).sum(-1)  # [N]
    eye = torch.eye(n, dtype=torch.bool, device=q.device)
    in_batch_drop = eye | same  # j = i is no term; a shared positive is no negative
    columns = [positive[:, None]]
    if neg is not None and neg.shape[1] > 0:
        hard = torch.einsum("nd,nkd->nk", q, neg.to(work))
        columns.append(_masked(hard, positive, margin, None if slots is None else ~slots))
    for scores in (q @ q.T, pos @ pos.T, q @ pos.T):  # q-q, d+-d+, q-d+
        columns.append(_masked(scores, positive, margin, in_batch_drop))
    logits = torch.cat(columns, dim=1) / temperature
    # log(e^{s+/τ} / Z) = s+/τ - logsumexp(all kept terms); a masked term is -inf, i.e. e^x = 0.
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def reranker_loss(
    hidden: torch.Tensor,
    lm_head: torch.Tensor,
    labels: Sequence[bool] | torch.Tensor,
    *,
    yes_id: int,
    no_id: int,
) -> torch.Tensor:
    r"""The paper's reranker loss: ``L = -log p(l | P(q, d))``, averaged over the pairs.

    ``l`` is ``"yes"`` for a relevant pair and ``"no"`` for an irrelevant one, ``P(q, d)`` the
    inference prompt (build its ids with :class:`~qwen3_rag.core.reranker.RerankPrompt`), and
    ``p`` the model's probability of ``l`` over the *whole* vocabulary at the answer position:
    the softmax of ``hidden @ lm_head.T``. Only the answer position is projected (``N`` rows of
    logits, not ``N x tokens``), in float32.

    Args:
        hidden: ``[N, H]`` final hidden states (after the last norm) at each prompt's last token,
            the position whose next token is the answer.
        lm_head: ``[V, H]`` the LM head's weight (``model.get_output_embeddings().weight``; the
            token embeddings for a tied head).
        labels: ``N`` booleans, True for a relevant pair.
        yes_id: Token id of :data:`~qwen3_rag.core.spec.RERANK_YES` in the model's tokenizer.
        no_id: Token id of :data:`~qwen3_rag.core.spec.RERANK_NO`.

    Returns:
        The mean negative log-likelihood, a float32 scalar.

    Raises:
        ValueError: If the shapes disagree (named with their shapes), ``labels`` is not ``N``
            booleans, or a token id is outside the vocabulary.

    Example:
        >>> head = torch.eye(4)
        >>> h = torch.tensor([[0.0, 9.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]])
        >>> round(float(reranker_loss(h, head, [True, False], yes_id=1, no_id=2)), 4)
        0.0004
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"hidden must be an [N, H] tensor, got {_shape(hidden)}")
    if not isinstance(lm_head, torch.Tensor) or lm_head.dim() != 2:
        raise ValueError(f"lm_head must be a [V, H] weight, got {_shape(lm_head)}")
    if lm_head.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"hidden is {tuple(hidden.shape)} but lm_head is {tuple(lm_head.shape)}: their "
            "hidden sizes (last dimensions) differ"
        )
    vocab = lm_head.shape[0]
    for name, token in (("yes_id", yes_id), ("no_id", no_id)):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
            raise ValueError(f"{name}={token!r} is not a token id of the {vocab}-row lm_head")
    target = _labels(labels, hidden.shape[0], hidden.device)
    # One row of logits per pair, from the answer position only; float32 for the softmax.
    logits = F.linear(hidden.to(lm_head.dtype), lm_head).float()
    tokens = torch.where(target, yes_id, no_id)
    return F.cross_entropy(logits, tokens)


def _labels(labels: Sequence[bool] | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        if labels.dtype != torch.bool or labels.shape != (n,):
            raise ValueError(
                f"labels must be {n} booleans (one per row of hidden), got a {labels.dtype} "
                f"tensor of shape {tuple(labels.shape)}"
            )
        return labels.to(device)
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise ValueError(f"labels must be a sequence of {n} booleans, got {type(labels).__name__}")
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} items but hidden has {n} rows")
    for i, label in enumerate(labels):
        if not isinstance(label, bool):
            raise ValueError(f"labels[{i}] must be a bool (True: relevant), got {label!r}")
    return torch.tensor(list(labels), dtype=torch.bool, device=device)


def _shape(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)}"
    return type(x).__name__


def _masked(
    scores: torch.Tensor, positive: torch.Tensor, margin: float, drop: torch.Tensor | None
) -> torch.Tensor:
    """``scores`` with the terms whose mask is 0 set to -inf (a constant mask: no gradient)."""
    with torch.no_grad():
        mask = scores > positive[:, None] + margin
        if drop is not None:
            mask |= drop
    return scores.masked_fill(mask, float("-inf"))


def _same_positive(
    pos_ids: Sequence[Hashable] | None, n: int, device: torch.device
) -> torch.Tensor:
    """``[N, N]`` bool: True where instances ``i`` and ``j`` share their positive document."""
    if pos_ids is None:
        return torch.zeros(n, n, dtype=torch.bool, device=device)
    if isinstance(pos_ids, (str, bytes)) or not isinstance(pos_ids, Sequence):
        raise ValueError(
            f"pos_ids must be a sequence of {n} hashables (one per instance), got "
            f"{type(pos_ids).__name__}"
        )
    if len(pos_ids) != n:
        raise ValueError(f"pos_ids has {len(pos_ids)} items but q and pos have {n} rows")
    groups: dict[Hashable, int] = {}
    try:
        codes = [groups.setdefault(p, len(groups)) for p in pos_ids]
    except TypeError as e:
        raise ValueError(f"pos_ids must hold hashable values: {e}") from e
    ids = torch.tensor(codes, device=device)
    return ids[:, None] == ids[None, :]


def _check_neg_mask(mask: torch.Tensor | None, neg: torch.Tensor | None) -> torch.Tensor | None:
    """``mask`` checked against ``neg``'s ``[N, K]`` (None when every slot is a negative)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"neg_mask must be a bool tensor, got {_shape(mask)}")
    if neg is None or mask.shape != neg.shape[:2]:
        want = "no neg_mask without neg" if neg is None else f"shape {tuple(neg.shape[:2])}"
        raise ValueError(f"neg_mask has shape {tuple(mask.shape)}; expected {want}")
    return mask.to(neg.device)


def _check_embeddings(
    q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, slots: torch.Tensor | None
) -> int:
    """Validate the shapes, dtypes, devices and norms (of real negatives only); return ``N``."""
    named = {"q": q, "pos": pos} if neg is None else {"q": q, "pos": pos, "neg": neg}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if q.dim() != 2:
        raise ValueError(f"q must be [N, D], got shape {tuple(q.shape)}")
    if pos.shape != q.shape:
        raise ValueError(
            f"pos must have q's shape [N, D] = {tuple(q.shape)}, got {tuple(pos.shape)}"
        )
    if neg is not None and (
        neg.dim() != 3 or neg.shape[0] != q.shape[0] or neg.shape[2] != q.shape[1]
    ):
        raise ValueError(
            f"neg must be [N, K, D] with N={q.shape[0]} and D={q.shape[1]} (as q), got shape "
            f"{tuple(neg.shape)}"
        )
    if q.shape[0] == 0:
        raise ValueError("q and pos are empty: the loss needs at least one instance")
    for name, t in named.items():
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(
                f"{name} is {t.dtype} on {t.device} but q is {q.dtype} on {q.device}; "
                "pass every tensor with the same dtype and device"
            )
        if t.numel() == 0:
            continue
        with torch.no_grad():
            norms = t.float().norm(dim=-1)
            if name == "neg" and slots is not None:
                norms = norms.masked_fill(~slots, 1.0)  # filler slots: no term, any value
            worst = (norms - 1).abs().max()
        if float(worst) > _NORM_TOLERANCE.get(t.dtype, _DEFAULT_NORM_TOLERANCE):
            index = int((norms - 1).abs().flatten().argmax())
            at = list(torch.unravel_index(torch.tensor(index), norms.shape))
            where = ", ".join(str(int(i)) for i in at)
            raise ValueError(
                f"{name}[{where}] has L2 norm {float(norms.flatten()[index]):.6g}, not 1: the "
                "loss compares cosine similarities, so pass L2-normalised embeddings "
                "(torch.nn.functional.normalize(x, dim=-1))"
            )
    return int(q.shape[0])
