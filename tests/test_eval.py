"""qwen3_rag.eval: data loading, the stdlib dataset, metrics, cache, sampling, retriever helpers."""

from __future__ import annotations

import ast
import gc
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from qwen3_rag.core import Qwen3Embedder
from qwen3_rag.eval import (
    DataError,
    Dataset,
    DenseRunner,
    build_stdlib_dataset,
    compute_metrics,
    evaluate,
    evaluate_embedder,
    load_beir,
    load_qa,
    rrf,
    stdlib_code_search,
    write_beir,
)
from qwen3_rag.eval.runs import VectorCache

from tiny_models import build_checkpoint

SMALL_MODULES = ("shlex", "textwrap", "heapq", "fractions")


@pytest.fixture(scope="module")
def small() -> Dataset:
    return build_stdlib_dataset(modules=SMALL_MODULES)


def _subset(data: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` queries and only their documents: little to embed with the tiny models."""
    part = data.sample(n, seed)
    corpus = {d: data.corpus[d] for docs in part.qrels.values() for d in docs}
    return Dataset(corpus, part.queries, part.qrels, data.name)


def _beir(tmp_path: Path, corpus: list[str], queries: list[str], qrels: list[str]) -> Path:
    (tmp_path / "qrels").mkdir(parents=True, exist_ok=True)
    (tmp_path / "corpus.jsonl").write_text("".join(c + "\n" for c in corpus), encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text("".join(q + "\n" for q in queries), encoding="utf-8")
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(r + "\n" for r in qrels), encoding="utf-8"
    )
    return tmp_path


# -- the standard-library dataset ----------------------------------------------------------
def test_stdlib_dataset_is_deterministic_and_docstrings_are_removed(tmp_path, small):
    path = stdlib_code_search(tmp_path / "a", modules=SMALL_MODULES)
    again = stdlib_code_search(tmp_path / "b", modules=list(reversed(SMALL_MODULES)))
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        assert (path / name).read_bytes() == (again / name).read_bytes()
    data = load_beir(path)
    assert data.corpus == small.corpus and data.queries == small.queries
    assert len(data.queries) >= 30
    for qid, query in data.queries.items():
        assert data.qrels[qid] == {qid: 1}
        code = data.corpus[qid]
        assert query not in code  # the docstring is gone, the query is not in its document
        tree = ast.parse(code)  # still valid Python
        function = tree.body[0]
        assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        assert ast.get_docstring(function) is None
        assert qid.endswith(function.name)


def test_stdlib_modules_select_disjoint_data_and_max_queries_draws_by_seed():
    a = build_stdlib_dataset(modules=["shlex", "textwrap"])
    b = build_stdlib_dataset(modules=["heapq", "fractions"])
    assert not set(a.corpus) & set(b.corpus)
    assert {d.split(":")[0] for d in a.corpus} == {"shlex", "textwrap"}
    five = build_stdlib_dataset(modules=["shlex", "textwrap"], max_queries=5, seed=1)
    assert len(five.queries) == 5 and five.corpus == a.corpus  # the rest are distractors
    assert (
        five.queries
        == build_stdlib_dataset(modules=["shlex", "textwrap"], max_queries=5, seed=1).queries
    )
    assert (
        five.queries
        != build_stdlib_dataset(modules=["shlex", "textwrap"], max_queries=5, seed=2).queries
    )
    with pytest.raises(DataError, match="sys"):
        build_stdlib_dataset(modules=["sys"])  # built in: no source


# -- BEIR and QA files ---------------------------------------------------------------------
def test_beir_round_trip_joins_titles_and_keeps_only_judged_queries(tmp_path):
    path = _beir(
        tmp_path,
        [
            json.dumps({"_id": "d1", "title": "Paris", "text": "is the capital of France."}),
            json.dumps({"_id": 2, "text": "Berlin."}),
            json.dumps({"_id": "d3", "title": "Only a title", "text": ""}),
        ],
        [
            json.dumps({"_id": "q1", "text": "capital of France?"}),
            json.dumps({"_id": "q2", "text": "unjudged"}),
            json.dumps({"_id": "q3", "text": "judged not relevant only"}),
        ],
        ["q1\td1\t1", "q1\t2\t0", "q3\td3\t0"],
    )
    data = load_beir(path)
    assert data.corpus == {
        "d1": "Paris is the capital of France.",
        "2": "Berlin.",
        "d3": "Only a title",
    }
    assert data.queries == {"q1": "capital of France?"}
    assert data.qrels == {"q1": {"d1": 1, "2": 0}}
    back = load_beir(write_beir(data, tmp_path / "copy"))
    assert (back.corpus, back.queries, back.qrels) == (data.corpus, data.queries, data.qrels)


MALFORMED = [
    # (file, bad line, what the message must name)
    ("corpus.jsonl", '{"title": "x", "text": "y"}', ["corpus.jsonl:2", "'_id'"]),
    ("corpus.jsonl", '{"_id": "d9", "text": "   "}', ["corpus.jsonl:2", "empty"]),
    ("corpus.jsonl", '{"_id": "d9", "text": 5}', ["corpus.jsonl:2", "'text'"]),
    ("corpus.jsonl", '{"_id": "d1", "text": "again"}', ["corpus.jsonl:2", "duplicate", "d1"]),
    ("corpus.jsonl", '{"_id": "d9", "text": "x"', ["corpus.jsonl:2", "invalid JSON"]),
    ("queries.jsonl", '{"_id": "q9"}', ["queries.jsonl:2", "'text'"]),
    ("queries.jsonl", '{"_id": "q9", "text": ""}', ["queries.jsonl:2", "empty"]),
    ("qrels/test.tsv", "q1\tnope\t1", ["test.tsv:3", "corpus-id", "nope"]),
    ("qrels/test.tsv", "q404\td1\t1", ["test.tsv:3", "query-id", "q404"]),
    ("qrels/test.tsv", "q1\td1\thigh", ["test.tsv:3", "score", "high"]),
    ("qrels/test.tsv", "q1 d1 1", ["test.tsv:3", "3 tab-separated"]),
]


@pytest.mark.parametrize("file, line, expected", MALFORMED)
def test_malformed_beir_data_names_file_line_and_field(tmp_path, file, line, expected):
    corpus = [json.dumps({"_id": "d1", "text": "one"})]
    queries = [json.dumps({"_id": "q1", "text": "first"})]
    qrels = ["q1\td1\t1"]
    {"corpus.jsonl": corpus, "queries.jsonl": queries, "qrels/test.tsv": qrels}[file].append(line)
    path = _beir(tmp_path, corpus, queries, qrels)
    with pytest.raises(DataError) as info:
        load_beir(path)
    for part in expected:
        assert part in str(info.value)


def test_missing_beir_file_is_named(tmp_path):
    path = _beir(tmp_path, [json.dumps({"_id": "d1", "text": "x"})], [], [])
    (path / "qrels" / "test.tsv").unlink()
    with pytest.raises(DataError, match=r"missing qrels/test\.tsv"):
        load_beir(path)
    with pytest.raises(DataError, match=r"missing qrels/dev\.tsv"):
        load_beir(path, split="dev")


def test_qa_file_deduplicates_answers_and_questions(tmp_path):
    csv_file = tmp_path / "faq.csv"
    csv_file.write_text(
        "q,a\n"
        '"How do I reset my password?","Use the ""Forgot password"" link."\n'
        "How to change email?,Open Settings  then Account.\n"
        "Where is the email setting?,Open Settings then Account.\n"
        "How do I reset my password?,Ask an admin.\n",
        encoding="utf-8",
    )
    data = load_qa(csv_file, question="q", answer="a")
    assert data.name == "faq"
    assert data.corpus == {
        "d0": 'Use the "Forgot password" link.',
        "d1": "Open Settings  then Account.",
        "d2": "Ask an admin.",
    }
    assert data.queries == {
        "q0": "How do I reset my password?",
        "q1": "How to change email?",
        "q2": "Where is the email setting?",
    }
    assert data.qrels == {"q0": {"d0": 1, "d2": 1}, "q1": {"d1": 1}, "q2": {"d1": 1}}
    jsonl = tmp_path / "faq.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"question": q, "answer": a}) + "\n"
            for q, a in [("a b", "x"), ("c d", " x "), ("e f", "y")]
        ),
        encoding="utf-8",
    )
    assert load_qa(jsonl).corpus == {"d0": "x", "d1": "y"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("question,answer\nfine,ok\n  ,empty question\n", ["faq.csv:3", "'question'", "empty"]),
        ("question,reply\nfine,ok\n", ["faq.csv:2", "no field 'answer'", "'reply'"]),
    ],
)
def test_malformed_qa_file_names_line_and_field(tmp_path, text, expected):
    path = tmp_path / "faq.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_qa(path)
    for part in expected:
        assert part in str(info.value)


def test_sampling_is_reproducible_by_seed(small):
    a = small.sample(10, seed=7)
    assert a.queries == small.sample(10, seed=7).queries
    assert a.queries != small.sample(10, seed=8).queries
    assert len(a.queries) == 10 and set(a.qrels) == set(a.queries)
    assert a.corpus == small.corpus
    assert small.sample(10**6).queries == small.queries
    with pytest.raises(ValueError, match="positive"):
        small.sample(0)


# -- metrics -------------------------------------------------------------------------------
def test_metrics_come_from_the_library_and_match_hand_values():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}}
    run = {"q1": {"x": 0.9, "a": 0.8}, "q2": {"b": 0.5, "y": 0.4, "c": 0.3}}
    got = compute_metrics(qrels, run, "mrr@10,recall@1,recall@3,ndcg@10,map@100,precision@1")
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert got["recall@1"] == pytest.approx((0 + 0.5) / 2)
    assert got["recall@3"] == pytest.approx(1.0)
    assert got["map@100"] == pytest.approx((0.5 + (1 + 2 / 3) / 2) / 2)
    ideal2, got2 = 1 + 1 / math.log2(3), 1 + 1 / math.log2(4)
    assert got["ndcg@10"] == pytest.approx((1 / math.log2(3) + got2 / ideal2) / 2)
    assert got["precision@1"] == pytest.approx(0.5)
    # A judged query the run does not answer counts as zero.
    assert compute_metrics(qrels, {"q1": run["q1"]}, ["recall@3"])["recall@3"] == 0.5
    with pytest.raises(ValueError, match="unknown metric 'f1@10'"):
        compute_metrics(qrels, run, ["f1@10"])


def test_rrf_fuses_by_rank():
    fused = rrf([{"q": {"a": 9.0, "b": 1.0}}, {"q": {"b": 0.9, "c": 0.1}}], k=60)
    assert list(fused["q"]) == ["b", "a", "c"]
    assert fused["q"]["b"] == pytest.approx(1 / 62 + 1 / 61)


# -- the embedder, the cache -----------------------------------------------------------------
class Counting:
    """A Qwen3Embedder seen through a counter of document embeddings."""

    def __init__(self, embedder: Qwen3Embedder) -> None:
        self.embedder = embedder
        self.documents = 0

    def __getattr__(self, name):
        return getattr(self.embedder, name)

    def embed_documents(self, texts):
        self.documents += len(texts)
        return self.embedder.embed_documents(texts)


@pytest.mark.slow
def test_cache_reuses_vectors_until_corpus_or_model_changes(tmp_path, small, embed_eos_path):
    model = tmp_path / "model"
    shutil.copytree(embed_eos_path, model)
    cache = tmp_path / "cache"
    data = _subset(small, 8)
    first = Counting(Qwen3Embedder(str(model)))
    uncached = evaluate_embedder(first.embedder, data)
    assert evaluate_embedder(first, data, cache_dir=cache) == uncached
    assert first.documents == len(data.corpus)
    # Another instruction, another dimension, a new process's embedder: no document re-embedded.
    again = Counting(Qwen3Embedder(str(model)))
    evaluate_embedder(again, data, cache_dir=cache, instruction="", dimensions=32)
    assert evaluate_embedder(again, data, cache_dir=cache) == uncached
    assert again.documents == 0
    # One document changed: the whole corpus is embedded again (its hash is the key).
    changed = Dataset(
        {**data.corpus, next(iter(data.corpus)): "pass"}, data.queries, data.qrels, data.name
    )
    evaluate_embedder(again, changed, cache_dir=cache)
    assert again.documents == len(data.corpus)
    # Options that change the vectors are part of the key; the instruction is not.
    short = Counting(Qwen3Embedder(str(model), max_length=64))
    evaluate_embedder(short, data, cache_dir=cache)
    assert short.documents == len(data.corpus)
    # New weights in the same folder (a new fine-tune): embedded again, other results.
    old_run = DenseRunner(first, data, cache_dir=cache).run()
    del first, again, short  # the core shares loaded weights while an instance lives
    gc.collect()
    shutil.rmtree(model)
    build_checkpoint(model, "embedding", initializer_range=0.1, eos_postprocessor=True, seed=5)
    retrained = Counting(Qwen3Embedder(str(model)))
    assert DenseRunner(retrained, data, cache_dir=cache).run() != old_run
    assert retrained.documents == len(data.corpus)
    assert len(list(cache.glob("*.npz"))) == 4
    assert not list(cache.glob(".*"))  # atomic writes leave no temporary file


def test_damaged_cache_file_is_recomputed(tmp_path, small, embed_eos_path):
    data = _subset(small, 4)
    embedder = Counting(Qwen3Embedder(embed_eos_path))
    expected = evaluate_embedder(embedder, data, cache_dir=tmp_path)
    (file,) = tmp_path.glob("*.npz")
    file.write_bytes(file.read_bytes()[:100])
    assert evaluate_embedder(embedder, data, cache_dir=tmp_path) == expected
    assert embedder.documents == 2 * len(data.corpus)


@pytest.mark.slow
def test_dimension_rows_equal_an_embedder_built_with_those_dimensions(small, embed_eos_path):
    data = _subset(small, 10)
    rows = evaluate(data, embedder=Qwen3Embedder(embed_eos_path), dimensions=[None, 32])
    assert [r.name for r in rows] == ["embed-eos", "embed-eos @32d"]
    direct = evaluate_embedder(Qwen3Embedder(embed_eos_path, dimensions=32), data)
    for name, value in direct.items():
        assert rows[1].metrics[name] == pytest.approx(value, abs=1e-9)
    # Refused from the model's config, before a document is embedded.
    counting = Counting(Qwen3Embedder(embed_eos_path))
    for bad in (8, 4096):
        with pytest.raises(ValueError, match=rf"dimensions={bad} is out of range: .* 32 to 64"):
            evaluate_embedder(counting, data, dimensions=bad)
        with pytest.raises(ValueError, match=f"dimensions={bad}"):
            evaluate(data, embedder=counting, dimensions=[None, bad])
    assert counting.documents == 0


def test_vector_cache_refuses_a_key_collision_with_other_ids(tmp_path):
    cache = VectorCache(tmp_path)
    cache.put({"k": 1}, ["a", "b"], np.eye(2, dtype=np.float32))
    assert cache.get({"k": 1}, ["b", "a"]) is None
    assert np.array_equal(cache.get({"k": 1}, ["a", "b"]), np.eye(2))


# -- LangChain and LlamaIndex retrievers ---------------------------------------------------
@pytest.mark.slow
def test_langchain_and_llamaindex_retrievers_match_exact_search(small, embed_eos_path):
    from langchain_core.vectorstores import InMemoryVectorStore
    from llama_index.core import VectorStoreIndex

    from qwen3_rag.eval.retrievers import evaluate_retriever, langchain_documents, llamaindex_nodes
    from qwen3_rag.integrations.langchain import Qwen3Embeddings
    from qwen3_rag.integrations.llamaindex import Qwen3Embedding

    data = _subset(small, 12, seed=3)
    names = ["ndcg@10", "recall@5", "recall@10", "mrr@10"]
    exact = evaluate_embedder(Qwen3Embedder(embed_eos_path), data, metrics=names)
    store = InMemoryVectorStore.from_documents(
        langchain_documents(data), Qwen3Embeddings(model=embed_eos_path)
    )
    lc = evaluate_retriever(store.as_retriever(search_kwargs={"k": 10}), data, metrics=names)
    index = VectorStoreIndex(
        llamaindex_nodes(data), embed_model=Qwen3Embedding(model=embed_eos_path)
    )
    li = evaluate_retriever(index.as_retriever(similarity_top_k=10), data, metrics=names)
    for name in names:
        assert lc.metrics[name] == pytest.approx(exact[name], abs=1e-9), name
        assert li.metrics[name] == pytest.approx(exact[name], abs=1e-9), name
    assert all(len(docs) == 10 for docs in lc.run.values())
    with pytest.raises(TypeError, match="neither"):
        evaluate_retriever(object(), data)
