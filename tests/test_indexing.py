"""The indexing library on its own (no argparse), and the spine's fixes: skipped sources, rebuilds
that keep settings, locks that are released, a busy port for ``serve``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from qwen3_rag.indexing import (
    ConfigMismatchError,
    IndexOptions,
    StoreOptions,
    index,
    open_store,
    prune,
    query,
)

LIB = Path(os.__file__).parent


def _docs(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    for name in ("shutil", "tempfile"):
        text = (LIB / f"{name}.py").read_text(encoding="utf-8")[:2500]
        (folder / f"{name}.md").write_text(text, encoding="utf-8")
    (folder / "sub" / "glob.md").write_text(
        (LIB / "glob.py").read_text(encoding="utf-8")[:2500], encoding="utf-8"
    )
    return folder


def _options(db: Path, model: str, **kw) -> IndexOptions:
    return IndexOptions(
        StoreOptions(db=str(db)),
        chunk_size=400,
        chunk_overlap=40,
        embedding_model=model,
        embedder=kw.pop("embedder", {"max_length": 128}),
        **kw,
    )


@pytest.mark.slow
def test_index_query_prune_from_python(tmp_path, embed_eos_path, reranker_path):
    docs = _docs(tmp_path / "docs")
    db = tmp_path / "db"
    first = index([str(docs)], _options(db, embed_eos_path))
    assert (
        first.files == 3 and first.new == first.chunks > 3 and first.collection_count == first.new
    )
    again = index([str(docs)], _options(db, embed_eos_path))
    assert again.new == 0 and again.unchanged == first.chunks
    hits = query("temporary files", StoreOptions(db=str(db)), reranker=reranker_path, top_n=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    (docs / "shutil.md").unlink()
    pruned = prune(StoreOptions(db=str(db)))
    assert pruned.removed_sources == [str(docs / "shutil.md")] and pruned.removed > 0


def test_another_instruction_is_refused_naming_both(tmp_path, embed_eos_path):
    docs = _docs(tmp_path / "docs")
    db = tmp_path / "db"
    index([str(docs)], _options(db, embed_eos_path, embedder={"instruction": "Task A"}))
    # By name: other tests re-import the Chroma adapter, which makes a new class object.
    with pytest.raises(ValueError, match=r"instruction='Task A'.*instruction='Task B'") as e:
        index([str(docs)], _options(db, embed_eos_path, embedder={"instruction": "Task B"}))
    assert type(e.value).__name__ == ConfigMismatchError.__name__


@pytest.mark.slow
def test_rebuild_keeps_the_settings_it_does_not_override(tmp_path, embed_eos_path):
    docs = _docs(tmp_path / "docs")
    db = tmp_path / "db"
    index([str(docs)], _options(db, embed_eos_path, embedder={"dimensions": 32, "max_length": 64}))
    rebuilt = index([str(docs)], _options(db, None, embedder={"max_length": 128}, rebuild=True))
    assert rebuilt.changed == {"max_length": [64, 128]}
    with open_store(StoreOptions(db=str(db)), write=False) as store:
        stored = store.stored_config()
    assert stored is not None and stored["dimensions"] == 32 and stored["max_length"] == 128


@pytest.mark.slow
def test_locks_are_released_and_a_second_writer_is_refused_meanwhile(tmp_path, embed_eos_path):
    docs = _docs(tmp_path / "docs")
    db = tmp_path / "db"
    index([str(docs)], _options(db, embed_eos_path))
    script = (
        "import sys; from qwen3_rag.indexing import StoreOptions, open_store\n"
        "open_store(StoreOptions(db=sys.argv[1]), write=True).close()\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        store = open_store(StoreOptions(db=str(db)), write=True)
        # Another process cannot write while this one holds the folder...
        held = subprocess.run(
            [sys.executable, "-c", script, str(db)], capture_output=True, text=True, timeout=120
        )
        assert held.returncode != 0 and "in use by another qwen3-rag process" in held.stderr
        store.close()
    # ... and can once it is closed, while this process goes on living.
    free = subprocess.run(
        [sys.executable, "-c", script, str(db)], capture_output=True, text=True, timeout=120
    )
    assert free.returncode == 0, free.stderr
    with open_store(StoreOptions(db=str(db)), write=True):
        pass  # reopened in the same process after a close


def test_links_fifos_and_linked_folders_are_listed_as_skipped(tmp_path, embed_eos_path):
    docs = _docs(tmp_path / "docs")
    (docs / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    os.mkfifo(docs / "pipe.txt")
    (docs / "linked").symlink_to(docs / "sub", target_is_directory=True)
    summary = index([str(docs)], _options(tmp_path / "db", embed_eos_path))
    reasons = {Path(s["path"]).name: s["reason"] for s in summary.skipped_files}
    assert reasons == {
        "dangling.md": "a dangling symbolic link",
        "pipe.txt": "a FIFO, not a regular file",
        "linked": "a symbolic link to a folder (not followed)",
    }
    assert summary.files == 3 and summary.skipped == 3


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_unreadable_subfolder_is_skipped_and_its_chunks_kept(tmp_path, embed_eos_path):
    # Root reads anything: the run drops the capabilities that override file permissions.
    docs = _docs(tmp_path / "docs")
    db = tmp_path / "db"
    argv = [sys.executable, "-m", "qwen3_rag", "index", str(docs), "--db", str(db)]
    argv += ["--embedding-model", embed_eos_path, "--max-length", "128", "--json", "-q"]
    if os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr
    before = json.loads(first.stdout)
    (docs / "sub").chmod(0)
    try:
        second = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    finally:
        (docs / "sub").chmod(0o755)
    assert second.returncode == 0, second.stderr
    after = json.loads(second.stdout)
    assert after["skipped_files"] == [
        {"path": str(docs / "sub"), "reason": "cannot read this folder: Permission denied"}
    ]
    assert after["removed"] == 0 and after["collection_count"] == before["collection_count"]


@pytest.mark.slow
def test_serve_on_a_busy_port_is_one_line_exit_2(tmp_path, embed_eos_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "qwen3_rag",
                "serve",
                "--embedding-model",
                embed_eos_path,
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    "missing, extra, argv",
    [
        ("peft", "train", ["--lora-rank", "8"]),
        ("pytrec_eval", "eval", ["--lora-rank", "0", "--eval", "{beir}"]),
    ],
)
def test_install_hints_name_the_extra_that_has_the_package(
    capsys, monkeypatch, tmp_path, embed_eos_path, missing, extra, argv
):
    from qwen3_rag.cli import main

    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    data = tmp_path / "train.jsonl"
    data.write_text('{"query": "q", "pos": ["p"]}\n', encoding="utf-8")
    (tmp_path / "beir").mkdir()
    argv = [a.format(beir=tmp_path / "beir") for a in argv]
    code = main(
        [
            "finetune",
            "embedder",
            str(data),
            "--model",
            embed_eos_path,
            "--output",
            str(tmp_path / "out"),
            *argv,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f'pip install "qwen3-rag[{extra}]"' in err, err
    assert not (tmp_path / "out").exists()  # refused before any model or output


def test_processes_of_a_killed_drivers_local_ray_are_stopped_and_no_others(tmp_path, monkeypatch):
    import uuid

    from qwen3_rag.indexing import ray_processes

    monkeypatch.setattr(ray_processes, "_sessions_dir", lambda: tmp_path / "records")
    (tmp_path / "records").mkdir()
    session = f"/tmp/ray/session_test_{uuid.uuid4().hex}"
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
    left = subprocess.Popen([*sleeper, session])  # stands for an agent the driver left behind
    other = subprocess.Popen([*sleeper, session + "_other"])  # another, live run's process
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "records" / "1.json").write_text(json.dumps({"pid": dead.pid, "session": session}))
    live = {"pid": os.getpid(), "session": session + "_other"}
    (tmp_path / "records" / "2.json").write_text(json.dumps(live))
    try:
        killed = ray_processes.reap_stale_local_rays()
        assert killed == [left.pid]
        assert left.wait(timeout=10) == -9 and other.poll() is None
        assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["2.json"]
    finally:
        for proc in (left, other):
            proc.kill()
            proc.wait()


def test_retried_reads_and_batches_count_once_and_a_poison_batch_fails_naming_its_files():
    from qwen3_rag.indexing import IndexingError
    from qwen3_rag.indexing.ray_engine import _pipeline_error
    from qwen3_rag.indexing.ray_workers import (
        MAX_BATCH_ATTEMPTS,
        Counter,
        PoisonBatchError,
        _attempts_exceeded,
    )

    counter = Counter()
    for _ in range(2):  # a read task and a batch that Ray ran again after a killed worker
        counter.read("/docs/a.md", 5, 3)
        counter.embedded("batch-1", 3)
    counter.read("/docs/b.md", 2, 2)
    assert counter.get() == {"files": 2, "read": 7, "fresh": 5, "embedded": 3}
    attempts = [counter.attempt("batch-2") for _ in range(MAX_BATCH_ATTEMPTS + 1)]
    assert attempts == list(range(1, MAX_BATCH_ATTEMPTS + 2))
    assert all(_attempts_exceeded(a, ["/docs/a.md"]) is None for a in attempts[:-1])
    error = _attempts_exceeded(attempts[-1], ["/docs/a.md", "/docs/b.md"])
    assert isinstance(error, PoisonBatchError)
    assert f"killed its Ray worker {MAX_BATCH_ATTEMPTS} times" in str(error)
    assert "/docs/a.md, /docs/b.md" in str(error)
    # The driver reports it as the user's one line, not as a bug.
    reported = _pipeline_error(RuntimeError("pipeline failed"))
    assert type(reported) is RuntimeError
    wrapped = RuntimeError("pipeline failed")
    wrapped.__cause__ = error
    assert isinstance(_pipeline_error(wrapped), IndexingError)
