"""Server throughput under concurrent clients, as a share of in-process batch throughput.

The same texts run in this process as offline batches (``embed_documents`` on all sentences at
once; ``score`` once per query), timed right before they are sent to a real ``qwen3-rag serve``
process on 127.0.0.1 by many concurrent clients (threads sharing one RemoteEmbedder /
RemoteReranker):

- embedding: ``--embed-clients`` clients (64), each sending ``--embed-requests`` requests of one
  sentence, one after another;
- reranking: ``--rerank-clients`` clients (16), each sending ``--rerank-requests`` requests of
  1 query x ``--rerank-docs`` (20) sentences.

Each load runs twice: against the server as it ships (concurrent requests share forwards) and
against ``--max-batch-requests 1`` (one request per forward). Reported: requests/s and texts/s,
the share of offline throughput, p50/p99 latency, and the largest difference between the
server's results and the offline ones (0: exact). Models are random weights of the official
Qwen3-*-0.6B shape, as in bench.py (speed does not depend on the values).

    python benchmarks/bench_server.py                       # CPU, a few minutes on 2 cores
    python benchmarks/bench_server.py --device cuda         # GPU, bf16
    python benchmarks/bench_server.py --smoke               # tiny model, seconds
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the random-checkpoint builder lives with the tests

from qwen3_rag import Qwen3Embedder, Qwen3Reranker, RemoteEmbedder, RemoteReranker  # noqa: E402

from tiny_models import OFFICIAL_0_6B, build_checkpoint  # noqa: E402

#: Modules whose docstrings give the sentences: real text nobody here wrote.
SOURCE_MODULES = ("json", "pathlib", "collections", "functools", "itertools", "shutil", "re",
                  "textwrap", "string", "os", "argparse", "logging", "threading", "subprocess",
                  "socket", "email", "csv", "zipfile", "tarfile", "gzip", "heapq", "bisect",
                  "datetime", "calendar", "decimal", "fractions", "random", "statistics",
                  "difflib", "inspect", "typing", "dataclasses", "enum", "abc", "contextlib",
                  "tempfile", "glob", "fnmatch", "pickle", "copy", "pprint", "uuid", "base64",
                  "hashlib", "hmac", "secrets", "struct", "codecs", "locale", "gettext")  # fmt: skip


def sentences(count: int) -> list[str]:
    """``count`` distinct sentences of 5 to 40 words from standard-library docstrings."""
    import importlib

    found: list[str] = []
    seen: set[str] = set()
    for name in SOURCE_MODULES:
        module = importlib.import_module(name)
        objects = [module] + [getattr(module, a) for a in sorted(dir(module)) if a[:1] != "_"]
        for obj in objects:
            doc = inspect.getdoc(obj) if callable(obj) or obj is module else None
            for part in re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split())):
                words = part.split()
                if 5 <= len(words) <= 40 and part not in seen and part[:1].isupper():
                    seen.add(part)
                    found.append(part)
                    if len(found) == count:
                        return found
    raise SystemExit(f"only {len(found)} sentences found, {count} needed")


# -- the server ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``qwen3-rag serve`` in a child process, stopped (SIGTERM) on exit."""

    def __init__(self, emb: Path, rr: Path, device: str, extra: Sequence[str], log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "qwen3_rag", "serve", "--host", "127.0.0.1",
                "--port", self.url.rsplit(":", 1)[1], "--embedding-model", str(emb),
                "--reranker-model", str(rr), "--device", device, *extra]  # fmt: skip
        self._log = log.open("w")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"the server exited ({self.proc.returncode}); see {self._log.name}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise SystemExit("the server was not healthy within 600 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# -- loads ---------------------------------------------------------------------------------
def load(clients: int, work: list[list[Any]], call: Callable[[Any], Any]) -> dict[str, Any]:
    """Run ``work[c]`` (one client's requests, in order) on ``clients`` threads at once."""
    latencies: list[float] = []
    results: list[list[Any]] = [[] for _ in range(clients)]
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        barrier.wait()
        for request in work[c]:
            start = time.perf_counter()
            out = call(request)
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)
            results[c].append(out)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, c) for c in range(clients)]
        barrier.wait()
        start = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "results": results,
    }


def run(args: argparse.Namespace, checkpoint: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Build the models if needed, time offline and server loads; ``checkpoint`` sees each
    partial report (a long run killed midway keeps what it measured)."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    shape = None if args.smoke else OFFICIAL_0_6B
    emb_dir = work / ("emb-tiny" if args.smoke else "emb-0.6b")
    rr_dir = work / ("rr-tiny" if args.smoke else "rr-0.6b")
    if not emb_dir.exists():
        build_checkpoint(emb_dir, "embedding", shape=shape, eos_postprocessor=True)
    if not rr_dir.exists():
        build_checkpoint(rr_dir, "reranker", shape=shape)

    n_embed = args.embed_clients * args.embed_requests
    n_rerank = args.rerank_clients * args.rerank_requests
    pool = sentences(n_embed + n_rerank * (1 + args.rerank_docs))
    embed_texts, rest = pool[:n_embed], pool[n_embed:]
    rerank_requests = [
        (rest[i * (1 + args.rerank_docs)], rest[i * (1 + args.rerank_docs) + 1 :][: args.rerank_docs])
        for i in range(n_rerank)
    ]  # fmt: skip
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": "random weights, official Qwen3-*-0.6B shape" if not args.smoke else "tiny",
        "load_average_before": round(os.getloadavg()[0], 2),
        "embed": {"clients": args.embed_clients, "requests_per_client": args.embed_requests,
                  "texts_per_request": 1},
        "rerank": {"clients": args.rerank_clients, "requests_per_client": args.rerank_requests,
                   "documents_per_request": args.rerank_docs},
    }  # fmt: skip

    # Offline: the same texts in this process, batched as a library user would. Timed again
    # right before each server load, so both see the same machine (a shared machine's speed
    # drifts by tens of percent within minutes); the models stay loaded, idle, in between.
    embedder = Qwen3Embedder(str(emb_dir), device=device)
    reranker = Qwen3Reranker(str(rr_dir), device=device)
    embedder.embed_documents(embed_texts[:8])  # warm-up
    reranker.score(*rerank_requests[0])
    report["embed"]["tokens"] = sum(len(r) for r in embedder.encode_ids(embed_texts))

    def offline_embed() -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        vectors = embedder.embed_documents(embed_texts)
        return n_embed / (time.perf_counter() - start), vectors

    def offline_rerank() -> tuple[float, list[list[float]]]:
        start = time.perf_counter()
        scores = [reranker.score(q, docs) for q, docs in rerank_requests]
        return n_rerank / (time.perf_counter() - start), scores

    embed_work = [
        [[t] for t in embed_texts[c * args.embed_requests : (c + 1) * args.embed_requests]]
        for c in range(args.embed_clients)
    ]
    rerank_work = [
        rerank_requests[c * args.rerank_requests : (c + 1) * args.rerank_requests]
        for c in range(args.rerank_clients)
    ]
    modes = {"batched": [], "one request per forward": ["--max-batch-requests", "1"]}
    for mode, extra in modes.items():
        with Server(emb_dir, rr_dir, device, extra, work / f"server-{len(extra)}.log") as server:
            emb = RemoteEmbedder(server.url, timeout=3600)
            rr = RemoteReranker(server.url, timeout=3600)
            emb.embed_documents(embed_texts[:2])  # warm-up: first forwards, connections
            rr.score(*rerank_requests[0])

            rate, offline_vectors = offline_embed()
            e = load(args.embed_clients, embed_work, emb.embed_documents)
            got = np.concatenate([v for client in e.pop("results") for v in client])
            e["offline_texts_per_s"] = round(rate, 3)
            e["texts_per_s"] = e["requests_per_s"]
            e["share_of_offline_pct"] = round(100 * e["texts_per_s"] / rate, 1)
            e["max_abs_diff_vs_offline"] = float(np.abs(got - offline_vectors).max())
            e["load_average"] = round(os.getloadavg()[0], 2)
            report["embed"][mode] = e
            checkpoint(report)

            rate, offline_scores = offline_rerank()
            r = load(args.rerank_clients, rerank_work, lambda req, rr=rr: rr.score(*req))
            scores = [s for client in r.pop("results") for s in client]
            r["offline_pairs_per_s"] = round(rate * args.rerank_docs, 3)
            r["pairs_per_s"] = round(r["requests_per_s"] * args.rerank_docs, 3)
            r["share_of_offline_pct"] = round(100 * r["requests_per_s"] / rate, 1)
            r["max_abs_diff_vs_offline"] = float(
                max(abs(a - b) for x, y in zip(scores, offline_scores, strict=True)
                    for a, b in zip(x, y, strict=True))
            )  # fmt: skip
            r["load_average"] = round(os.getloadavg()[0], 2)
            report["rerank"][mode] = r
            checkpoint(report)
            for client in (emb, rr):
                client.close()
    report["load_average_after"] = round(os.getloadavg()[0], 2)
    return report


def table(report: dict[str, Any]) -> str:
    e, r = report["embed"], report["rerank"]
    modes = ("batched", "one request per forward")
    lines = [
        f"device: {report['device']} ({report['cpu']}, {report['threads']} threads), "
        f"torch {report['torch']}, {report['model']}; 1-minute load average "
        f"{report['load_average_before']} before, {report['load_average_after']} after",
        "",
        f"Embedding: {e['clients']} clients x {e['requests_per_client']} requests of 1 sentence "
        f"({e['tokens']} tokens in all)",
        "| server | texts/s | offline texts/s | share of offline | p50 ms | p99 ms "
        "| max diff vs offline | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in modes:
        m = e[mode]
        lines.append(
            f"| {mode} | {m['texts_per_s']} | {m['offline_texts_per_s']} | "
            f"{m['share_of_offline_pct']}% | {m['p50_ms']} | {m['p99_ms']} | "
            f"{m['max_abs_diff_vs_offline']:.1e} | {m['load_average']} |"
        )
    lines += [
        "",
        f"Reranking: {r['clients']} clients x {r['requests_per_client']} requests of 1 query x "
        f"{r['documents_per_request']} sentences",
        "| server | pairs/s | offline pairs/s | share of offline | p50 ms | p99 ms "
        "| max diff vs offline | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in modes:
        m = r[mode]
        lines.append(
            f"| {mode} | {m['pairs_per_s']} | {m['offline_pairs_per_s']} | "
            f"{m['share_of_offline_pct']}% | {m['p50_ms']} | {m['p99_ms']} | "
            f"{m['max_abs_diff_vs_offline']:.1e} | {m['load_average']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--work", default=str(ROOT / ".bench"), help="folder for built checkpoints")
    p.add_argument("--embed-clients", type=int, default=64)
    p.add_argument("--embed-requests", type=int, default=2, help="requests per embed client")
    p.add_argument("--rerank-clients", type=int, default=16)
    p.add_argument("--rerank-requests", type=int, default=1, help="requests per rerank client")
    p.add_argument("--rerank-docs", type=int, default=20, help="documents per rerank request")
    p.add_argument("--smoke", action="store_true", help="tiny random model")
    p.add_argument("--json", default=None, help="write the report here (and .txt beside it)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # SIGTERM unwinds like Ctrl-C, so the server child is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Path(args.json) if args.json else None

    def save(report: dict[str, Any]) -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")

    report = run(args, save)
    save(report)
    text = table(report)
    print(text)
    if out is not None:
        out.with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
