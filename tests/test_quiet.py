"""#28 items 4 and 6: the clone-root import, quiet by default, one wording per message.

Every check reads what real runs print (stderr, logs, stdout) on the tiny checkpoints.
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

from qwen3_rag import Qwen3Embedder, Qwen3Reranker
from qwen3_rag.cli import main
from qwen3_rag.core.runtime import AUTO_PROGRESS_MIN_BATCHES

ROOT = Path(__file__).resolve().parents[1]
hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")


@pytest.fixture()
def bars_on():
    """transformers' bars on (its default) with a huggingface_hub group setting of the caller's;
    both are put back as they were after the test."""
    was_on, states = hf_logging.is_progress_bar_enabled(), dict(hub_tqdm.progress_bar_states)
    hf_logging.enable_progress_bar()
    hub_tqdm.progress_bar_states["some.group"] = False  # the caller's own choice for one group
    yield dict(hub_tqdm.progress_bar_states)
    (hf_logging.enable_progress_bar if was_on else hf_logging.disable_progress_bar)()
    hub_tqdm.progress_bar_states.clear()
    hub_tqdm.progress_bar_states.update(states)


def fresh_copy(model: str, folder: Path) -> str:
    """A copy of a checkpoint under a new path: the model cache shares loads by path, and a
    shared model is not loaded again (so it would draw no bar either way)."""
    shutil.copytree(model, folder)
    return str(folder)


# -- item 6: the weight-loading bar -----------------------------------------------------------------
@pytest.mark.slow
def test_library_loads_are_quiet_unless_asked_and_settings_come_back(
    capsys, tmp_path, bars_on, embed_eos_path, reranker_path
):
    Qwen3Embedder(fresh_copy(embed_eos_path, tmp_path / "e1"))
    Qwen3Reranker(fresh_copy(reranker_path, tmp_path / "r1"))
    Qwen3Embedder(fresh_copy(embed_eos_path, tmp_path / "e2"), show_progress=False)
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err
    # The caller's settings, transformers' and huggingface_hub's per-group one, are back.
    assert hf_logging.is_progress_bar_enabled()
    assert hub_tqdm.progress_bar_states == bars_on

    Qwen3Embedder(fresh_copy(embed_eos_path, tmp_path / "e3"), show_progress=True)
    Qwen3Reranker(fresh_copy(reranker_path, tmp_path / "r3"), show_progress=True)
    assert capsys.readouterr().err.count("Loading weights") >= 2

    # The caller turned transformers' bars off: asking the library for bars does not undo it.
    hf_logging.disable_progress_bar()
    Qwen3Embedder(fresh_copy(embed_eos_path, tmp_path / "e4"), show_progress=True)
    assert "Loading weights" not in capsys.readouterr().err
    assert not hf_logging.is_progress_bar_enabled()


@pytest.mark.slow
def test_concurrent_loads_are_quiet_and_leave_transformers_intact(
    capsys, tmp_path, bars_on, embed_eos_path, reranker_path
):
    """Loads in threads: quiet, settings back, and transformers still loads tied heads after.

    transformers' loading patches process-wide functions and puts them back; interleaved loads
    in threads used to leave its weight tying switched off for good (the next reranker failed
    with "Cannot copy out of meta tensor").
    """
    jobs = [
        (Qwen3Embedder if i % 2 else Qwen3Reranker, fresh_copy(path, tmp_path / f"m{i}"))
        for i, path in enumerate([reranker_path, embed_eos_path] * 2)
    ]
    errors: list[BaseException] = []

    def load(cls: type, path: str) -> None:
        try:
            cls(path)
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=load, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
    assert hub_tqdm.progress_bar_states == bars_on
    after = Qwen3Reranker(fresh_copy(reranker_path, tmp_path / "after"), max_length=128)
    assert 0.0 < after.score("kettle?", ["descale the kettle"])[0] < 1.0


@pytest.mark.slow
def test_llamaindex_adapter_follows_llamaindex_show_progress_default_false(
    capsys, tmp_path, bars_on, embed_eos_path, reranker_path
):
    from qwen3_rag.integrations.llamaindex import Qwen3Embedding, Qwen3Rerank

    adapter = Qwen3Embedding(model=fresh_copy(embed_eos_path, tmp_path / "e"), max_batch_size=1)
    rerank = Qwen3Rerank(model=fresh_copy(reranker_path, tmp_path / "r"))
    assert adapter.embedder.config.show_progress is False
    assert rerank.reranker.config.show_progress is False
    # One-text batches, enough for the core alone to draw its bar (a long job); LlamaIndex not.
    texts = [f"note {i} about kettles" for i in range(AUTO_PROGRESS_MIN_BATCHES)]
    adapter.get_text_embedding_batch(texts)
    assert capsys.readouterr().err == ""
    adapter.get_text_embedding_batch(texts, show_progress=True)  # LlamaIndex's own bar
    assert "Generating embeddings" in capsys.readouterr().err

    asked = Qwen3Embedding(model=fresh_copy(embed_eos_path, tmp_path / "e2"), show_progress=True)
    assert asked.embedder.config.show_progress is True
    assert "Loading weights" in capsys.readouterr().err
    # A built core object keeps its own setting (and is not refused as "options given").
    built = Qwen3Embedder(embed_eos_path)
    assert Qwen3Embedding(model=built).embedder.config.show_progress is None


def test_tiny_checkpoints_are_written_without_progress_bars(capsys, tmp_path, bars_on):
    from tiny_models import build_checkpoint

    build_checkpoint(tmp_path / "tiny", "embedding")
    assert "Writing model shards" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()


# -- item 6: the indexer's lines ------------------------------------------------------------------
@pytest.mark.slow
def test_index_progress_has_no_empty_first_line_and_one_duration(
    capsys, tmp_path, monkeypatch, embed_eos_path
):
    from qwen3_rag.indexing import progress

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)  # every update becomes a line
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"n{i}.txt").write_text(f"Note {i}: descale the kettle monthly.", encoding="utf-8")
    argv = ["index", str(docs), "--db", str(tmp_path / "db"), "--embedding-model", embed_eos_path]
    code = main([*argv, "--max-length", "64", "--attn-implementation", "eager"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("index:")]
    assert lines, captured.err
    # Files smaller than a write batch: before, each was an "index: 0 chunks written ... ETA ?".
    assert not any(" 0 chunks written" in line or "ETA ?" in line for line in lines), lines
    assert lines[-1].endswith("6/6 files read, done"), lines
    # The run's one duration is the summary's, in one wording.
    durations = re.findall(r"\bin (\d+:\d\d|[\d.]+ ?s)\b", captured.err + captured.out)
    assert len(durations) == 1 and re.search(r" in [\d.]+s -> collection", captured.out), (
        captured.out,
        captured.err,
    )


# -- item 6: one truncation wording, one home -----------------------------------------------------
TRUNCATED = re.compile(
    r"\d+ of \d+ (inputs|chunks) were longer than max_length=\d+ tokens and were truncated; "
    r".+ to keep all text"
)


@pytest.mark.slow
def test_truncation_warning_has_one_wording_in_the_core_and_the_indexer(
    caplog, tmp_path, embed_eos_path, reranker_path
):
    from qwen3_rag.indexing import IndexOptions, StoreOptions, index

    long = "the kettle is on " * 40
    caplog.set_level(logging.WARNING, logger="qwen3_rag")
    Qwen3Embedder(embed_eos_path, max_length=32).embed_documents([long, "short"])
    Qwen3Reranker(reranker_path, max_length=128).score("kettle?", [long])
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "long.txt").write_text(long, encoding="utf-8")
    options = IndexOptions(
        StoreOptions(db=str(tmp_path / "db")),
        embedding_model=embed_eos_path,
        embedder={"max_length": 32},
        chunk_size=1000,
        chunk_overlap=0,
    )
    index([str(docs)], options)
    records = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(records) == 3, [r.getMessage() for r in records]
    assert all(TRUNCATED.fullmatch(r.getMessage()) for r in records), [
        r.getMessage() for r in records
    ]
    assert {r.name for r in records} == {"qwen3_rag.core.runtime"}  # one home for the text
    assert records[0].getMessage().startswith("1 of 2 inputs were longer than max_length=32")
    assert "chunk size" in records[2].getMessage() and " chunks were " in records[2].getMessage()


# -- item 6: Chroma's refusal says what to do -----------------------------------------------------
def test_a_collection_made_by_another_tool_is_refused_with_what_to_do(tmp_path, embed_eos_path):
    import chromadb

    from qwen3_rag.integrations.chroma import Qwen3EmbeddingFunction, open_collection

    client = chromadb.PersistentClient(str(tmp_path / "db"))
    client.create_collection("docs", embedding_function=None)  # as LangChain's Chroma does
    client.create_collection("other")  # Chroma's default embedding function
    function = Qwen3EmbeddingFunction(embed_eos_path)
    with pytest.raises(ValueError) as refused:
        open_collection(client, "docs", function)
    message = str(refused.value)
    assert "None" not in message and "records no embedding function" in message
    assert "another collection name" in message and "delete_collection('docs')" in message
    with pytest.raises(ValueError) as refused:
        open_collection(client, "other", function)
    message = str(refused.value)
    assert "the embedding function 'default', not qwen3-rag's 'qwen3_rag'" in message
    assert "open it with 'default', or give this one another collection name" in message
    client.delete_collection("docs")  # what the message says works
    assert open_collection(client, "docs", function).count() == 0


# -- item 6: merge says what it wrote -------------------------------------------------------------
def test_merge_says_what_it_wrote(capsys, tmp_path, embed_eos_path):
    from safetensors import safe_open

    a, b = fresh_copy(embed_eos_path, tmp_path / "a"), fresh_copy(embed_eos_path, tmp_path / "b")
    target = tmp_path / "merged"
    assert main(["merge", a, b, "--output", str(target), "--t", "0.25", "-q"]) == 0
    out = capsys.readouterr().out.strip()
    with safe_open(str(target / "model.safetensors"), framework="pt") as f:
        tensors = len(list(f.keys()))
    assert out == (
        f"merged 2 checkpoints (slerp, weights 0.75, 0.25) into the model folder {str(target)!r}: "
        f"{tensors} tensors in 1 safetensors file(s), the other files (config, tokenizer) copied "
        f"from {a!r}"
    )


# -- item 4: the clone-root import ----------------------------------------------------------------
@pytest.mark.slow
def test_a_regular_install_run_from_the_clone_root_fails_in_one_line(tmp_path):
    """A virtualenv holding a regular (non-editable) install, as ``pip install .`` makes one."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # The dependencies (torch, transformers, ...) from this environment, as a plain path entry:
    # its .pth files, this checkout's editable install among them, are not read from there.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", site, str(ROOT)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip

    def run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True)

    at_root = run("from qwen3_rag import Qwen3Embedder", ROOT)
    assert at_root.returncode == 1
    last = at_root.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: qwen3_rag is imported from the clone's source folder")
    assert "pip install -e ." in last and "make venv" in last and "outside the clone" in last
    assert "No module named" not in at_root.stderr and "During handling" not in at_root.stderr

    elsewhere = run(
        "import qwen3_rag, qwen3_rag.core; print(qwen3_rag.__file__, qwen3_rag.Qwen3Embedder)",
        tmp_path,
    )
    assert elsewhere.returncode == 0 and elsewhere.stdout.startswith(site), elsewhere.stderr
    for cwd in (ROOT, tmp_path):
        assert run("import core", cwd).returncode == 1  # never a top-level package
        assert run("import integrations", cwd).returncode == 1


@pytest.mark.slow
def test_the_editable_install_imports_from_the_clone_root():
    done = subprocess.run(
        [sys.executable, "-c", "import qwen3_rag, qwen3_rag.core; print(qwen3_rag.core.__file__)"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == ROOT / "core" / "__init__.py"
    refused = subprocess.run(
        [sys.executable, "-c", "import core"], cwd=ROOT, capture_output=True, text=True
    )
    assert refused.returncode == 1 and "installs as 'qwen3_rag.core'" in refused.stderr
