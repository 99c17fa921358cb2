"""The runtime against the model cards' recipe (tests/reference.py), run one input at a time."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from qwen3_rag import DEFAULT_TASK, Qwen3Embedder, Qwen3Reranker

from conftest import CORPUS
from reference import EOD_ID, ReferenceEmbedder, ReferenceReranker

COS_MIN = 0.99999
SCORE_TOL = 1e-5
MAX_LEN = 96

QUERIES = ["What is the capital of China?", "explain gravity", "", "python add function 🐍"]
INSTRUCTIONS = [None, "Retrieve semantically similar text", ""]


@pytest.fixture(scope="module", params=["eos", "plain"])
def embed_pair(request, embed_eos_path, embed_plain_path):
    path = embed_eos_path if request.param == "eos" else embed_plain_path
    return path, ReferenceEmbedder(path, MAX_LEN)


@pytest.fixture(scope="module")
def rerank_ref(reranker_path):
    return ReferenceReranker(reranker_path, MAX_LEN)


@pytest.fixture(scope="module")
def memo():
    """Reference outputs computed once per module: grid cells share inputs, not the work."""
    cache: dict[tuple, object] = {}

    def get(key: tuple, compute):
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    return get


#: How batches reach the model. CPU + SDPA packs inputs into one row ("packed"); GPUs run
#: left-padded SDPA batches, forced here on the CPU ("padded"); "eager" is padded too.
LAYOUTS = ["packed", "padded", "eager"]


def _with_layout(cls, path, layout, **kwargs):
    model = cls(path, attn_implementation="eager" if layout == "eager" else None, **kwargs)
    assert model.packed == (layout != "eager")
    if layout == "padded":
        model.packed = False  # the GPU code path, on the same packing-capable model
    return model


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_reference_tokenizer_variants_differ_only_in_the_post_processor(embed_pair):
    _, ref = embed_pair
    ids = ref.token_ids("hello")
    assert ids[-1] == EOD_ID and ids.count(EOD_ID) == 1


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dimensions", [None, 32, 48])
@pytest.mark.parametrize(("batch_tokens", "max_batch_size"), [(100_000, 64), (256, 3), (1, 1)])
@pytest.mark.grid
def test_documents_match_the_card(
    embed_pair, memo, dimensions, batch_tokens, max_batch_size, layout
):
    path, ref = embed_pair
    emb = _with_layout(
        Qwen3Embedder,
        path,
        layout,
        max_length=MAX_LEN,
        dimensions=dimensions,
        batch_tokens=batch_tokens,
        max_batch_size=max_batch_size,
    )
    got = emb.embed_documents(CORPUS)
    want = memo(
        ("documents", path, dimensions),
        lambda: np.stack([ref.embed(t, dimensions).numpy() for t in CORPUS]),
    )
    assert got.dtype == np.float32
    assert got.shape == (len(CORPUS), dimensions or 64)
    assert _cosines(got, want).min() >= COS_MIN
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
@pytest.mark.slow
def test_queries_match_the_card(embed_pair, instruction):
    path, ref = embed_pair
    emb = Qwen3Embedder(path, max_length=MAX_LEN)
    got = emb.embed_queries(QUERIES, instruction=instruction)
    task = DEFAULT_TASK if instruction is None else instruction
    texts = [f"Instruct: {task}\nQuery:{q}" if task else q for q in QUERIES]
    want = np.stack([ref.embed(t).numpy() for t in texts])
    assert _cosines(got, want).min() >= COS_MIN


@pytest.mark.slow
def test_results_do_not_depend_on_order_or_batch_company(embed_eos_path):
    emb = Qwen3Embedder(embed_eos_path, max_length=MAX_LEN, batch_tokens=300, max_batch_size=4)
    base = emb.embed_documents(CORPUS)
    rng = random.Random(7)
    for _ in range(3):
        perm = list(range(len(CORPUS)))
        rng.shuffle(perm)
        shuffled = emb.embed_documents([CORPUS[i] for i in perm])
        assert _cosines(shuffled, base[perm]).min() >= COS_MIN
    # Each text alone gives the same vector as inside the big batch.
    for i, text in enumerate(CORPUS):
        assert _cosines(emb.embed_documents([text]), base[i : i + 1]).min() >= COS_MIN


def test_duplicates_get_identical_vectors(embed_eos_path):
    emb = Qwen3Embedder(embed_eos_path, max_length=MAX_LEN)
    out = emb.embed_documents(["same text", "other", "same text"])
    np.testing.assert_array_equal(out[0], out[2])


def test_query_differs_from_document_and_equals_formatted_document(embed_eos_path):
    emb = Qwen3Embedder(embed_eos_path, max_length=MAX_LEN)
    q = emb.embed_queries(["gravity"])
    d = emb.embed_documents(["gravity"])
    formatted = emb.embed_documents([f"Instruct: {DEFAULT_TASK}\nQuery:gravity"])
    assert _cosines(q, d)[0] < 0.9999
    assert _cosines(q, formatted)[0] >= COS_MIN


def test_long_inputs_are_truncated_keeping_the_eos(embed_pair, caplog):
    path, ref = embed_pair
    emb = Qwen3Embedder(path, max_length=MAX_LEN)
    long_text = "tokens " * 500
    ids = emb.encode_ids([long_text])[0]
    assert len(ids) == MAX_LEN and ids[-1] == EOD_ID and ids.count(EOD_ID) == 1
    assert ids == ref.token_ids(long_text)
    with caplog.at_level("WARNING"):
        emb.embed_documents([long_text, "short", long_text])
    assert "2 of 3 inputs were longer than max_length=96" in caplog.text


def test_token_ids_equal_the_official_tokenization(embed_pair):
    path, ref = embed_pair
    emb = Qwen3Embedder(path, max_length=MAX_LEN)
    for text in CORPUS:
        assert emb.encode_ids([text])[0] == ref.token_ids(text), text


# -- reranker ------------------------------------------------------------------------------
DOCS = [
    "Beijing is the capital of China.",
    " leading space document",
    "\nleading newline document",
    "42 starts with digits",
    "...punctuation first",
    "中文文档开头",
    "",
    "Gravity pulls masses together. " * 40,
    "def f(x):\n    return x * 2\n",
    "Beijing is the capital of China.",
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize(("batch_tokens", "max_batch_size"), [(100_000, 64), (128, 3), (1, 1)])
@pytest.mark.parametrize("instruction", INSTRUCTIONS)
@pytest.mark.grid
def test_scores_match_the_card(
    reranker_path,
    rerank_ref,
    memo,
    share_prefix,
    batch_tokens,
    max_batch_size,
    instruction,
    layout,
):
    rr = _with_layout(
        Qwen3Reranker,
        reranker_path,
        layout,
        max_length=MAX_LEN,
        share_prefix=share_prefix,
        batch_tokens=batch_tokens,
        max_batch_size=max_batch_size,
    )
    query = "What is the capital of China?"
    got = rr.score(query, DOCS, instruction=instruction)
    want = memo(
        ("scores", query, instruction),
        lambda: [rerank_ref.score(query, d, instruction) for d in DOCS],
    )
    assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= SCORE_TOL
    assert got[0] == pytest.approx(got[-1], abs=1e-6)  # duplicates score alike


def test_scores_vary_so_the_comparison_means_something(reranker_path):
    rr = Qwen3Reranker(reranker_path, max_length=MAX_LEN)
    scores = rr.score("What is the capital of China?", DOCS)
    assert max(scores) - min(scores) > 0.01


@pytest.mark.slow
def test_untied_head_matches_the_card(reranker_untied_path):
    ref = ReferenceReranker(reranker_untied_path, MAX_LEN)
    rr = Qwen3Reranker(reranker_untied_path, max_length=MAX_LEN)
    got = rr.score("capital", DOCS)
    want = [ref.score("capital", d) for d in DOCS]
    assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= SCORE_TOL


# The last query is as long as max_query_share allows at MAX_LEN: the long document is cut, the
# query is not. (A longer query is cut instead: see test_a_long_query_is_cut_not_the_document.)
@pytest.mark.parametrize("query", ["What is the capital of China?", "", "北京?", "x" * 96])
def test_pair_ids_equal_the_official_tokenization(reranker_path, rerank_ref, query):
    rr = Qwen3Reranker(reranker_path, max_length=MAX_LEN)
    got = rr.encode_ids(query, DOCS)
    for ids, doc in zip(got, DOCS, strict=True):
        want = rerank_ref.token_ids(query, doc)
        assert ids == want, doc
        assert len(ids) <= MAX_LEN
        assert ids[: len(rerank_ref.prefix_tokens)] == rerank_ref.prefix_tokens
        assert ids[-len(rerank_ref.suffix_tokens) :] == rerank_ref.suffix_tokens


def test_rerank_sorts_best_first_with_ties_in_input_order(reranker_path):
    rr = Qwen3Reranker(reranker_path, max_length=MAX_LEN)
    scores = rr.score("capital", DOCS)
    ranked = rr.rerank("capital", DOCS)
    assert [r.score for r in ranked] == sorted(scores, reverse=True)
    assert {r.index for r in ranked} == set(range(len(DOCS)))
    dup = [r.index for r in ranked if r.document == DOCS[0]]
    assert dup == [0, len(DOCS) - 1]
    top = rr.rerank("capital", DOCS, top_n=3)
    assert [r.index for r in top] == [r.index for r in ranked[:3]]
    assert all(r.document == DOCS[r.index] for r in ranked)


def test_reranker_runs_the_backbone_only(reranker_path):
    """No vocabulary-sized logits: the loaded module has no LM head at all."""
    rr = Qwen3Reranker(reranker_path, max_length=MAX_LEN)
    model = rr._loaded.model
    assert not any(
        isinstance(m, torch.nn.Linear) and m.out_features > 100_000 for m in model.modules()
    )
    head = rr._loaded.extras["head"]
    assert head.dtype == torch.float32 and head.shape == (64,)


# -- long queries and the pieces the body is tokenized in -----------------------------------


def _stdlib_texts() -> list[str]:
    """Real prose and code: the docstrings of a few stdlib modules, with odd edges added."""
    import argparse
    import collections
    import difflib
    import json
    import pathlib
    import string
    import textwrap

    texts = set()
    for module in (argparse, collections, difflib, json, pathlib, string, textwrap):
        for obj in [module, *vars(module).values()]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and doc.strip():
                texts.add(doc[:300])
    real = sorted(texts)[:100]
    edges = ["", " ", "\n", "\r\n", "  \n ", "?", "...", "'s", "123", "\u0301x", "e\u0301"]
    edges += ["中文文档开头。", "。", "<Document>: x", "\n<Query>: y\n", "Query:x"]
    variants = [f(t) for t in real[:12] for f in _EDGE_VARIANTS]
    return real + edges + variants


_EDGE_VARIANTS = [
    lambda t: " " + t,
    lambda t: t + " ",
    lambda t: "\n" + t,
    lambda t: t + "\n",
    lambda t: t.rstrip() + "?",
    lambda t: t.rstrip() + "?!\n\n",
    lambda t: t + "\t",
    lambda t: "中文" + t + "。",
]


@pytest.mark.slow
def test_pieces_tokenize_exactly_as_the_whole_body(reranker_path):
    """The reranker tokenizes instruction, query and document apart: same ids as the card."""
    texts = _stdlib_texts()
    queries = texts[100:116] + texts[116::5] + texts[:4]  # odd edges, variants, real text
    instructions = [None, "", " spaced ", "ends in a newline\n", "中文指令？"]
    ref = ReferenceReranker(reranker_path, 32768)
    rr = Qwen3Reranker(reranker_path, max_length=32768)
    checked = 0
    for instruction in instructions:
        for query in queries:
            got = rr.encode_ids(query, texts, instruction=instruction)
            want = ref.batch_token_ids(query, texts, instruction)
            for ids, official, doc in zip(got, want, texts, strict=True):
                assert ids == official, (instruction, query, doc)
                checked += 1
    assert checked > 30_000


@pytest.mark.grid
def test_query_pieces_tokenize_exactly_as_the_formatted_query(embed_pair):
    """The embedder tokenizes the instruction once per call: same ids as the formatted text."""
    path, _ = embed_pair
    ref = ReferenceEmbedder(path, 32768)
    emb = Qwen3Embedder(path, max_length=32768)
    texts = _stdlib_texts()
    for task in [DEFAULT_TASK, "Find code.", " spaced ", "ends in a colon:", "中文指令？"]:
        got = emb.encode_queries(texts, task).ids
        for ids, text in zip(got, texts, strict=True):
            assert ids == ref.token_ids(f"Instruct: {task}\nQuery:{text}"), (task, text)


@pytest.mark.parametrize("query", ["x" * 104, "x" * 300, "the longest query " * 200])
@pytest.mark.grid
def test_a_long_query_is_cut_not_the_document(reranker_path, rerank_ref, query, caplog):
    """Past max_query_share of the window the query's end is cut, and the document is kept."""
    tok = rerank_ref.tokenizer
    prefix, suffix = rerank_ref.prefix_tokens, rerank_ref.suffix_tokens
    window = MAX_LEN - len(prefix) - len(suffix)
    budget = int(0.75 * window)  # the default max_query_share
    rr = Qwen3Reranker(reranker_path, max_length=MAX_LEN)
    with caplog.at_level("WARNING"):
        got = rr.encode_ids(query, DOCS)
        scores = rr.score(query, DOCS)
    head = tok(f"<Instruct>: {DEFAULT_TASK}\n<Query>: {query}\n", add_special_tokens=False)
    assert len(head["input_ids"]) > budget
    for ids, doc in zip(got, DOCS, strict=True):
        official = rerank_ref.token_ids(query, doc)
        tail = tok("<Document>: " + doc, add_special_tokens=False)["input_ids"]
        if len(head["input_ids"]) + len(tail) <= window:
            assert ids == official  # a pair that fits is the card's
            continue
        body, official = ids[len(prefix) : -len(suffix)], official[len(prefix) :]
        assert ids[: len(prefix)] == prefix and ids[-len(suffix) :] == suffix
        assert len(body) == window
        keep = max(budget, window - len(tail))  # the query keeps what the document leaves
        # The instruction and the query's first tokens are the card's, then the query line ends.
        assert body[: keep - 1] == official[: keep - 1]
        assert body[keep - 1] == tok("\n")["input_ids"][0]
        # The document keeps its first tokens: all of them if it fits in what the query leaves.
        assert body[keep:] == tail[: window - keep]
    if len(head["input_ids"]) >= window:
        # The card's recipe leaves no document token, so every document scores the same.
        assert len({round(rerank_ref.score(query, d), 6) for d in DOCS[:3]}) == 1
    assert len({round(s, 6) for s in scores}) > 3
    warnings = [r for r in caplog.records if "max_query_share=0.75" in r.getMessage()]
    assert len(warnings) == 1, caplog.text  # score() says it once
