"""Fine-tuning: GradCache and packing give the plain gradients; the trained inputs are inference's.

Fast tests only; the end-to-end runs (learning on real text, kills, the reranker) are in
``test_train_e2e.py``.
"""

from __future__ import annotations

import inspect
import json
import random
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from qwen3_rag.cli import main
from qwen3_rag.core import Qwen3Embedder
from qwen3_rag.core.loading import from_pretrained_kwargs
from qwen3_rag.core.packing import register_packed_sdpa
from qwen3_rag.core.pooling import truncate_and_normalize
from qwen3_rag.train.forward import cached_backward, final_hidden
from qwen3_rag.train.loss import contrastive_loss
from qwen3_rag.train.options import TrainingOptions
from qwen3_rag.train.tasks import _EmbeddingTask


def _stdlib_pairs(n: int) -> list[tuple[str, str]]:
    """(docstring first line, source) of ``n`` functions of ``json`` and ``textwrap``."""
    pairs = []
    for module in (json, textwrap, inspect):
        for _, fn in inspect.getmembers(module, inspect.isfunction):
            doc = inspect.getdoc(fn)
            if doc and fn.__module__ == module.__name__:
                pairs.append((doc.splitlines()[0], inspect.getsource(fn)[:300]))
    return pairs[:n]


def _model64(path: str) -> torch.nn.Module:
    model = AutoModel.from_pretrained(
        path, **from_pretrained_kwargs(torch.float32, register_packed_sdpa())
    )
    return model.double().train()


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.fixture(scope="module")
def rows(embed_eos_path: str) -> list[list[int]]:
    """8 queries (with the instruction), their 8 sources, 8 hard negatives: the embedder's ids."""
    emb = Qwen3Embedder(embed_eos_path, device="cpu", max_length=96)
    pairs = _stdlib_pairs(16)
    queries = emb.encode_queries([q for q, _ in pairs[:8]]).ids
    docs = emb.encode_documents([d for _, d in pairs]).ids
    return queries + docs


def _loss(emb: torch.Tensor) -> torch.Tensor:
    q, p, n = emb[:8], emb[8:16], emb[16:].reshape(8, 1, -1)
    return contrastive_loss(q, p, n, temperature=0.05, margin=0.1)


@pytest.mark.slow
def test_grad_cache_gives_the_one_batch_gradients(embed_eos_path: str, rows: list[list[int]]):
    model = _model64(embed_eos_path)
    model.requires_grad_(True)

    def encode(batch: list[list[int]]) -> torch.Tensor:
        return F.normalize(final_hidden(model, batch, packed=True, pad_id=0), dim=-1)

    # One forward and backward of all 24 inputs, without the cache.
    whole = _loss(encode(rows))
    whole.backward()
    reference = _grads(model)
    # Chunks of at most 200 tokens: several re-forwards, each given its cached gradient.
    cached = cached_backward(encode, rows, _loss, chunk_tokens=200)
    got = _grads(model)
    assert sum(len(r) for r in rows) > 4 * 200  # the cache really splits the batch
    assert float(cached) == pytest.approx(float(whole.detach()), rel=1e-12)
    assert reference.keys() == got.keys() and len(got) > 10
    for name, grad in reference.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-9, atol=1e-12, msg=name)
    assert any(float(g.abs().max()) > 1e-6 for g in got.values())


@pytest.mark.slow
def test_packed_step_equals_padded_step(embed_eos_path: str, rows: list[list[int]]):
    model = _model64(embed_eos_path)
    model.requires_grad_(True)
    results = {}
    for packed in (True, False):

        def encode(batch: list[list[int]], packed: bool = packed) -> torch.Tensor:
            hidden = final_hidden(model, batch, packed=packed, pad_id=151643)
            return F.normalize(hidden, dim=-1)  # in float64 (the embedder's is float32)

        loss = cached_backward(encode, rows, _loss, chunk_tokens=10_000)
        results[packed] = (float(loss), _grads(model))
    assert len({len(r) for r in rows}) > 5  # the padded batch really pads
    # Left padding shifts every row's RoPE positions (as the model card's batches do); the
    # rotation is relative, so only the float32 RoPE tables of transformers differ: float32
    # tolerances on a float64 run, far below any wrong position or mask.
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    assert results[True][1].keys() == results[False][1].keys()
    for name, grad in results[False][1].items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(results[True][1][name], grad, rtol=1e-5, atol=1e-5 * scale)


def test_training_inputs_and_vectors_are_the_embedders(embed_eos_path: str):
    """The trainer's ids are the embedder's ids, and its pooled vectors the embedder's vectors."""
    pairs = _stdlib_pairs(6)

    class Example:
        def __init__(self, query: str, pos: str, instruction: str | None) -> None:
            self.query, self.pos, self.neg, self.instruction = query, [pos], [], instruction

    examples = [Example(q, d, "Find the code" if i % 2 else None) for i, (q, d) in enumerate(pairs)]
    task = _EmbeddingTask(
        embed_eos_path, {}, TrainingOptions(lora_rank=0, max_length=64), torch.device("cpu")
    )
    task.tokenize(embed_eos_path, examples)
    task.load()
    emb = Qwen3Embedder(embed_eos_path, device="cpu", max_length=64)
    for i, (inst, ex) in enumerate(zip(task.instances, examples, strict=True)):
        task_text = ex.instruction or emb.instruction
        assert inst.query == emb.encode_queries([ex.query], task_text).ids[0], i
        assert task.table[inst.pos[0]] == emb.encode_ids([ex.pos[0]])[0], i
    with torch.no_grad():
        got = truncate_and_normalize(task._encoder()([i.query for i in task.instances]), None)
    want = np.concatenate(
        [emb.embed_queries([ex.query], instruction=ex.instruction) for ex in examples]
    )
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_finetune_cli_rejects_bad_input_in_one_line(tmp_path: Path, embed_eos_path: str, capsys):
    code = main(
        [
            "finetune",
            "embedder",
            str(tmp_path / "nope.jsonl"),
            "--model",
            embed_eos_path,
            "--output",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "nope.jsonl" in err and "does not exist" in err
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"query": "q", "pos": ["d"]}) + "\n", encoding="utf-8")
    code = main(
        [
            "finetune",
            "embedder",
            str(data),
            "--model",
            embed_eos_path,
            "--output",
            str(tmp_path / "out"),
            "--learning-rate",
            "-1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "learning_rate" in err and len(err.strip().splitlines()) == 1


def test_options_are_checked_early():
    with pytest.raises(ValueError, match="batch_size"):
        TrainingOptions(batch_size=0)
    with pytest.raises(TypeError, match="unknown training option"):
        TrainingOptions().replace(batchsize=3)
    assert TrainingOptions(lora_targets="q_proj, v_proj").lora_targets == ("q_proj", "v_proj")


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients(embed_eos_path: str):
    pairs = _stdlib_pairs(8)

    class Example:
        def __init__(self, query: str, pos: str) -> None:
            self.query, self.pos, self.neg, self.instruction = query, [pos], [], None

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        opts = TrainingOptions(lora_rank=4, max_length=64, gradient_checkpointing=checkpointing)
        task = _EmbeddingTask(embed_eos_path, {}, opts, torch.device("cpu"))
        task.tokenize(embed_eos_path, [Example(q, d) for q, d in pairs])
        task.load()
        # LoRA's B starts at zero: give it values so that A's gradients are not all zero too.
        with torch.no_grad():
            for name, p in task.trainable.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
        task.step(task.instances, random.Random(0))
        grads.append(
            {n: p.grad for n, p in task.trainable.named_parameters() if p.grad is not None}
        )
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 7 * 2  # A, B; 7 x 2 layers
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_lora_setup_shows_the_user_no_dependency_future_warning(embed_eos_path: str):
    import warnings

    class Example:
        def __init__(self, query: str, pos: str) -> None:
            self.query, self.pos, self.neg, self.instruction = query, [pos], [], None

    task = _EmbeddingTask(
        embed_eos_path, {}, TrainingOptions(lora_rank=4, max_length=64), torch.device("cpu")
    )
    task.tokenize(embed_eos_path, [Example(q, d) for q, d in _stdlib_pairs(2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task.load()
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], caught
    assert any(p.requires_grad for p in task.trainable.parameters())
