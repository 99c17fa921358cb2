"""Evaluation rows users can trust: trec_eval's numbers with its tie order, per-query values,
paired significance between rows, rows that say what they are, options refused before work."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from qwen3_rag.core import Qwen3Embedder
from qwen3_rag.eval import (
    Dataset,
    build_stdlib_dataset,
    evaluate,
    paired_p_value,
    per_query_metrics,
    write_trec_run,
)
from qwen3_rag.eval.evaluate import legend

ALL = ["ndcg@10", "recall@5", "recall@10", "mrr@10", "mrr@3", "map@100", "precision@5"]


def _tied_data(seed: int = 0) -> tuple[dict, dict]:
    """Qrels (graded) and a run whose scores tie often (one decimal), ids that sort oddly."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(40)] + ["D1", "a", "z9", "d10a"]
    qrels, run = {}, {}
    for q in range(30):
        relevant = rng.sample(docs, rng.randint(1, 4))
        qrels[f"q{q}"] = {d: rng.choice([1, 2]) for d in relevant}
        qrels[f"q{q}"][rng.choice(docs)] = 0  # a judged non-relevant document
        retrieved = rng.sample(docs, rng.randint(5, 25))
        run[f"q{q}"] = {d: round(rng.random(), 1) for d in retrieved}
    run["q0"] = dict.fromkeys(run["q0"], 0.5)  # all tied
    del run["q29"]  # a judged query the run does not answer
    return qrels, run


def _reference_rr(qrels: dict, docs: dict, cutoff: int) -> float:
    """Reciprocal rank at ``cutoff`` as trec_eval ranks: score descending, then id descending."""
    order = [d for d, _ in sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)]
    for rank, doc in enumerate(order[:cutoff], 1):
        if qrels.get(doc, 0) >= 1:
            return 1.0 / rank
    return 0.0


def test_every_metric_is_trec_eval_on_runs_with_ties():
    import pytrec_eval

    qrels, run = _tied_data()
    ours = per_query_metrics(qrels, run, ALL)
    assert list(ours) == list(qrels)
    measures = {"ndcg_cut.10", "recall.5", "recall.10", "map_cut.100", "P.5", "recip_rank"}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for qid in qrels:
        got = ours[qid]
        if qid not in run:  # trec_eval leaves it out of the mean; here it counts as zero
            assert set(got.values()) == {0.0}
            continue
        want = theirs[qid]
        assert got["ndcg@10"] == want["ndcg_cut_10"]
        assert got["recall@5"] == want["recall_5"]
        assert got["recall@10"] == want["recall_10"]
        assert got["map@100"] == want["map_cut_100"]
        assert got["precision@5"] == want["P_5"]
        # MRR: trec_eval's tie order too (the same order as the other metrics of the row).
        assert got["mrr@10"] == pytest.approx(_reference_rr(qrels[qid], run[qid], 10), abs=0)
        assert got["mrr@3"] == pytest.approx(_reference_rr(qrels[qid], run[qid], 3), abs=0)
        if len(run[qid]) <= 10:  # nothing cut: trec_eval's own recip_rank on the whole run
            assert got["mrr@10"] == want["recip_rank"]


def test_trec_run_files_rank_as_trec_eval_and_read_back_to_the_same_metrics(tmp_path):
    import pytrec_eval

    qrels, run = _tied_data(1)
    path = write_trec_run(run, tmp_path / "run.trec", "tied run")
    back: dict[str, dict[str, float]] = {}
    ranks: dict[str, list[tuple[int, str, float]]] = {}
    for line in path.read_text().splitlines():
        qid, _, doc, rank, score, tag = line.split()
        assert tag == "tied_run"
        back.setdefault(qid, {})[doc] = float(score)
        ranks.setdefault(qid, []).append((int(rank), doc, float(score)))
    assert back == run  # repr'd floats read back exactly
    for qid, rows in ranks.items():
        # The rank column is trec_eval's order: score descending, ties by id descending.
        in_file = [d for _, d, _ in sorted(rows)]
        assert in_file == sorted(run[qid], key=lambda d: (run[qid][d], d), reverse=True)
        assert [r for r, _, _ in sorted(rows)] == list(range(1, len(rows) + 1))
    measures = {"ndcg_cut.10", "recall.10", "map_cut.100"}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(back)
    ours = per_query_metrics(qrels, run, ["ndcg@10", "recall@10", "map@100"])
    for qid, want in theirs.items():
        assert (ours[qid]["ndcg@10"], ours[qid]["recall@10"], ours[qid]["map@100"]) == (
            want["ndcg_cut_10"],
            want["recall_10"],
            want["map_cut_100"],
        )


# -- significance ----------------------------------------------------------------------------
def _exact_sign_flip_p(a: list[float], b: list[float]) -> float:
    """Two-sided p of the paired sign-flip test by enumerating every flip (written from the
    definition: the share of flips whose |mean difference| reaches the observed one)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    observed = abs(sum(diffs) / len(diffs))
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(diffs)):
        total += 1
        value = abs(sum(s * d for s, d in zip(signs, diffs, strict=True)) / len(diffs))
        hits += value >= observed - 1e-12
    return hits / total


def test_paired_p_value_is_the_exact_sign_flip_test_and_seeded():
    rng = random.Random(3)
    a = [rng.random() for _ in range(10)]
    b = [x - 0.15 + rng.random() * 0.2 for x in a]
    assert paired_p_value(a, b, permutations=5000) == pytest.approx(_exact_sign_flip_p(a, b))
    assert paired_p_value(a, a) == 1.0
    # Sampled (2**300 flips): the same seed gives the same p; a real shift is far below 0.05,
    # noise is not.
    gen = np.random.default_rng(0)
    base = gen.random(300)
    noisy = base + gen.normal(0, 0.3, 300)
    shifted = base + 0.1 + gen.normal(0, 0.05, 300)
    assert paired_p_value(base, noisy, seed=1) == paired_p_value(base, noisy, seed=1)
    assert paired_p_value(base, noisy) > 0.05
    assert paired_p_value(base, shifted) < 0.001
    with pytest.raises(ValueError, match="equal-length"):
        paired_p_value([1.0], [1.0, 2.0])


# -- rows ------------------------------------------------------------------------------------
class Counting:
    """A Qwen3Embedder seen through a counter of documents embedded."""

    def __init__(self, embedder: Qwen3Embedder) -> None:
        self.embedder = embedder
        self.documents = 0

    def __getattr__(self, name):
        return getattr(self.embedder, name)

    def embed_documents(self, texts):
        self.documents += len(texts)
        return self.embedder.embed_documents(texts)


@pytest.fixture(scope="module")
def part() -> Dataset:
    full = build_stdlib_dataset(modules=["shlex", "textwrap", "heapq"])
    sample = full.sample(16, seed=5)
    corpus = {d: full.corpus[d] for docs in sample.qrels.values() for d in docs}
    corpus |= dict(list(full.corpus.items())[:20])
    return Dataset(corpus, sample.queries, sample.qrels, "part")


LONG_A = "Given a Python docstring sentence, retrieve the function that implements it"
LONG_B = "Given a Python docstring sentence, retrieve the code of the function it documents"


@pytest.mark.slow
def test_rows_say_what_they_are_with_unique_names_and_p_values(part, embed_eos_path):
    assert LONG_A[:40] == LONG_B[:40]  # the old names cut here: two rows, one name
    embedder = Qwen3Embedder(embed_eos_path)
    rows = evaluate(
        part,
        embedder=embedder,
        instructions=[None, "", LONG_A, LONG_B],
        dimensions=[None, 32],
        baselines=["bm25"],
        hybrid=True,
        metrics=["ndcg@10", "recall@10"],
        permutations=2000,
    )
    names = [r.name for r in rows]
    assert len(set(names)) == len(names)
    assert names[:6] == [
        "embed-eos",
        "embed-eos @32d",
        "embed-eos [no instruction]",
        "embed-eos [no instruction] @32d",
        "embed-eos [I1]",
        "embed-eos [I1] @32d",
    ]
    assert legend(rows) == [f"I1 = {LONG_A!r}", f"I2 = {LONG_B!r}"]
    by_name = {r.name: r for r in rows}
    row = by_name["embed-eos [I2] @32d"].as_json()
    assert (row["kind"], row["model"], row["instruction"], row["dimensions"]) == (
        "dense",
        embed_eos_path,
        LONG_B,
        32,
    )
    assert (row["reranker"], row["rerank_k"], row["baseline"]) == (None, None, None)
    assert by_name["embed-eos"].instruction == embedder.instruction  # the model's own, in full
    assert by_name["embed-eos"].dimensions == 64
    assert by_name["embed-eos [no instruction]"].instruction == ""
    bm25 = by_name["bm25"].as_json()
    assert (bm25["kind"], bm25["model"], bm25["instruction"], bm25["baseline"]) == (
        "bm25",
        None,
        None,
        "bm25",
    )
    hybrid = by_name["hybrid RRF (bm25 + embed-eos)"]
    assert (hybrid.kind, hybrid.baseline, hybrid.model) == ("hybrid", "bm25", embed_eos_path)
    # Per-query values: the metrics are their mean, and every query is there.
    for r in rows:
        assert set(r.per_query) == set(part.queries)
        for m in ("ndcg@10", "recall@10"):
            assert r.metrics[m] == pytest.approx(np.mean([v[m] for v in r.per_query.values()]))
    # Significance: every row but the first dense one, against it, per metric.
    assert rows[0].p_values is None and rows[0].compare_to is None
    for r in rows[1:]:
        assert r.compare_to == "embed-eos" and set(r.p_values) == {"ndcg@10", "recall@10"}
        assert all(0 < p <= 1 for p in r.p_values.values())
        expected = paired_p_value(
            [r.per_query[q]["ndcg@10"] for q in part.queries],
            [rows[0].per_query[q]["ndcg@10"] for q in part.queries],
            permutations=2000,
        )
        assert r.p_values["ndcg@10"] == expected
    assert rows[0].as_json()["significance"] is None
    assert by_name["bm25"].as_json()["significance"]["compare_to"] == "embed-eos"


@pytest.mark.slow
def test_compare_to_by_name_or_number_and_refused_before_embedding(part, embed_eos_path, tmp_path):
    counting = Counting(Qwen3Embedder(embed_eos_path))
    with pytest.raises(ValueError, match=r"compare_to='bm26' names no row.*'bm25'"):
        evaluate(part, embedder=counting, baselines=["bm25"], compare_to="bm26")
    with pytest.raises(ValueError, match="sentence-transformers model"):
        # A folder that holds no model (as a hub id offline: nothing to load).
        evaluate(part, embedder=counting, baselines=[f"st:{tmp_path}"])
    assert counting.documents == 0  # both refused before the corpus was embedded
    rows = evaluate(part, embedder=counting, baselines=["bm25"], compare_to="bm25")
    assert rows[0].compare_to == "bm25" and rows[1].p_values is None
    again = evaluate(part, embedder=counting, baselines=["bm25"], compare_to="2")
    assert again[0].p_values == rows[0].p_values


def test_rows_with_the_same_name_are_numbered(part):
    from qwen3_rag.eval import bm25_run

    rows = evaluate(
        part, dense_run=bm25_run(part), dense_name="bm25", baselines=["bm25"], metrics=["ndcg@10"]
    )
    assert [r.name for r in rows] == ["bm25", "bm25 #2"]
    assert rows[1].compare_to == "bm25" and rows[1].p_values == {"ndcg@10": 1.0}
    assert math.isfinite(rows[0].metrics["ndcg@10"])
