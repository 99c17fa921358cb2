"""The paper's embedding loss against a reference written from the formula, term by term."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qwen3_rag.train import contrastive_loss, reranker_loss
from qwen3_rag.train.loss import DEFAULT_TEMPERATURE

TERMS = ("neg", "qq", "dd", "qd")


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(sum(float(x) * float(y) for x, y in zip(a, b, strict=True)))


def reference_loss(q, pos, neg, *, tau, margin, pos_ids=None, score_masked=TERMS, id_masked=True):
    """eq. 1 with plain Python floats: one loop per term of Z_i, each with its own mask.

    ``score_masked`` names the terms whose mask applies the score condition, ``id_masked`` says
    whether the in-batch terms drop instances sharing the positive: the tests switch each off
    to show the constructed cases depend on it.
    """
    n = len(q)
    ids = list(range(n)) if pos_ids is None else list(pos_ids)
    total = 0.0
    for i in range(n):
        s_pos = dot(q[i], pos[i])
        limit = s_pos + margin
        z = math.exp(s_pos / tau)

        def kept(score: float, term: str) -> bool:
            return not (term in score_masked and score > limit)  # noqa: B023

        if neg is not None:
            for k in range(len(neg[i])):
                s = dot(q[i], neg[i][k])
                if kept(s, "neg"):
                    z += math.exp(s / tau)
        for j in range(n):
            if j == i or (id_masked and ids[j] == ids[i]):
                continue
            for term, s in (
                ("qq", dot(q[i], q[j])),
                ("dd", dot(pos[i], pos[j])),
                ("qd", dot(q[i], pos[j])),
            ):
                if kept(s, term):
                    z += math.exp(s / tau)
        total += -math.log(math.exp(s_pos / tau) / z)
    return total / n


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def random_batch(n=6, k=3, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = unit(torch.randn(n, d, generator=g, dtype=dtype))
    pos = unit(q + 0.8 * torch.randn(n, d, generator=g, dtype=dtype))
    neg = unit(q[:, None] + 1.2 * torch.randn(n, k, d, generator=g, dtype=dtype))
    return q, pos, neg


def trap_batch(dtype=torch.float64):
    """A batch where each kind of term holds one negative far above its positive's score.

    Instance 0 has a weak positive (cosine 0.3); then q_1 = q_0 (query-query), d_2+ is almost
    d_0+ (doc-doc), d_3+ is almost q_0 (query-doc), and q_0's first hard negative is almost q_0.
    """
    g = torch.Generator().manual_seed(7)
    d = 12
    base = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))[0].T  # orthonormal rows
    q = torch.stack([base[0], base[0], base[4], base[5], base[6]])
    pos = torch.stack(
        [
            unit(0.3 * base[0] + math.sqrt(1 - 0.09) * base[1]),
            unit(base[0] + 0.5 * base[7]),
            unit(0.3 * base[0] + math.sqrt(1 - 0.09) * base[1] + 0.05 * base[8]),
            unit(base[0] + 0.2 * base[9]),
            unit(base[6] + 0.7 * base[10]),
        ]
    )
    neg = torch.stack(
        [
            torch.stack([unit(base[0] + 0.1 * base[2]), base[3]]),
            *[torch.stack([base[8 + i], base[11]]) for i in range(4)],
        ]
    )
    return unit(q), pos, neg


@pytest.mark.parametrize("with_negatives", [True, False])
@pytest.mark.parametrize(("tau", "margin"), [(0.05, 0.1), (0.02, 0.0), (0.5, 10.0)])
def test_matches_the_formula_on_random_batches(with_negatives, tau, margin):
    q, pos, neg = random_batch()
    neg = neg if with_negatives else None
    got = contrastive_loss(q, pos, neg, temperature=tau, margin=margin)
    want = reference_loss(q, pos, neg, tau=tau, margin=margin)
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_the_random_batches_exercise_the_mask():
    # The margin-0 case above must mask some terms and keep others, or it proves nothing.
    q, pos, neg = random_batch()
    kept_all = reference_loss(q, pos, neg, tau=0.02, margin=0.0, score_masked=())
    assert kept_all != pytest.approx(reference_loss(q, pos, neg, tau=0.02, margin=0.0))


def test_every_term_is_masked_by_the_score_condition():
    q, pos, neg = trap_batch()
    tau, margin = 0.05, 0.1
    got = float(contrastive_loss(q, pos, neg, temperature=tau, margin=margin))
    assert got == pytest.approx(reference_loss(q, pos, neg, tau=tau, margin=margin), rel=1e-10)
    for term in TERMS:
        # Without this term's mask the loss is far larger: the trap batch really tests it.
        unmasked = reference_loss(
            q, pos, neg, tau=tau, margin=margin, score_masked=tuple(t for t in TERMS if t != term)
        )
        assert unmasked > got + 1.0, term


def test_the_doc_doc_term_is_masked_unlike_ms_swift():
    q, pos, neg = trap_batch()
    swift_like = reference_loss(q, pos, neg, tau=0.05, margin=0.1, score_masked=("neg", "qq", "qd"))
    got = float(contrastive_loss(q, pos, neg, temperature=0.05, margin=0.1))
    assert got < swift_like - 1.0


def test_a_term_scoring_exactly_at_the_margin_is_kept():
    # The mask drops scores *above* s(q_i, d_i+) + margin: one exactly at the limit stays.
    e = torch.eye(4, dtype=torch.float64)
    q, pos = e[:2], torch.stack([e[0], e[2]])  # s(q_0, d_0+) = 1, s(q_1, d_1+) = 0
    neg = torch.stack([e[None, 3], e[None, 3]])
    got = contrastive_loss(q, pos, neg, temperature=0.5, margin=0.0)
    assert float(got) == pytest.approx(reference_loss(q, pos, neg, tau=0.5, margin=0.0))
    # q_1's negative scores 0, equal to its positive's 0: kept, so Z_1 has more than e^0 + ...
    dropped = reference_loss(q, pos, neg, tau=0.5, margin=-1e-9)
    assert float(got) != pytest.approx(dropped)


def test_shared_positives_drop_every_in_batch_term_of_that_instance():
    # Instances 0 and 1 are two queries of one document; 2 and 3 are unrelated.
    q, pos, neg = random_batch(n=4, k=2)
    g = torch.Generator().manual_seed(11)
    q[1] = unit(q[0] + 2.0 * torch.randn(q.shape[1], generator=g, dtype=q.dtype))
    pos[1] = pos[0]
    ids = ["doc-a", "doc-a", ("b", 2), 3]
    tau, margin = 0.05, 0.1
    for negatives in (neg, None):
        got = float(
            contrastive_loss(q, pos, negatives, temperature=tau, margin=margin, pos_ids=ids)
        )
        want = reference_loss(q, pos, negatives, tau=tau, margin=margin, pos_ids=ids)
        assert got == pytest.approx(want, rel=1e-10)
        # Without the ids, d_1+ = d_0+ is scored as q_0's negative at exactly its positive's score.
        plain = reference_loss(q, pos, negatives, tau=tau, margin=margin)
        assert float(contrastive_loss(q, pos, negatives, temperature=tau, margin=margin)) == (
            pytest.approx(plain, rel=1e-10)
        )
        assert plain > got + 0.1


def test_pos_ids_leave_hard_negatives_alone():
    # A hard negative that is the same vector as another instance's shared positive still
    # counts: hard negatives are masked by their score only.
    q, pos, neg = random_batch(n=3, k=1)
    pos[1] = pos[0]
    neg[0, 0] = unit(pos[0] - 0.5 * q[0])  # scores below the positive
    ids = [0, 0, 1]
    got = float(contrastive_loss(q, pos, neg, temperature=0.05, pos_ids=ids))
    assert got == pytest.approx(
        reference_loss(q, pos, neg, tau=0.05, margin=0.1, pos_ids=ids), rel=1e-10
    )
    without = float(contrastive_loss(q, pos, neg[:, :0], temperature=0.05, pos_ids=ids))
    assert got > without


def test_default_temperature_is_documented_value():
    q, pos, neg = random_batch()
    got = contrastive_loss(q, pos, neg)
    assert DEFAULT_TEMPERATURE == 0.01
    assert float(got) == pytest.approx(reference_loss(q, pos, neg, tau=0.01, margin=0.1), rel=1e-9)


def test_gradients_match_finite_differences_in_float64():
    q, pos, neg = random_batch(n=4, k=2, d=6, seed=3)
    tau, margin = 0.1, 0.05
    # The mask is piecewise constant: keep every score clear of its threshold so the finite
    # differences never step across it.
    s_pos = (q * pos).sum(-1, keepdim=True)
    scores = torch.cat([torch.einsum("nd,nkd->nk", q, neg), q @ q.T, pos @ pos.T, q @ pos.T], dim=1)
    gap = (scores - s_pos - margin).abs()
    assert float(gap.min()) > 1e-3
    assert bool((scores > s_pos + margin).any()), "some term must be masked"
    ids = [0, 1, 1, 2]

    def f(qr, pr, nr):
        return contrastive_loss(
            unit(qr), unit(pr), unit(nr), temperature=tau, margin=margin, pos_ids=ids
        )

    inputs = tuple(t.clone().requires_grad_(True) for t in (q, pos, neg))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    without_neg = tuple(t.clone().requires_grad_(True) for t in (q, pos))
    assert torch.autograd.gradcheck(
        lambda a, b: contrastive_loss(unit(a), unit(b), temperature=tau, margin=margin),
        without_neg,
    )


def test_half_precision_inputs_are_scored_in_float32():
    q, pos, neg = random_batch(dtype=torch.float32)
    full = contrastive_loss(q, pos, neg, temperature=0.05)
    half = contrastive_loss(
        unit(q.bfloat16().float()).bfloat16(),
        unit(pos.bfloat16().float()).bfloat16(),
        unit(neg.bfloat16().float()).bfloat16(),
        temperature=0.05,
    )
    assert half.dtype == torch.float32
    assert float(half) == pytest.approx(float(full), rel=0.05)


def test_a_single_instance_has_only_its_hard_negatives():
    q, pos, neg = random_batch(n=1, k=2)
    got = contrastive_loss(q, pos, neg, temperature=0.05, margin=1.0)
    assert float(got) == pytest.approx(reference_loss(q, pos, neg, tau=0.05, margin=1.0))
    assert float(contrastive_loss(q, pos, temperature=0.05)) == pytest.approx(0.0, abs=1e-12)


def test_masked_negative_slots_count_as_absent_for_ragged_negatives():
    """Instances with 3, 1 and 0 hard negatives, padded to 3 slots with unnormalised filler."""
    q, pos, neg = random_batch(n=3, k=3)
    kept = [3, 1, 0]
    slots = torch.tensor([[k < n for k in range(3)] for n in kept])
    padded = torch.where(slots[..., None], neg, torch.full_like(neg, 5.0))  # norm 20, finite
    q = q.clone().requires_grad_(True)
    got = contrastive_loss(q, pos, padded, temperature=0.05, margin=0.3, neg_mask=slots)
    ragged = [neg[i, :n] for i, n in enumerate(kept)]
    want = reference_loss(q.detach(), pos, ragged, tau=0.05, margin=0.3)
    assert float(got) == pytest.approx(want, rel=1e-12)
    # Without the mask the filler would be negatives (and fail the norm check).
    with pytest.raises(ValueError, match=r"neg\[1, 1\] has L2 norm 20"):
        contrastive_loss(q, pos, padded, temperature=0.05, margin=0.3)
    (grad,) = torch.autograd.grad(got, q)
    assert bool(torch.isfinite(grad).all())
    with pytest.raises(ValueError, match=r"neg_mask has shape \(3, 2\); expected shape \(3, 3\)"):
        contrastive_loss(q, pos, padded, neg_mask=slots[:, :2])


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (lambda q, p, n: (q[0], p, n), {}, r"q must be \[N, D\], got shape \(16,\)"),
        (lambda q, p, n: (q, p[:3], n), {}, r"pos must have q's shape .* got \(3, 16\)"),
        (lambda q, p, n: (q, p, n[:, 0]), {}, r"neg must be \[N, K, D\] .* got shape \(6, 16\)"),
        (lambda q, p, n: (q, p, n[:4]), {}, r"neg must be \[N, K, D\] with N=6"),
        (lambda q, p, n: (q, p, n[..., :8]), {}, r"D=16"),
        (lambda q, p, n: (q, 2 * p, n), {}, r"pos\[0\] has L2 norm 2, not 1"),
        (lambda q, p, n: (q, p, n * 0.5), {}, r"neg\[0, 0\] has L2 norm 0.5"),
        (lambda q, p, n: (q, p.float(), n), {}, r"pos is torch.float32 .* but q is torch.float64"),
        (lambda q, p, n: (q[:0], p[:0], None), {}, "at least one instance"),
        (lambda q, p, n: (q.long(), p, n), {}, "q must be a floating-point tensor"),
        (
            lambda q, p, n: (q, p, n),
            {"pos_ids": [1, 2]},
            "pos_ids has 2 items but q and pos have 6",
        ),
        (lambda q, p, n: (q, p, n), {"pos_ids": [[1]] * 6}, "hashable"),
        (lambda q, p, n: (q, p, n), {"temperature": 0.0}, "temperature must be a positive"),
        (lambda q, p, n: (q, p, n), {"temperature": float("nan")}, "temperature"),
        (lambda q, p, n: (q, p, n), {"margin": -0.1}, "margin must be a number >= 0"),
    ],
)
def test_bad_inputs_raise_naming_them(args, kwargs, message):
    q, pos, neg = random_batch()
    with pytest.raises(ValueError, match=message):
        contrastive_loss(*args(q, pos, neg), **kwargs)


# -- the reranker loss ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def causal(reranker_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(reranker_path, dtype=torch.float32)
    return model.eval()


def reranker_prompt(reranker_path, **options):
    from qwen3_rag.core import RerankerConfig
    from qwen3_rag.core.loading import load_tokenizer
    from qwen3_rag.core.reranker import RerankPrompt

    return RerankPrompt(load_tokenizer(Path(reranker_path)), RerankerConfig(**options))


PAIRS = [
    ("capital of China?", "The capital of China is Beijing.", True),
    ("capital of China?", "Gravity attracts two bodies.", False),
    ("what does gravity do?", "Gravity attracts two bodies towards each other.", True),
    ("what does gravity do?", "Berlin is the capital of Germany. " * 40, False),
]


def test_training_ids_are_the_inference_ids(reranker_path):
    from qwen3_rag.core import Qwen3Reranker

    for max_length in (8192, 90):  # 90 cuts the long document, as inference does
        prompt = reranker_prompt(reranker_path, max_length=max_length)
        rr = Qwen3Reranker(reranker_path, device="cpu", max_length=max_length)
        for query, doc, _ in PAIRS:
            ids, _ = prompt.encode(query, [doc], rr.instruction)
            assert ids == rr.encode_ids(query, [doc])


@pytest.mark.slow
def test_reranker_loss_matches_the_full_logits_reference(reranker_path, causal):
    from qwen3_rag.core.spec import DEFAULT_TASK, RERANK_NO, RERANK_YES

    prompt = reranker_prompt(reranker_path)
    tokenizer = prompt.tokenizer
    yes_id, no_id = tokenizer.token_id(RERANK_YES), tokenizer.token_id(RERANK_NO)
    seqs = [prompt.encode(q, [d], DEFAULT_TASK)[0][0] for q, d, _ in PAIRS]
    labels = [label for _, _, label in PAIRS]

    # Reference: every position's logits over the vocabulary, one unpadded pair at a time,
    # then -log softmax of the label token at the last position.
    causal.zero_grad()
    ref_total = 0.0
    for ids, label in zip(seqs, labels, strict=True):
        logits = causal(input_ids=torch.tensor([ids])).logits  # [1, T, V]
        logp = torch.log_softmax(logits[0, -1].double(), dim=-1)
        nll = -logp[yes_id if label else no_id] / len(seqs)
        nll.backward()
        ref_total += float(nll.detach())
    ref_grad = causal.lm_head.weight.grad.clone()
    ref_layer_grad = causal.model.layers[0].mlp.up_proj.weight.grad.clone()

    # The loss: the backbone's last hidden state at the answer position, times the LM head.
    causal.zero_grad()
    hidden = torch.cat(
        [causal.model(input_ids=torch.tensor([ids])).last_hidden_state[:, -1] for ids in seqs]
    )
    loss = reranker_loss(
        hidden, causal.get_output_embeddings().weight, labels, yes_id=yes_id, no_id=no_id
    )
    loss.backward()
    assert float(loss) == pytest.approx(ref_total, rel=1e-5)
    torch.testing.assert_close(causal.lm_head.weight.grad, ref_grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(
        causal.model.layers[0].mlp.up_proj.weight.grad, ref_layer_grad, rtol=1e-4, atol=1e-7
    )


def test_reranker_loss_is_the_whole_vocabulary_likelihood_not_the_yes_no_softmax(
    reranker_path, causal
):
    # The inference score is softmax over {yes, no}; the paper's loss is over every token, so
    # its value is larger than -log of that score (the other tokens take probability).
    from qwen3_rag.core import Qwen3Reranker
    from qwen3_rag.core.spec import DEFAULT_TASK, RERANK_NO, RERANK_YES

    prompt = reranker_prompt(reranker_path)
    yes_id, no_id = prompt.tokenizer.token_id(RERANK_YES), prompt.tokenizer.token_id(RERANK_NO)
    query, doc, _ = PAIRS[0]
    ids = prompt.encode(query, [doc], DEFAULT_TASK)[0][0]
    with torch.no_grad():
        hidden = causal.model(input_ids=torch.tensor([ids])).last_hidden_state[:, -1]
        head = causal.get_output_embeddings().weight
        loss_yes = float(reranker_loss(hidden, head, [True], yes_id=yes_id, no_id=no_id))
        loss_no = float(reranker_loss(hidden, head, [False], yes_id=yes_id, no_id=no_id))
    score = Qwen3Reranker(reranker_path, device="cpu").score(query, [doc])[0]
    # p(yes) / (p(yes) + p(no)) from the two losses is the inference score.
    assert 1 / (1 + math.exp(loss_yes - loss_no)) == pytest.approx(score, rel=1e-4)
    assert loss_yes > -math.log(score) + 1.0


@pytest.mark.parametrize(
    ("hidden", "head", "labels", "ids", "message"),
    [
        ((3,), (10, 4), [True], (1, 2), r"hidden must be an \[N, H\] tensor, got shape \(3,\)"),
        ((2, 4), (10, 5), [True, False], (1, 2), r"hidden is \(2, 4\) but lm_head is \(10, 5\)"),
        ((2, 4), (10, 4), [True], (1, 2), "labels has 1 items but hidden has 2 rows"),
        ((2, 4), (10, 4), [True, 1], (1, 2), r"labels\[1\] must be a bool"),
        ((2, 4), (10, 4), [True, False], (10, 2), "yes_id=10 is not a token id"),
        ((2, 4), (10, 4), [True, False], (1, -1), "no_id=-1"),
    ],
)
def test_reranker_loss_bad_inputs_raise_naming_them(hidden, head, labels, ids, message):
    with pytest.raises(ValueError, match=message):
        reranker_loss(torch.zeros(hidden), torch.zeros(head), labels, yes_id=ids[0], no_id=ids[1])
