"""Fine-tuning throughput: qwen3-rag's trainer against sentence-transformers, LoRA, one process.

Both train a random-weight checkpoint of the official Qwen3-Embedding-0.6B shape (speed does not
depend on the weights) with the same LoRA adapters (rank 16 on every linear layer), the same
query/document pairs (standard-library docstrings and function sources), the same effective
batch and the same chunk size for gradient caching: ours runs packed inputs through
:func:`qwen3_rag.train.finetune_embedder`'s step, sentence-transformers runs
``CachedMultipleNegativesRankingLoss`` (its GradCache) over padded mini-batches, then AdamW.
Throughput is real (unpadded) tokens per second over the timed steps, after one warm-up step;
peak memory is the RSS growth during the timed steps.

    python benchmarks/bench_train.py --steps 2 --json benchmarks/results/train.json

``--data-parallel`` measures the other row instead: the same fine-tuning run (the command line,
``qwen3-rag finetune embedder``) as 2 processes under torchrun (gloo; one thread each) against 1
process (two threads) with the same global batch, on the same cores: throughput from each run's
``train_log.jsonl`` (after the first step) and the peak RSS of the largest process.

    python benchmarks/bench_train.py --data-parallel --steps 2 --json benchmarks/results/train_dp.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench import PeakMemory, st_embedding_dir

from qwen3_rag.eval import load_beir, stdlib_code_search
from qwen3_rag.train.data import TrainExample
from qwen3_rag.train.options import TrainingOptions
from qwen3_rag.train.tasks import _EmbeddingTask

from tiny_models import OFFICIAL_0_6B, build_checkpoint

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def pairs(work: Path, n: int) -> list[tuple[str, str]]:
    """``n`` (docstring sentence, function source) pairs of mixed lengths, in a fixed order."""
    ds = load_beir(stdlib_code_search(work / "data", modules=["csv", "difflib", "heapq"]))
    out = [(ds.queries[q], ds.corpus[next(iter(ds.qrels[q]))]) for q in sorted(ds.queries)]
    random.Random(0).shuffle(out)
    return out[:n]


def ours(model: Path, data: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    opts = TrainingOptions(lora_rank=16, max_length=args.max_length, chunk_tokens=args.chunk_tokens)
    task = _EmbeddingTask(model, {}, opts, torch.device("cpu"))
    task.tokenize(model, [TrainExample(q, [d]) for q, d in data])
    task.load()
    params = [p for p in task.trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batches = [
        task.instances[i : i + args.batch_size] for i in range(0, len(data), args.batch_size)
    ]

    def step(batch: list[Any]) -> int:
        _, tokens = task.step(batch, random.Random(0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return tokens

    return _timed(step, batches)


def sentence_transformers(
    model: Path, data: list[tuple[str, str]], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss

    st = SentenceTransformer(str(st_embedding_dir(model, work)), device="cpu")
    st.max_seq_length = args.max_length
    # Adapters injected in place (transformers' add_adapter wants a newer peft than ours).
    get_peft_model(st[0].auto_model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS))
    st.train()
    # Rows per mini-batch: our chunk's token budget at the data's mean length.
    mean = sum(len(st.tokenize([q])["input_ids"][0]) for q, _ in data) / len(data)
    rows = max(1, int(args.chunk_tokens / min(args.max_length, 2 * mean)))
    loss = CachedMultipleNegativesRankingLoss(st, mini_batch_size=rows)
    optimizer = torch.optim.AdamW([p for p in st.parameters() if p.requires_grad], lr=1e-4)
    prompt = st.prompts["query"]
    batches = [data[i : i + args.batch_size] for i in range(0, len(data), args.batch_size)]

    def step(batch: list[tuple[str, str]]) -> int:
        q = st.tokenize([prompt + query for query, _ in batch])
        d = st.tokenize([doc for _, doc in batch])
        value = loss([q, d], torch.empty(0))
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(q["attention_mask"].sum() + d["attention_mask"].sum())

    return _timed(step, batches)


def _launch(
    processes: int, model: Path, data: Path, out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One ``finetune embedder`` run on ``processes`` processes: its throughput and peak RSS."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [
        *(launcher if processes == 2 else []),
        "-m",
        "qwen3_rag",
        "finetune",
        "embedder",
        str(data),
        "--model",
        str(model),
        "--output",
        str(out),
        "-q",
        f"--max-steps={args.steps + 1}",
        f"--batch-size={args.batch_size}",
        f"--chunk-tokens={args.chunk_tokens}",
        f"--max-length={args.max_length}",
        "--lora-rank=16",
    ]
    # A wrapper process: its children's peak RSS is this run's alone.
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    threads = str(torch.get_num_threads() // processes)
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    done = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, *command],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    log = [json.loads(line) for line in (out / "train_log.jsonl").open()]
    timed = [r for r in log if "loss" in r][1:]  # the first step warms up
    tokens = sum(r["tokens"] for r in timed)
    seconds = sum(r["seconds"] for r in timed)
    return {
        "processes": processes,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        "peak_rss_mb_largest_process": round(int(done.stdout.split()[-1]) / 1024),
    }


def data_parallel(model: Path, data: list[tuple[str, str]], args: argparse.Namespace) -> Any:
    work = model.parent
    path = work / "train.jsonl"
    path.write_text("".join(json.dumps({"query": q, "pos": [d]}) + "\n" for q, d in data))
    return [_launch(n, model, path, work / f"out{n}", args) for n in (1, 2)]


def _timed(step: Any, batches: list[Any]) -> dict[str, Any]:
    step(batches[0])  # warm-up
    tokens, seconds = 0, 0.0
    with PeakMemory("cpu") as mem:
        for batch in batches[1:]:
            t = time.perf_counter()
            tokens += step(batch)
            seconds += time.perf_counter() - t
    return {
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        "peak_memory_mb": round(mem.peak / 2**20),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--chunk-tokens", type=int, default=1024, help="tokens per forward")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="a tiny model (checks the script)")
    parser.add_argument(
        "--data-parallel",
        action="store_true",
        help="2 processes (torchrun) against 1 with the same global batch, instead of the peer",
    )
    parser.add_argument("--json", help="write the results here (and a .txt table next to it)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_checkpoint(
            work / "emb",
            "embedding",
            shape=None if args.smoke else OFFICIAL_0_6B,
            eos_postprocessor=True,
            initializer_range=0.02,
        )
        data = pairs(work, args.batch_size * (args.steps + 1))
        if args.data_parallel:
            return _report_data_parallel(data_parallel(model, data, args), args)
        report = {
            "model": "tiny" if args.smoke else "Qwen3-Embedding-0.6B shape, random weights",
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "lora_rank": 16,
            "batch_size": args.batch_size,
            "chunk_tokens": args.chunk_tokens,
            "max_length": args.max_length,
            "timed_steps": args.steps,
            "qwen3_rag": ours(model, data, args),
            "sentence_transformers": sentence_transformers(model, data, args, work),
        }
    ratio = (
        report["qwen3_rag"]["tokens_per_second"]
        / report["sentence_transformers"]["tokens_per_second"]
    )
    report["speedup"] = round(ratio, 2)
    lines = [
        f"{'trainer':<40} {'tokens/s':>9} {'peak MB':>8}",
        *(
            f"{name:<40} {report[key]['tokens_per_second']:>9} {report[key]['peak_memory_mb']:>8}"
            for name, key in (
                ("qwen3-rag (packed, GradCache)", "qwen3_rag"),
                ("sentence-transformers CachedMNRL", "sentence_transformers"),
            )
        ),
        f"speed-up: {report['speedup']}x",
    ]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        Path(args.json).with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return 0


def _report_data_parallel(rows: list[dict[str, Any]], args: argparse.Namespace) -> int:
    one, two = rows
    report = {
        "model": "tiny" if args.smoke else "Qwen3-Embedding-0.6B shape, random weights",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "lora_rank": 16,
        "global_batch_size": args.batch_size,
        "chunk_tokens": args.chunk_tokens,
        "max_length": args.max_length,
        "timed_steps": args.steps,
        "runs": rows,
        "throughput_ratio_2_vs_1": round(two["tokens_per_second"] / one["tokens_per_second"], 2),
    }
    lines = [
        f"{'run':<40} {'tokens/s':>9} {'peak MB':>8}",
        *(
            f"{label:<40} {row['tokens_per_second']:>9} {row['peak_rss_mb_largest_process']:>8}"
            for label, row in (
                ("1 process", one),
                ("2 processes (torchrun, gloo)", two),
            )
        ),
        f"2 processes / 1: {report['throughput_ratio_2_vs_1']}x",
    ]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        Path(args.json).with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
