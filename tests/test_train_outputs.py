"""What a fine-tuning run leaves behind: the saved model's prompts and length, the log, the
evaluation rows and the checkpoint it keeps; and each instance's own hard negatives.

Short runs on the suite's tiny checkpoints and real text (standard-library docstrings and
function sources).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train_loss import reference_loss

from qwen3_rag.core import EmbedderConfig, Qwen3Embedder, Qwen3Reranker, format_query
from qwen3_rag.eval import (
    bm25_run,
    compute_metrics,
    evaluate_embedder,
    load_beir,
    rerank_run,
    stdlib_code_search,
)
from qwen3_rag.train.data import TrainExample
from qwen3_rag.train.options import TrainingOptions
from qwen3_rag.train.tasks import _EmbeddingTask
from qwen3_rag.train.trainer import finetune_embedder, finetune_reranker

TASK = "Given a docstring sentence, retrieve the Python function it documents"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[TrainExample], Path]:
    """12 training pairs (heapq, difflib) and a held-out BEIR folder (fractions)."""
    root = tmp_path_factory.mktemp("stdlib")
    train = load_beir(stdlib_code_search(root / "train", modules=["heapq", "difflib"]))
    held = stdlib_code_search(root / "held", modules=["fractions"])
    ids = sorted(train.queries)[:12]
    docs = [train.corpus[next(iter(train.qrels[q]))] for q in ids]
    examples = [
        TrainExample(
            query=train.queries[q],
            pos=[docs[i]],
            neg=[docs[(i + j) % len(docs)] for j in (1, 2, 3)][: i % 4],  # 0 to 3 each
            instruction=None if i % 3 == 0 else TASK,  # TASK for 8 of 12
        )
        for i, q in enumerate(ids)
    ]
    return examples, held


@pytest.mark.slow
@pytest.mark.timeout(180)  # about 15 s on 2 shared cores
def test_the_saved_model_embeds_queries_with_the_trained_instruction(
    tmp_path: Path, data, embed_eos_path: str
):
    examples, _ = data
    result = finetune_embedder(
        examples,
        model=embed_eos_path,
        output=tmp_path / "out",
        max_steps=3,
        batch_size=8,  # 12 instances: 1.5 steps per epoch
        lora_rank=0,
        learning_rate=1e-4,
        max_length=64,
        show_progress=False,
    )
    out = result.output
    settings = json.loads((out / "config_sentence_transformers.json").read_text())
    assert settings["prompts"] == {"query": format_query("", TASK), "document": ""}
    length = json.loads((out / "sentence_bert_config.json").read_text())
    assert length["max_seq_length"] == EmbedderConfig().max_length == 8192
    # The packing attention is a runtime choice: the checkpoint names no attention kernel.
    assert "attn" not in (out / "config.json").read_text()
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 8192
    ours = Qwen3Embedder(out, device="cpu")  # the folder's trained task is the default
    assert ours.instruction == TASK
    queries = [ex.query for ex in examples[:3]]
    np.testing.assert_allclose(
        st.encode(queries, prompt_name="query"), ours.embed_queries(queries), atol=1e-5
    )
    log = [json.loads(line) for line in (out / "train_log.jsonl").open()]
    # The epochs completed after each step (it read one step behind).
    assert [r["epoch"] for r in log] == [0.5, 1.0, 1.5]


@pytest.mark.slow
def test_each_instance_trains_with_its_own_hard_negatives(data, embed_eos_path: str):
    """Rows with 0-3 negatives and negatives=3: the step's loss is eq. 1 with ragged lists."""
    examples, _ = data
    path = embed_eos_path
    opts = TrainingOptions(lora_rank=0, max_length=64, negatives=3, temperature=0.05)
    task = _EmbeddingTask(path, {}, opts, torch.device("cpu"))
    task.tokenize(path, examples)
    task.load()
    assert sorted({len(i.neg) for i in task.instances}) == [0, 1, 2, 3]
    # No instance has more than 3, so each takes all of its own: nothing left to chance.
    loss, _ = task.step(task.instances, random.Random(0))
    emb = Qwen3Embedder(path, device="cpu", max_length=64)
    q = np.concatenate(
        [emb.embed_queries([ex.query], instruction=ex.instruction) for ex in examples]
    )
    pos = emb.embed_documents([ex.pos[0] for ex in examples])
    neg = [emb.embed_documents(ex.neg) for ex in examples]
    t = [torch.from_numpy(x).double() for x in (q, pos)]
    want = reference_loss(
        t[0], t[1], [torch.from_numpy(n).double() for n in neg], tau=0.05, margin=opts.margin
    )
    assert loss == pytest.approx(want, rel=1e-4)
    # The old behaviour, every instance cut to the shortest list (none), gives another loss.
    assert abs(reference_loss(t[0], t[1], None, tau=0.05, margin=opts.margin) - want) > 1e-3


@pytest.mark.slow
@pytest.mark.timeout(180)  # about 15 s on 2 shared cores
def test_evaluation_runs_at_evals_length_and_keep_best_keeps_the_best(
    tmp_path: Path, data, embed_eos_path: str
):
    examples, held = data
    path = embed_eos_path
    dataset = load_beir(held)
    result = finetune_embedder(
        examples,
        model=path,
        output=tmp_path / "out",
        eval_data=held,
        max_steps=3,
        save_steps=1,
        batch_size=6,
        lora_rank=0,
        learning_rate=3e-3,
        max_length=24,  # shorter than most sources: it would change the evaluation
        keep_best="mrr@10",
        show_progress=False,
    )
    plain = evaluate_embedder(Qwen3Embedder(path, device="cpu", instruction=TASK), dataset)
    cut = evaluate_embedder(
        Qwen3Embedder(path, device="cpu", instruction=TASK, max_length=24), dataset
    )
    first = result.evaluations[0]
    assert first["step"] == 0 and plain != cut
    assert {k: first["metrics"][k] for k in plain} == pytest.approx(plain, abs=1e-6)
    # The output is the checkpoint with the highest held-out mrr@10 (the earliest of equals).
    scores = [(e["metrics"]["mrr@10"], -e["step"]) for e in result.evaluations[1:]]
    best = -max(scores)[1]
    kept = load_file(str(result.output / "model.safetensors"))
    want = load_file(
        str(tmp_path / "out" / "checkpoints" / f"step-{best:07d}" / "model.safetensors")
    )
    assert all(torch.equal(kept[n], want[n]) for n in want)
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").open()]
    assert log[-1] == {
        "step": 3,
        "kept": f"step-{best:07d}",
        "metric": "mrr@10",
        "value": pytest.approx(max(scores)[0]),
    }


@pytest.mark.slow
def test_a_restart_before_the_first_checkpoint_logs_step_0_once(
    tmp_path: Path, data, embed_eos_path: str
):
    examples, held = data
    out = tmp_path / "out"
    out.mkdir()
    # What a run killed after its step-0 evaluation and two steps leaves: no checkpoint.
    (out / "train_log.jsonl").write_text(
        json.dumps({"step": 0, "eval": {"ndcg@10": 0.1}})
        + "\n"
        + json.dumps({"step": 1, "loss": 1.0})
        + "\n"
        + '{"step": 2, "lo'
    )
    finetune_embedder(
        examples[1:5],  # TASK for 3 of 4
        model=embed_eos_path,
        output=out,
        eval_data=held,
        eval_max_length=48,
        resume=True,
        max_steps=1,
        lora_rank=4,
        max_length=64,
        show_progress=False,
    )
    log = [json.loads(line) for line in (out / "train_log.jsonl").open()]
    assert [(r["step"], "eval" in r) for r in log] == [(0, True), (1, False), (1, True)]
    again = evaluate_embedder(
        Qwen3Embedder(embed_eos_path, device="cpu", instruction=TASK, max_length=48),
        load_beir(held),
    )
    assert log[0]["eval"] == pytest.approx(again, abs=1e-6)  # --eval-max-length honoured


@pytest.mark.slow
@pytest.mark.timeout(180)  # about 15 s on 2 shared cores
def test_the_reranker_is_evaluated_on_bm25s_candidates(tmp_path: Path, data, reranker_path: str):
    examples, held = data
    path = reranker_path
    result = finetune_reranker(
        [ex for ex in examples if ex.neg],
        model=path,
        output=tmp_path / "out",
        eval_data=held,
        max_steps=1,
        lora_rank=4,
        max_length=160,
        show_progress=False,
    )
    assert [e["step"] for e in result.evaluations] == [0, 1]
    dataset = load_beir(held)
    reranker = Qwen3Reranker(path, device="cpu", instruction=TASK)
    run = rerank_run(reranker, dataset, bm25_run(dataset, 30), 30)
    want = compute_metrics(dataset.qrels, run, list(result.evaluations[0]["metrics"]))
    assert result.evaluations[0]["metrics"] == pytest.approx(want, abs=1e-6)
    assert 0 < want["ndcg@10"] < 1
