"""Hard-negative mining with a real (tiny) Qwen3 embedder: positives excluded, likely false
negatives dropped, the training layout written by the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qwen3_rag.cli import main
from qwen3_rag.core import Qwen3Embedder
from qwen3_rag.train.data import TrainExample, TrainingDataError, load_training_data
from qwen3_rag.train.mine import load_corpus, mine_hard_negatives

CORPUS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Berlin is the capital of Germany.",
    "def add(a, b):\n    return a + b",
    "SELECT id, name FROM users WHERE age > 30;",
    "Photosynthesis turns light into chemical energy.",
    "The mitochondria is the powerhouse of the cell.",
    "Paris is the capital of France.",
    "Water boils at 100 degrees Celsius at sea level.",
    "A list comprehension builds a list from an iterable.",
    "what is the capital of China?",  # the query itself: a near-certain "negative" above the positive
    "Rome was not built in a day.",
]


@pytest.fixture(scope="module")
def embedder(embed_eos_path):
    return Qwen3Embedder(embed_eos_path, device="cpu")


def expected(embedder, example, corpus, n, margin):
    """Independent reference: rank by cosine, skip positives and scores above min(pos) + margin."""
    q = np.asarray(embedder.embed_queries([example.query]))[0]
    docs = np.asarray(embedder.embed_documents(corpus))
    pos = np.asarray(embedder.embed_documents(example.pos))
    scores = docs @ q
    limit = min(pos @ q) + margin
    ranked = sorted(range(len(corpus)), key=lambda i: -scores[i])
    kept = [corpus[i] for i in ranked if corpus[i] not in example.pos and scores[i] <= limit]
    dropped = [corpus[i] for i in ranked if corpus[i] not in example.pos and scores[i] > limit]
    return kept[:n], dropped


@pytest.mark.slow
def test_mining_excludes_positives_and_drops_likely_false_negatives(embedder):
    example = TrainExample("what is the capital of China?", [CORPUS[0]], ["old negative"])
    margin = 0.0
    want, dropped = expected(embedder, example, CORPUS, 4, margin)
    [got] = mine_hard_negatives([example], CORPUS, embedder, negatives=4, margin=margin)
    assert got.query == example.query and got.pos == example.pos
    assert got.neg == want
    assert CORPUS[0] not in got.neg  # the positive scores exactly its own limit: only the
    assert dropped, "the case must hold a candidate above the positive's score"  # rule drops it
    assert not set(dropped) & set(got.neg)
    # With a huge margin nothing is dropped, so the former false negatives come back first.
    [loose] = mine_hard_negatives([example], CORPUS, embedder, negatives=4, margin=10.0)
    assert loose.neg[: len(dropped[:4])] == dropped[:4]
    assert example.neg == ["old negative"]  # the caller's example is unchanged


def test_instructions_are_applied_per_example(embedder):
    plain = TrainExample("capital of France", ["Paris is the capital of France."], [], "")
    task = TrainExample("capital of France", ["Paris is the capital of France."], [], "Find code")
    a, b = mine_hard_negatives([plain, task], CORPUS, embedder, negatives=11, margin=10.0)
    assert sorted(a.neg) == sorted(b.neg) and a.neg != b.neg  # same candidates, other order
    q = np.asarray(embedder.embed_queries(["capital of France"], instruction=""))[0]
    docs = np.asarray(embedder.embed_documents(CORPUS))
    order = [CORPUS[i] for i in np.argsort(-(docs @ q), kind="stable") if CORPUS[i] != plain.pos[0]]
    assert a.neg == order


def test_a_small_corpus_gives_fewer_negatives_with_a_warning(embedder, caplog):
    example = TrainExample("q", [CORPUS[0]], [])
    [got] = mine_hard_negatives([example], CORPUS[:3], embedder, negatives=5, margin=10.0)
    assert sorted(got.neg) == sorted(CORPUS[1:3])
    assert "fewer than 5 hard negatives" in caplog.text


def test_corpus_formats(tmp_path):
    (tmp_path / "c.jsonl").write_text(
        '"plain string"\n\n{"text": "body", "title": "Title"}\n{"text": "plain string"}\n',
        encoding="utf-8",
    )
    assert load_corpus(tmp_path / "c.jsonl") == ["plain string", "Title body"]
    (tmp_path / "bad.jsonl").write_text('"a"\n[1]\n', encoding="utf-8")
    with pytest.raises(TrainingDataError, match=r"bad\.jsonl:2: expected a string or an object"):
        load_corpus(tmp_path / "bad.jsonl")
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(
        '{"_id": "1", "title": "T", "text": "x"}\n', encoding="utf-8"
    )
    assert load_corpus(beir) == ["T x"]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Heading\n\nSome text about trains.\n", encoding="utf-8")
    assert load_corpus(docs) == ["# Heading\n\nSome text about trains."]
    with pytest.raises(TrainingDataError, match="no such corpus"):
        load_corpus(tmp_path / "missing")


@pytest.mark.slow
def test_mine_command_writes_the_training_layout(embed_eos_path, embedder, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    rows = [
        {"query": "what is the capital of China?", "pos": [CORPUS[0]], "persona": "x"},
        {"query": "how do I add numbers?", "pos": [CORPUS[3]], "neg": ["stale"], "instruction": ""},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(t) + "\n" for t in CORPUS), encoding="utf-8")
    target = tmp_path / "mined.jsonl"
    args = ["mine", str(data), "--model", embed_eos_path, "--corpus", str(corpus)]
    code = main([*args, "--output", str(target), "--negatives", "3", "--device", "cpu", "--quiet"])
    assert code == 0
    assert "2 examples with hard negatives from 12 passages" in capsys.readouterr().out
    written = load_training_data(target)
    want = mine_hard_negatives(load_training_data(data), CORPUS, embedder, negatives=3)
    assert written == want and all(len(e.neg) == 3 for e in written)
    assert written[1].instruction == ""
    code = main([*args[:-1], str(tmp_path / "nope.jsonl"), "--output", str(target)])
    assert code == 2 and "no such corpus" in capsys.readouterr().err
