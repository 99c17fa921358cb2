"""Training data readers: JSONL and BEIR train splits, strict errors, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qwen3_rag.train.data import (
    TrainExample,
    TrainingDataError,
    load_training_data,
    read_beir_corpus,
    write_training_data,
)


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "".join(
            (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows
        ),
        encoding="utf-8",
    )
    return path


def test_jsonl_rows_become_examples_and_extra_keys_are_ignored(tmp_path):
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            {"query": "q1", "pos": ["p1", "p1b"], "neg": ["n1"], "instruction": "Find code"},
            "",
            {
                "query": "q2 — ünïcode",
                "pos": ["p2"],
                "persona": "a farmer",
                "type": "keywords",
                "difficulty": "phd",
                "language": "English",
                "pos_scores": [1.0],
            },
            {"query": "q3", "pos": "lone string", "instruction": ""},
        ],
    )
    assert load_training_data(path) == [
        TrainExample("q1", ["p1", "p1b"], ["n1"], "Find code"),
        TrainExample("q2 — ünïcode", ["p2"], [], None),
        TrainExample("q3", ["lone string"], [], ""),
    ]


def test_write_then_load_round_trips_atomically(tmp_path):
    examples = [
        TrainExample("q", ["p"], ["n1", "n2"], "task"),
        TrainExample("é\n", ["p\nq"], [], None),
    ]
    target = tmp_path / "sub" / "out.jsonl"
    assert write_training_data(target, examples) == 2
    assert load_training_data(target) == examples
    assert os.listdir(target.parent) == ["out.jsonl"]  # no temporary file left behind

    def failing():
        yield examples[0]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_training_data(target, failing())
    assert load_training_data(target) == examples  # the old file is intact
    assert os.listdir(target.parent) == ["out.jsonl"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "q", "pos": ["p"]', "invalid JSON"),
        ('["q", "p"]', "expected a JSON object, got list"),
        ('{"pos": ["p"]}', "missing field 'query'"),
        ('{"query": "  ", "pos": ["p"]}', "field 'query' is empty"),
        ('{"query": 3, "pos": ["p"]}', "field 'query' must be a string, got int"),
        ('{"query": "q"}', "missing field 'pos'"),
        ('{"query": "q", "pos": []}', "field 'pos' is an empty list"),
        ('{"query": "q", "pos": {"a": 1}}', "field 'pos' must be a list of strings, got dict"),
        ('{"query": "q", "pos": ["p", 4]}', r"field 'pos'\[1\] must be a string, got int"),
        ('{"query": "q", "pos": ["p"], "neg": ["n", ""]}', r"field 'neg'\[1\] is empty"),
        ('{"query": "q", "pos": ["p"], "instruction": 1}', "field 'instruction' must be a str"),
    ],
)
def test_jsonl_errors_name_the_file_line_and_field(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [{"query": "fine", "pos": ["p"]}, "", line])
    with pytest.raises(TrainingDataError, match=rf"bad\.jsonl:3: {message}"):
        load_training_data(path)


def test_empty_missing_and_binary_files_are_refused(tmp_path):
    with pytest.raises(TrainingDataError, match="holds no training examples"):
        load_training_data(write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(TrainingDataError, match=r"nope\.jsonl: no such file or folder"):
        load_training_data(tmp_path / "nope.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b'{"query": "\xff"}\n')
    with pytest.raises(TrainingDataError, match=r"bin\.jsonl: not UTF-8"):
        load_training_data(tmp_path / "bin.jsonl")


def make_beir(root: Path, qrels: str, split: str = "train") -> Path:
    write_lines(
        root / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Beijing", "text": "The capital of China."},
            {"_id": 2, "text": "Gravity attracts bodies."},
            {"_id": "d3", "title": "", "text": "Berlin is in Germany."},
        ],
    )
    write_lines(
        root / "queries.jsonl",
        [
            {"_id": "q1", "text": "capital of China?"},
            {"_id": "q2", "text": "what is gravity?"},
            {"_id": "q3", "text": "unjudged"},
        ],
    )
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return root


def test_beir_train_split_positives_and_judged_negatives(tmp_path):
    folder = make_beir(
        tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td3\t0\nq2\t2\t2\n\nq3\td3\t0\n"
    )
    assert load_training_data(folder) == [
        TrainExample(
            "capital of China?", ["Beijing The capital of China."], ["Berlin is in Germany."]
        ),
        TrainExample("what is gravity?", ["Gravity attracts bodies."], []),
    ]  # q3 has no positive: left out
    assert read_beir_corpus(folder)["2"] == "Gravity attracts bodies."


@pytest.mark.parametrize(
    ("qrels", "message"),
    [
        ("q1\td1\n", r"train\.tsv:1: expected 3 tab-separated fields"),
        ("q1\td1\thigh\n", r"train\.tsv:1: field 'score' must be an integer, got 'high'"),
        (
            "query-id\tcorpus-id\tscore\nq9\td1\t1\n",
            r"train\.tsv:2: field 'query-id' names unknown query 'q9'",
        ),
        ("q1\td9\t1\n", r"train\.tsv:1: field 'corpus-id' names unknown document 'd9'"),
        ("q1\td1\t0\n", "no query has a positive judgement"),
    ],
)
def test_beir_errors_name_the_file_line_and_field(tmp_path, qrels, message):
    with pytest.raises(TrainingDataError, match=message):
        load_training_data(make_beir(tmp_path, qrels))


def test_a_beir_folder_without_a_train_split_says_which_splits_it_has(tmp_path):
    folder = make_beir(tmp_path, "q1\td1\t1\n", split="test")
    with pytest.raises(TrainingDataError, match=r"qrels/train\.tsv is missing; it has test\.tsv"):
        load_training_data(folder)


def test_beir_corpus_errors(tmp_path):
    write_lines(tmp_path / "corpus.jsonl", [{"_id": "a", "text": "x"}, {"_id": "a", "text": "y"}])
    with pytest.raises(TrainingDataError, match=r"corpus\.jsonl:2: duplicate document id 'a'"):
        read_beir_corpus(tmp_path)
    write_lines(tmp_path / "corpus.jsonl", [{"_id": "a", "title": "t"}])
    with pytest.raises(TrainingDataError, match=r"corpus\.jsonl:1: missing field 'text'"):
        read_beir_corpus(tmp_path / "corpus.jsonl")
