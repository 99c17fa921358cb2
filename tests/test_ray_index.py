"""``qwen3-rag index --engine ray``: the single-process indexer's collection, on local Ray.

One Ray head (``ray start --head --block``) and one ``chroma run`` server are shared by the
module: Ray's start-up is the slow part on 2 cores. Every run joins that head with
``--ray-address``, except the killed-driver clean-up test and the README test, which run the
command without it (a local Ray of their own).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qwen3_rag.cli import main

from conftest import chroma_server, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMON = ["--max-length", "256", "--chunk-size", "200", "--chunk-overlap", "20", "--json", "-q"]


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with chroma_server(tmp_path_factory.mktemp("chroma")) as url:
        yield url


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray head for the module; `--block` keeps it in the foreground, so it is ours to stop."""
    # Token authentication: conftest sets RAY_AUTH_MODE and RAY_AUTH_TOKEN before Ray is imported.
    assert os.environ.get("RAY_AUTH_MODE") == "token" and os.environ.get("RAY_AUTH_TOKEN")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc, "ray start")
        yield f"127.0.0.1:{port}"
    finally:
        # `ray start --block` stops the processes it started; they share its new session.
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def write_corpus(folder: Path) -> Path:
    """Text nobody here wrote (standard-library docstrings), a PDF, a subfolder, a stray file."""
    from test_cli import minimal_pdf

    (folder / "sub").mkdir(parents=True)
    for name in ("shutil", "json/__init__", "argparse", "pathlib"):
        source = Path(os.__file__).parent / f"{name}.py"
        text = source.read_text(encoding="utf-8")
        (folder / f"{name.replace('/', '_')}.md").write_text(text[:1500], encoding="utf-8")
    (folder / "sub" / "planets.txt").write_text("Venus is the hottest planet.", encoding="utf-8")
    (folder / "coffee.txt").write_text("Grind size matters. Water at 93 degrees.", encoding="utf-8")
    (folder / "manual.pdf").write_bytes(minimal_pdf("The reset button is on the back panel."))
    (folder / "empty.txt").write_text("   \n", encoding="utf-8")
    (folder / "ignored.csv").write_text("a,b", encoding="utf-8")
    return folder


def index(capsys, *argv: str) -> dict:
    code = main(["index", *argv, *COMMON])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def snapshot(url: str, name: str) -> dict:
    """Everything the collection holds, by id, and its stored embedding-function config."""
    import chromadb

    port = int(url.rsplit(":", 1)[1])
    col = chromadb.HttpClient(host="127.0.0.1", port=port).get_collection(
        name, embedding_function=None
    )
    got = col.get(include=["documents", "metadatas", "embeddings"])
    rows = {
        i: (d, m, np.asarray(e, dtype=np.float64))
        for i, d, m, e in zip(
            got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
        )
    }
    return {"rows": rows, "config": col.configuration_json["embedding_function"]}


def assert_same(ray: dict, local: dict) -> None:
    assert ray["config"] == local["config"]
    assert sorted(ray["rows"]) == sorted(local["rows"])
    for chunk_id, (doc, meta, vec) in local["rows"].items():
        other_doc, other_meta, other_vec = ray["rows"][chunk_id]
        assert other_doc == doc and other_meta == meta, chunk_id
        cosine = float(vec @ other_vec / np.linalg.norm(vec) / np.linalg.norm(other_vec))
        assert cosine >= 0.99999, (chunk_id, cosine)


def without_time(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "seconds"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_builds_the_single_process_collection_and_tracks_changes(
    capsys, monkeypatch, tmp_path, embed_eos_path, chroma_url, ray_address
):
    # Two batches at a time per worker, as on a GPU worker: one's upsert beside the next's
    # forward, and the results must not change.
    monkeypatch.setattr("qwen3_rag.indexing.ray_workers.CALLS_PER_CPU_WORKER", 2)
    docs = write_corpus(tmp_path / "docs")
    base = [str(docs), "--chroma-url", chroma_url, "--embedding-model", embed_eos_path]
    ray = [*base, "--collection", "by-ray", "--engine", "ray", "--ray-address", ray_address]
    # Small batches: several workers' batches and files cross batch boundaries.
    ray += ["--batch-size", "4"]
    local = [*base, "--collection", "by-local"]

    first_local = index(capsys, *local)
    first = index(capsys, *ray)
    assert without_time(first) == without_time(first_local)
    assert first["files"] == 8 and first["new"] == first["chunks"] > 20
    assert_same(snapshot(chroma_url, "by-ray"), snapshot(chroma_url, "by-local"))

    # A re-run changes nothing (the vectors are not even rewritten).
    before = snapshot(chroma_url, "by-ray")
    again = index(capsys, *ray)
    assert again["new"] == 0 and again["removed"] == 0 and again["unchanged"] == first["chunks"]
    after = snapshot(chroma_url, "by-ray")
    assert after["rows"].keys() == before["rows"].keys()
    for chunk_id, (doc, meta, vec) in before["rows"].items():
        assert after["rows"][chunk_id][:2] == (doc, meta)
        assert np.array_equal(after["rows"][chunk_id][2], vec)

    # A changed file and a deleted one: the same result as the single-process indexer's.
    (docs / "coffee.txt").write_text("Espresso needs a fine grind.", encoding="utf-8")
    (docs / "sub" / "planets.txt").unlink()
    changed_local = index(capsys, *local)
    changed = index(capsys, *ray)
    assert without_time(changed) == without_time(changed_local)
    assert changed["new"] == 1 and changed["removed"] == 2
    assert changed["removed_sources"] == [str(docs / "sub" / "planets.txt")]
    by_ray = snapshot(chroma_url, "by-ray")
    assert_same(by_ray, snapshot(chroma_url, "by-local"))
    documents = [doc for doc, _, _ in by_ray["rows"].values()]
    assert "Espresso needs a fine grind." in documents and "Grind size" not in str(documents)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_progress_counts_chunks_read_embedded_and_written_from_the_driver(
    capsys, tmp_path, embed_eos_path, chroma_url, ray_address
):
    docs = write_corpus(tmp_path / "docs")
    argv = ["index", str(docs), "--chroma-url", chroma_url, "--embedding-model", embed_eos_path]
    argv += ["--collection", "progress", "--engine", "ray", "--ray-address", ray_address]
    argv += ["--batch-size", "4", *[a for a in COMMON if a != "-q"]]
    assert main(argv) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out)
    lines = [line for line in captured.err.splitlines() if line.startswith("index: ")]
    n, files = stats["new"], stats["files"] + stats["skipped"]
    final = (
        f"index: {stats['chunks']:,} chunks read, {n:,} embedded, {n:,} written, "
        rf"[\d,.]+ chunks/s, {files}/{files} files read, done"
    )
    assert lines and re.fullmatch(final, lines[-1]), captured.err


def _embed_workers() -> set[int]:
    """Pids of the processes running the embedding actor (Ray names them after the class)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"EmbedWriter" in cmdline:
            pids.add(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_worker_is_replaced_and_the_collection_is_complete(
    capsys, tmp_path, embed_eos_path, chroma_url, ray_address
):
    import chromadb

    docs = _long_corpus(tmp_path / "docs")
    base = [str(docs), "--chroma-url", chroma_url, "--embedding-model", embed_eos_path]
    reference = index(capsys, *base, "--collection", "killed-ref")

    argv = [sys.executable, "-m", "qwen3_rag", "index", *base, "--collection", "killed"]
    argv += ["--engine", "ray", "--ray-address", ray_address, "--batch-size", "2", *COMMON]
    before = _embed_workers()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = int(chroma_url.rsplit(":", 1)[1])
    client = chromadb.HttpClient(host="127.0.0.1", port=port)
    try:
        killed, written_at_kill = None, 0
        deadline = time.monotonic() + 180
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            workers = _embed_workers() - before
            written = _count(client, "killed")
            if workers and written > 0:
                killed, written_at_kill = workers.pop(), written
                os.kill(killed, 9)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed is not None, f"no worker seen mid-run:\n{err}"
    assert proc.returncode == 0, err
    # Ray's own C++ log lines (`core_worker.cc:NNN: ... max_restarts`) stay hidden without -v.
    assert not re.search(r"\w+\.cc:\d+", err), err
    stats = json.loads(out)
    # The kill came while chunks were still to be written, and none of them is missing.
    assert written_at_kill < stats["new"] == reference["chunks"]
    assert stats["collection_count"] == reference["collection_count"]
    assert_same(snapshot(chroma_url, "killed"), snapshot(chroma_url, "killed-ref"))


def _long_corpus(folder: Path) -> Path:
    folder.mkdir()
    lib = Path(os.__file__).parent
    for name in ("os", "shutil", "tempfile", "subprocess", "typing", "inspect"):
        text = (lib / f"{name}.py").read_text(encoding="utf-8")[:8000]
        (folder / f"{name}.md").write_text(text, encoding="utf-8")
    return folder


def _count(client, name: str) -> int:
    try:
        return int(client.get_collection(name, embedding_function=None).count())
    except Exception:  # not created yet
        return 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_driver_killed_mid_run_and_started_again_finishes_the_same_collection(
    capsys, tmp_path, embed_eos_path, chroma_url, ray_address
):
    import chromadb

    docs = _long_corpus(tmp_path / "docs")
    base = [str(docs), "--chroma-url", chroma_url, "--embedding-model", embed_eos_path]
    reference = index(capsys, *base, "--collection", "driver-ref")
    ray = [*base, "--collection", "driver-killed", "--engine", "ray"]
    ray += ["--ray-address", ray_address, "--batch-size", "2"]

    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen3_rag", "index", *ray, *COMMON],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    port = int(chroma_url.rsplit(":", 1)[1])
    client = chromadb.HttpClient(host="127.0.0.1", port=port)
    try:
        written_at_kill = 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            written_at_kill = _count(client, "driver-killed")
            if written_at_kill > 0:
                proc.kill()  # SIGKILL: no handler, no clean-up in the driver
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{err}"
    assert 0 < written_at_kill < reference["chunks"]

    # Started again: what was stored stays, the rest is embedded, nothing is doubled.
    again = index(capsys, *ray)
    assert again["unchanged"] + again["new"] == again["chunks"] == reference["chunks"]
    assert again["unchanged"] > 0 and again["removed"] == 0
    assert again["collection_count"] == reference["collection_count"]
    assert_same(snapshot(chroma_url, "driver-killed"), snapshot(chroma_url, "driver-ref"))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_local_ray_left_by_a_killed_driver_is_stopped_by_the_next_run(
    capsys, tmp_path, embed_eos_path, chroma_url
):
    """No --ray-address: the driver starts a local Ray; SIGKILLed, it cannot stop it."""
    from qwen3_rag.indexing import ray_processes

    docs = _long_corpus(tmp_path / "docs")
    argv = [str(docs), "--chroma-url", chroma_url, "--embedding-model", embed_eos_path]
    argv += ["--collection", "local-killed", "--engine", "ray", "--batch-size", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen3_rag", "index", *argv, *COMMON],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    record = ray_processes._sessions_dir() / f"{proc.pid}.json"
    port = int(chroma_url.rsplit(":", 1)[1])
    import chromadb

    client = chromadb.HttpClient(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if record.exists() and _count(client, "local-killed") > 0:
                session = json.loads(record.read_text(encoding="utf-8"))["session"]
                proc.kill()  # SIGKILL: the driver's atexit clean-up never runs
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{err}"
    assert record.exists()  # the killed driver's record stays for the next run to find
    left_by_kill = ray_processes.session_processes(session)

    # The next run (any local Ray) stops what is left of that session and finishes the
    # collection.
    again = index(capsys, *argv)
    assert again["unchanged"] > 0 and again["unchanged"] + again["new"] == again["chunks"]
    assert not record.exists()
    deadline = time.monotonic() + 30
    while ray_processes.session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.5)  # SIGKILLed processes disappear once reaped by their parent
    left = [_cmdline(pid) for pid in ray_processes.session_processes(session)]
    assert left == [], (left, left_by_kill)


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_truncation_warning_is_the_single_process_indexers(
    capsys, tmp_path, embed_eos_path, chroma_url, ray_address
):
    from test_cli import truncation_corpus

    docs = truncation_corpus(tmp_path / "docs")
    argv = ["index", str(docs), "--chroma-url", chroma_url, "--embedding-model", embed_eos_path]
    argv += ["--max-length", "32", "--chunk-size", "1000", "--chunk-overlap", "0", "-q"]
    local = ["--collection", "cut-local"]
    ray = ["--collection", "cut-ray", "--engine", "ray", "--ray-address", ray_address]
    warnings = []
    for extra in (local, [*ray, "--batch-size", "8"]):  # batches with and without long chunks
        assert main([*argv, *extra]) == 0
        warnings.append([line for line in capsys.readouterr().err.splitlines() if "trunc" in line])
    assert len(warnings[0]) == 1 and " of 34 chunks were longer" in warnings[0][0]
    assert warnings[1] == warnings[0]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_unreachable_ray_address_fails_fast_naming_it(
    capsys, tmp_path, embed_eos_path, chroma_url
):
    docs = write_corpus(tmp_path / "docs")
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    argv = ["index", str(docs), "--engine", "ray", "--ray-address", address]
    code = main([*argv, "--chroma-url", chroma_url, "--embedding-model", embed_eos_path])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot reach the Ray cluster at {address}" in err, err
    assert "Traceback" not in err and time.monotonic() - started < 60


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--chroma-url", "http://127.0.0.1:9"],
            "cannot reach the Chroma server at http://127.0.0.1:9",
        ),
        (["--db", "{tmp}/db"], "embedded Chroma is a single-process store"),
        ([], "--chroma-url http://localhost:8000"),
        (["--chroma-url", "http://127.0.0.1:9", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_input_fails_before_ray_starts(capsys, tmp_path, embed_eos_path, extra, message):
    docs = write_corpus(tmp_path / "docs")
    argv = ["index", str(docs), "--engine", "ray", "--embedding-model", embed_eos_path]
    code = main(argv + [a.format(tmp=tmp_path) for a in extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    import ray

    assert not ray.is_initialized()


def test_ray_flags_need_the_ray_engine(capsys, tmp_path, embed_eos_path):
    docs = write_corpus(tmp_path / "docs")
    code = main(["index", str(docs), "--db", str(tmp_path / "db"), "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--workers need(s) --engine ray" in err


def test_the_python_api_reports_bad_input_as_value_errors(tmp_path, embed_eos_path):
    from qwen3_rag.distributed import index_with_ray

    docs = write_corpus(tmp_path / "docs")
    with pytest.raises(
        ValueError, match=r"cannot reach the Chroma server at http://127\.0\.0\.1:9"
    ):
        index_with_ray([str(docs)], "http://127.0.0.1:9", embedding_model=embed_eos_path)
    # The Python API names its keyword (the CLI says --chunk-overlap).
    with pytest.raises(ValueError, match="chunk_overlap must be from 0"):
        index_with_ray([str(docs)], "http://127.0.0.1:9", chunk_size=10, chunk_overlap=10)
    with pytest.raises(TypeError, match="unknown embedding option"):
        index_with_ray([str(docs)], "http://127.0.0.1:9", trust_remote_code=True)
