"""Fine-tuning end to end: it learns held-out retrieval, saves a plain model, resumes after a kill.

Real text nobody here wrote: the standard library's docstrings (queries) and function sources
(documents), from :func:`qwen3_rag.eval.stdlib_code_search`; training and evaluation modules are
disjoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qwen3_rag.core import Qwen3Embedder, Qwen3Reranker
from qwen3_rag.eval import DEFAULT_MODULES, load_beir, stdlib_code_search
from qwen3_rag.train.trainer import finetune_embedder, finetune_reranker

from tiny_models import build_checkpoint

HELD_OUT = ["calendar", "fractions", "ipaddress", "ftplib"]
#: Every other default module (about 860 pairs): many distinct pairs, so the model cannot just
#: memorise a few of them in the steps it gets.
TRAIN_MODULES = [m for m in DEFAULT_MODULES if m not in HELD_OUT]
#: Wider than the suite's tiny models, still a few MB of layers (the 151k-row vocabulary aside).
SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


@pytest.fixture(scope="module")
def stdlib(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stdlib")
    train = stdlib_code_search(root / "train", modules=TRAIN_MODULES, split="train")
    held = stdlib_code_search(root / "held", modules=HELD_OUT)
    return train, held


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "emb"
    return build_checkpoint(
        path, "embedding", shape=SHAPE, eos_postprocessor=True, initializer_range=0.02, seed=5
    )


def _jsonl(beir: Path, out: Path, limit: int | None = None) -> Path:
    ds = load_beir(beir, split="train")
    rows = []
    for qid, query in list(ds.queries.items())[:limit]:
        pos = [ds.corpus[d] for d, rel in ds.qrels[qid].items() if rel > 0]
        rows.append(json.dumps({"query": query, "pos": pos}))
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)  # 110 s on idle cores; 380 s measured on loaded shared ones
def test_finetuned_embedder_is_evaluated_and_loads_everywhere(
    tmp_path: Path, stdlib: tuple[Path, Path], base: Path
):
    train, held = stdlib
    # Measured (2 cores): a small learning rate with weight decay and a soft temperature, over
    # many distinct pairs, is what makes the random model generalise to modules it never saw;
    # 3e-3 without decay on 10 modules memorises the pairs and held-out nDCG@10 stays near 0.065.
    result = finetune_embedder(
        train,
        model=base,
        output=tmp_path / "out",
        eval_data=held,
        lora_rank=0,
        learning_rate=1e-3,
        weight_decay=0.1,
        batch_size=32,
        max_steps=150,
        save_steps=75,
        max_length=64,
        temperature=0.1,
        merge_last=2,
        show_progress=False,
    )
    # Held-out evaluation before training and at each checkpoint, in the result and the log.
    assert [e["step"] for e in result.evaluations] == [0, 75, 150, 150]
    assert result.evaluations[-1].get("merged")  # the slerp of steps 75 and 150, evaluated
    # Chance: one relevant function among the held-out corpus, ranked uniformly at random.
    n_docs = len(load_beir(held).corpus)
    chance = sum(1 / np.log2(rank + 1) for rank in range(1, 11)) / n_docs
    ndcg = [e["metrics"]["ndcg@10"] for e in result.evaluations]
    # Measured with the evaluation at the training max_length (64): untrained 0.050, step 75
    # 0.085, step 150 0.115; chance 0.029 (156 functions). It now runs at eval's default length
    # and the same bounds hold.
    untrained, trained = ndcg[0], ndcg[2]
    assert trained >= 2 * untrained and trained >= 3 * chance, (ndcg, chance)
    assert min(ndcg[1:]) > untrained, ndcg
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").open()]
    assert [r["step"] for r in log if "eval" in r] == [0, 75, 150, 150]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 151))
    assert all(r["tokens_per_second"] > 0 for r in steps)
    # It learns the training pairs: the loss falls from about log(batch) by more than half.
    first, last = np.mean([r["loss"] for r in steps[:3]]), np.mean([r["loss"] for r in steps[-3:]])
    assert last < 0.5 * first, (first, last)

    # The saved folder is a plain checkpoint: the runtime and transformers agree on it.
    out = result.output
    texts = ["Return the number of days in a month.", "def f(x):\n    return x + 1\n"]
    emb = Qwen3Embedder(out, device="cpu")
    ours = emb.embed_documents(texts)
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out, padding_side="left")
    model = AutoModel.from_pretrained(out).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state[:, -1]  # left padding: the last token
    ref = torch.nn.functional.normalize(hidden, dim=-1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # sentence-transformers reads the pooling and the query prompt the run wrote.
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode(texts), ours, atol=1e-5)
    q = "Return the number of days in a month."
    np.testing.assert_allclose(
        st.encode([q], prompt_name="query"), emb.embed_queries([q]), atol=1e-5
    )


def _cli(data: Path, model: Path, output: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "qwen3_rag",
        "finetune",
        "embedder",
        str(data),
        "--model",
        str(model),
        "--output",
        str(output),
        "--max-steps",
        "12",
        "--save-steps",
        "3",
        "--batch-size",
        "8",
        "--lora-rank",
        "4",
        "--lora-dropout",
        "0.1",
        "--max-length",
        "64",
        "--chunk-tokens",
        "256",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_resume_after_sigkill_matches_an_uninterrupted_run(
    tmp_path: Path, stdlib: tuple[Path, Path], base: Path
):
    data = _jsonl(stdlib[0], tmp_path / "train.jsonl", limit=64)
    whole = _cli(data, base, tmp_path / "whole")
    killed = _cli(data, base, tmp_path / "killed")
    # Killed once the first checkpoint is complete, in the middle of the next steps.
    deadline = time.monotonic() + 120
    first = tmp_path / "killed" / "checkpoints" / "step-0000003"
    while not first.exists():
        assert killed.poll() is None, killed.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "checkpoints" / "step-0000012").exists()
    resumed = _cli(data, base, tmp_path / "killed", "--resume")
    for proc in (whole, resumed):
        _, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err.decode()[-2000:]
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    base_w = load_file(str(base / "model.safetensors"))
    assert any(not torch.equal(a[n], base_w[n]) for n in a)  # it did train
    logs = [
        [json.loads(line) for line in (tmp_path / d / "train_log.jsonl").open()]
        for d in ("whole", "killed")
    ]
    assert [r["step"] for r in logs[1]] == list(range(1, 13))
    assert [r["loss"] for r in logs[1]] == pytest.approx([r["loss"] for r in logs[0]], abs=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_reranker_finetuning_lowers_its_loss_and_learns_the_pairs(
    tmp_path: Path, stdlib: tuple[Path, Path]
):
    base = build_checkpoint(tmp_path / "rr", "reranker", shape=SHAPE, initializer_range=0.1)
    ds = load_beir(stdlib[0], split="train")
    ids = list(ds.queries)[:24]
    from qwen3_rag.train.data import TrainExample

    docs = [ds.corpus[next(iter(ds.qrels[q]))] for q in ids]
    examples = [
        TrainExample(
            query=ds.queries[q],
            pos=[docs[i]],
            neg=[docs[(i + 1) % len(ids)], docs[(i + 7) % len(ids)]],
            instruction=None,
        )
        for i, q in enumerate(ids)
    ]
    rr = Qwen3Reranker(base, device="cpu", max_length=160)

    def margin(model: Qwen3Reranker) -> tuple[float, int]:
        """Mean P(yes) gap of the positive over the best negative; queries it ranks first."""
        gaps = []
        for ex in examples:
            pos, *neg = model.score(ex.query, [*ex.pos, *ex.neg])
            gaps.append(pos - max(neg))
        return float(np.mean(gaps)), sum(g > 0 for g in gaps)

    start = margin(rr)
    result = finetune_reranker(
        examples,
        model=base,
        output=tmp_path / "out",
        batch_size=8,
        negatives=2,
        max_steps=15,
        learning_rate=2e-3,
        lora_rank=8,
        max_length=160,
        show_progress=False,
    )
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").open()]
    losses = [r["loss"] for r in log]
    # Full-vocabulary loss: it starts near log(151669) = 11.9 on random weights.
    assert np.mean(losses[:3]) > 10 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 2, losses
    # The saved folder is a reranker the runtime loads, and it learned the pairs: measured, the
    # mean gap rose from -0.040 to -0.011 and the positive came first for 10 queries, not 5.
    gap, first = margin(Qwen3Reranker(result.output, device="cpu", max_length=160))
    assert gap > start[0] + 0.01 and first > start[1], (start, (gap, first))
