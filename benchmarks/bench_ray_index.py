"""``qwen3-rag index --engine ray`` against the single-process indexer, same corpus and cores.

Both commands run as users run them, each in its own process (imports, model load and, for
Ray, starting and stopping a local Ray are all in its time), one after the other into one
``chroma run`` server (new collections), with the same model options. The model is a
random-weight checkpoint of the official Qwen3-Embedding-0.6B shape by default (speed does not
depend on the weights), or ``--shape small`` (4 layers, hidden 256) to see the engine's fixed
cost on short jobs. The share of time in the model is the embedder alone on the same chunk
texts (in this process, after a warm-up), divided by each run's time.

    python benchmarks/bench_ray_index.py                              # 0.6B shape, 30 files
    python benchmarks/bench_ray_index.py --shape small --files 400 --out /tmp/small.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_index import SHAPES  # noqa: E402

from qwen3_rag import Qwen3Embedder  # noqa: E402
from qwen3_rag.cli.index import plan_file  # noqa: E402

from tiny_models import OFFICIAL_0_6B, build_checkpoint  # noqa: E402

SHAPES = {**SHAPES, "0.6b": OFFICIAL_0_6B}


def corpus(folder: Path, files: int) -> None:
    """Standard-library modules' sources (real text), 4,000 characters each."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(lib.glob("*.py"))
    for i in range(files):
        text = sources[i % len(sources)].read_text(encoding="utf-8", errors="replace")
        (folder / f"{i:04d}.md").write_text(text[:4000] or "empty", encoding="utf-8")


def chroma(path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("chroma")),
            "run",
            "--path",
            str(path),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("chroma run did not start") from None
            time.sleep(0.3)


def timed_index(argv: list[str]) -> tuple[float, dict]:
    """Run ``qwen3-rag index`` as a new process: its wall time and its ``--json`` summary."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "qwen3_rag", "index", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"index failed with exit status {done.returncode}: {done.stderr}")
    return seconds, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.6b")
    parser.add_argument("--model", type=Path, default=None, help="reuse a checkpoint folder")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray_index.json"
    )
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qwen3rag-bench-ray-"))
    server = None
    try:
        model = opts.model or build_checkpoint(
            work / "model", "embedding", shape=SHAPES[opts.shape], eos_postprocessor=True
        )
        docs = work / "docs"
        docs.mkdir()
        corpus(docs, opts.files)
        texts = [
            c.text for p in sorted(docs.iterdir()) for c in plan_file(p, set(), 1000, 150).fresh
        ]
        server, url = chroma(work / "chroma")
        common = ["--chroma-url", url, "--embedding-model", str(model), "--max-length", "512"]
        common += ["--json", "-q"]
        warm = work / "warm"
        warm.mkdir()
        corpus(warm, 1)
        timed_index([str(warm), *common, "--collection", "warm-up"])  # disk caches, .pyc
        local_s, local = timed_index([str(docs), *common, "--collection", "single-process"])
        ray_s, ray = timed_index([str(docs), *common, "--collection", "by-ray", "--engine", "ray"])
        if ray["collection_count"] != local["collection_count"]:
            raise SystemExit(f"the collections differ: {ray} vs {local}")

        load = time.perf_counter()
        embedder = Qwen3Embedder(str(model), show_progress=False, max_length=512)
        load_seconds = time.perf_counter() - load
        embedder.embed_documents(texts[:2])  # warm-up
        started = time.perf_counter()
        embedder.embed_documents(texts)
        embed_seconds = time.perf_counter() - started
        del embedder

        import ray as ray_module

        started = time.perf_counter()
        ray_module.init(
            address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
        ray_module.shutdown()
        ray_start_s = time.perf_counter() - started
        load1 = os.getloadavg()[0]
        result = {
            "files": opts.files,
            "chunks": len(texts),
            "model": f"random-weight Qwen3, {opts.shape} shape, max_length 512, fp32 CPU",
            "single_process_index_s": round(local_s, 2),
            "ray_index_s": round(ray_s, 2),
            "ray_throughput_vs_single_process": round(local_s / ray_s, 3),
            "ray_extra_s": round(ray_s - local_s, 2),
            "ray_start_and_stop_s": round(ray_start_s, 2),
            "embed_only_s": round(embed_seconds, 2),
            "model_load_s": round(load_seconds, 2),
            "model_share_single_process": round(embed_seconds / local_s, 3),
            "model_share_ray": round(embed_seconds / ray_s, 3),
            "load_average_1min_at_end": round(load1, 2),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        }
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
