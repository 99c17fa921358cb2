"""Instruction search: chosen on dev only, reported on held-out test queries, LLM proposals
through a fake OpenAI-compatible server on loopback, and the result usable as a flag."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from qwen3_rag.cli import main
from qwen3_rag.core import Qwen3Embedder
from qwen3_rag.eval import (
    Dataset,
    DenseRunner,
    build_stdlib_dataset,
    evaluate_embedder,
    search_instructions,
    split_queries,
    write_beir,
)
from qwen3_rag.eval.instructions import parse_proposals, propose_instructions
from qwen3_rag.synth import CallableLLM, InvalidReply, ReplyCache

HERE = Path(__file__).resolve().parent
CANDIDATES = [
    "",
    "Given a Python docstring sentence, retrieve the function that implements it",
    "Retrieve Python code",
    "Given a question about text wrapping or heaps, find the matching source code",
]


@pytest.fixture(scope="module")
def data() -> Dataset:
    return build_stdlib_dataset(modules=["shlex", "textwrap", "heapq"])


class Recording:
    """A Qwen3Embedder that records which queries it embedded, with which instruction."""

    def __init__(self, embedder: Qwen3Embedder) -> None:
        self.embedder = embedder
        self.calls: list[tuple[frozenset[str], str | None]] = []

    def __getattr__(self, name):
        return getattr(self.embedder, name)

    def embed_queries(self, texts, instruction=None):
        self.calls.append((frozenset(texts), instruction))
        return self.embedder.embed_queries(texts, instruction=instruction)


def test_split_is_seeded_disjoint_and_complete(data):
    dev, test = split_queries(data, 0.5, seed=3)
    assert not set(dev.queries) & set(test.queries)
    assert set(dev.queries) | set(test.queries) == set(data.queries)
    assert abs(len(dev.queries) - len(test.queries)) <= 1
    assert dev.corpus is data.corpus and test.corpus is data.corpus
    again, _ = split_queries(data, 0.5, seed=3)
    assert again.queries == dev.queries
    assert split_queries(data, 0.5, seed=4)[0].queries != dev.queries
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_queries(data, 1.0)


@pytest.mark.slow
def test_the_choice_is_the_dev_argmax_and_the_test_split_never_influences_it(data, embed_eos_path):
    dev, test = split_queries(data, 0.5, seed=1)
    embedder = Recording(Qwen3Embedder(embed_eos_path))
    result = search_instructions(
        embedder, dev, test, CANDIDATES, metrics=["ndcg@10", "mrr@10"], permutations=2000
    )
    # The argmax on dev, recomputed independently, candidate by candidate.
    tried = [embedder.instruction, *CANDIDATES]
    assert [row["instruction"] for row in result.dev] == tried
    scores = [evaluate_embedder(embedder.embedder, dev, instruction=t)["ndcg@10"] for t in tried]
    assert [row["metrics"]["ndcg@10"] for row in result.dev] == pytest.approx(scores, abs=1e-12)
    assert result.instruction == tried[scores.index(max(scores))]
    assert len(set(scores)) > 1  # the candidates really differ on this data
    # The test queries were embedded only after every dev query, with two instructions only.
    test_texts = frozenset(test.queries.values())
    kinds = ["test" if texts == test_texts else "dev" for texts, _ in embedder.calls]
    assert kinds == ["dev"] * len(tried) + ["test"] * len(kinds[len(tried) :])
    assert {i for t, i in embedder.calls if t == test_texts} <= {
        result.instruction,
        result.default,
    }
    # Held-out numbers are the chosen and the default instruction's on test, with a p-value.
    direct = evaluate_embedder(embedder.embedder, test, instruction=result.instruction)
    assert result.test["chosen"]["ndcg@10"] == pytest.approx(direct["ndcg@10"], abs=1e-12)
    assert 0 < result.test["p_values"]["ndcg@10"] <= 1

    # Adversarial test labels: each test query's "relevant" document becomes the first hit of
    # the worst dev candidate, which then wins on test by far. The choice does not move.
    worst = tried[scores.index(min(scores))]
    run = DenseRunner(embedder.embedder, test).run(worst)
    rigged = Dataset(
        test.corpus,
        test.queries,
        {q: {max(run[q], key=run[q].get): 1} for q in test.queries},
        test.name,
    )
    rigged_best = evaluate_embedder(embedder.embedder, rigged, instruction=worst)["ndcg@10"]
    again = search_instructions(embedder.embedder, dev, rigged, CANDIDATES, permutations=2000)
    assert rigged_best == 1.0 > again.test["chosen"]["ndcg@10"]  # the test split says "worst"
    assert again.instruction == result.instruction
    assert [r["metrics"]["ndcg@10"] for r in again.dev] == pytest.approx(scores, abs=1e-12)
    assert again.test != result.test


def test_llm_replies_are_untrusted_and_validated():
    with pytest.raises(InvalidReply, match="no_json"):
        parse_proposals("Sure! Here are some ideas: be concise.", [])
    with pytest.raises(InvalidReply, match="wrong_keys"):
        parse_proposals('{"ideas": ["a b c"]}', [])
    with pytest.raises(InvalidReply, match="no_instruction"):
        parse_proposals('{"instructions": ["Known one", 7, "   "]}', ["known ONE"])
    accepted, rejected = parse_proposals(
        '<think>hmm</think>```json\n{"instructions": ["Find  the\\ncode", "x' + "y" * 400 + '", '
        '"Find the code", "Retrieve the function a docstring describes"]}\n```',
        [],
    )
    assert accepted == ["Find the code", "Retrieve the function a docstring describes"]
    assert rejected == {"bad_value": 1, "duplicate": 1}

    # A callable LLM: junk, then a refusal-free valid reply; each asked once (then cached).
    replies = iter(["no idea", '{"instructions": ["Given code docs, find the function"]}'])
    asked: list[str] = []

    def llm(prompt: str) -> str:
        asked.append(prompt)
        return next(replies)

    data = build_stdlib_dataset(modules=["shlex"])
    cache = ReplyCache(None)
    summary = propose_instructions(CallableLLM(llm, "fake"), data, 1, cache=cache)
    assert summary.accepted == ["Given code docs, find the function"]
    assert (summary.replies, summary.rejected) == (2, {"no_json": 1})
    again = propose_instructions(CallableLLM(llm, "fake"), data, 1, cache=cache)
    assert again.accepted == summary.accepted and again.cached_replies == 2 and len(asked) == 2


# -- the command, with a fake OpenAI-compatible LLM on loopback -----------------------------
def _replies(path: Path) -> Path:
    def completion(text: str) -> dict:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "fake-llm",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }

    first = json.dumps(
        {
            "instructions": [
                "Given the first sentence of a docstring, retrieve the Python function",
                "Given the first sentence of a docstring, retrieve the Python function",
                "z" * 500,
                "Find standard-library code that does what the sentence says",
            ]
        }
    )
    rules = [
        {"when": ["Write 3 new instructions"], "response": completion(f"Here you go:\n{first}")},
        {"when": ["Write 1 new instructions"], "response": completion("I cannot think of more.")},
    ]
    path.write_text(json.dumps({"api_key": None, "rules": rules}), encoding="utf-8")
    return path


@pytest.fixture
def fake_llm(tmp_path):
    log = tmp_path / "requests.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "openai_replay_server.py"),
            str(_replies(tmp_path / "replies.json")),
            str(log),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1", log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_search_command_with_llm_proposals_writes_a_flag_the_other_commands_take(
    tmp_path, fake_llm, embed_eos_path, capsys
):
    url, log = fake_llm
    folder = write_beir(build_stdlib_dataset(modules=["shlex", "heapq"]), tmp_path / "beir")
    (tmp_path / "candidates.txt").write_text(
        "# one a line\nGiven a Python docstring sentence, retrieve the function\n\n"
        "Retrieve Python code\n",
        encoding="utf-8",
    )
    out_file = tmp_path / "instruction.json"
    argv = [
        "eval", str(folder), "--embedding-model", embed_eos_path, "--search-instructions",
        "--candidates", str(tmp_path / "candidates.txt"), "--instruction", "",
        "--propose", "3", "--llm-url", url, "--llm-model", "fake-llm",
        "--eval-cache", str(tmp_path / "cache"), "--save-instruction", str(out_file),
        "--permutations", "2000", "--seed", "2", "-q",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out_file.read_text(encoding="utf-8"))
    chosen = result["instruction"]
    # The last line is the flag, exactly; it parses back to the chosen instruction.
    assert printed[-1] == result["flag"] and shlex.split(printed[-1]) == ["--instruction", chosen]
    sources = [c["source"] for c in result["dev"]["candidates"]]
    assert sources == ["default", "flag", "file", "file", "llm", "llm"]
    proposals = result["llm_proposals"]
    assert proposals["accepted"] == [
        "Given the first sentence of a docstring, retrieve the Python function",
        "Find standard-library code that does what the sentence says",
    ]
    assert proposals["rejected"] == {"duplicate": 1, "bad_value": 1, "no_json": 2}
    assert proposals["replies"] == 3
    best = max(c["metrics"]["ndcg@10"] for c in result["dev"]["candidates"])
    first_best = next(c for c in result["dev"]["candidates"] if c["metrics"]["ndcg@10"] == best)
    assert chosen == first_best["instruction"]
    assert set(result["test"]) == {"queries", "chosen", "default", "p_values"}
    assert not set(result["dev_query_ids"]) & set(result["test_query_ids"])
    # The LLM saw dev queries only (the examples of its prompt), never a test query.
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(requests) == 3
    data = build_stdlib_dataset(modules=["shlex", "heapq"])
    for request in requests:
        assert any(data.queries[q] in request["prompt"] for q in result["dev_query_ids"])
        assert not any(data.queries[q] in request["prompt"] for q in result["test_query_ids"])
    # A re-run makes no LLM call (the replies are cached) and chooses the same.
    assert main(argv) == 0
    capsys.readouterr()
    assert len(log.read_text().splitlines()) == 3
    assert json.loads(out_file.read_text(encoding="utf-8"))["instruction"] == chosen
    # What index, serve, finetune and the adapters take: instruction= / --instruction.
    embedder = Qwen3Embedder(embed_eos_path, instruction=chosen)
    assert embedder.embed_queries(["split a shell line"]).shape == (1, 64)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--baseline", "bm25", "--instruction", "x y z"],
            "--baseline: not with --search-instructions",
        ),
        ([], "needs candidates"),
        (["--propose", "2"], "--propose needs an LLM"),
        (["--instruction", "a b c", "--dimensions", "32,64"], "one --dimensions value"),
        (["--instruction", "a b c", "--dimensions", "1024"], "dimensions=1024 is out of range"),
        (["--instruction", "a b c", "--search-metric", "f1"], "unknown metric 'f1'"),
        (["--instruction", "a b c", "--dev-fraction", "1.5"], None),
    ],
)
def test_search_errors_come_before_any_embedding(extra, message, tmp_path, embed_eos_path, capsys):
    argv = [
        "eval", "stdlib:shlex", "--embedding-model", embed_eos_path, "--search-instructions",
        "--eval-cache", str(tmp_path / "cache"), "--save-instruction", str(tmp_path / "i.json"),
        "-q", *extra,
    ]  # fmt: skip
    if message is None:
        with pytest.raises(SystemExit):
            main(argv)
        assert "--dev-fraction" in capsys.readouterr().err
        return
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing was embedded
    assert not (tmp_path / "i.json").exists()


def test_candidate_file_errors_name_the_line(tmp_path, capsys):
    bad = tmp_path / "c.txt"
    bad.write_text("Fine instruction\n" + "x" * 400 + "\n", encoding="utf-8")
    argv = ["eval", "stdlib:shlex", "--search-instructions", "--candidates", str(bad), "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "c.txt:2" in err and "at most 300" in err
