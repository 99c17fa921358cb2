"""Side-by-side speed: qwen3-rag vs sentence-transformers vs the model cards' recipe.

All three run one after another in this process, on the same inputs and the same weights
(random weights of the official Qwen3-*-0.6B shape, built on first use: speed does not depend on
the values). Prints a table of tokens/s, pairs/s, peak memory, ratios and the largest deviation
between systems. Then this library alone in each precision (float32 and bfloat16 on the CPU),
side by side: throughput, each precision's share of its own GEMM ceiling, and fidelity to
float32 (min cosine, max score difference, top-10 agreement), with the CPU's flags.

    python benchmarks/bench.py                 # CPU, fp32, about 11 minutes on 2 cores
    python benchmarks/bench.py --device cuda   # bf16 on a GPU, plus a 512-token throughput run
    python benchmarks/bench.py --smoke         # tiny model, seconds (run by the test suite)
    python benchmarks/bench.py --no-peers --shape small --precisions float32,bfloat16
                                               # precisions only, small model: minutes

bfloat16 is measured on the CPU by default only where the CPU has native bfloat16 (AVX512_BF16
or AMX); elsewhere it is many times slower than float32, and ``--precisions`` asks for it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the random-checkpoint builder lives with the tests
sys.path.insert(0, str(ROOT / "examples"))

from bench_index import SHAPES  # noqa: E402

from qwen3_rag import Qwen3Embedder, Qwen3Reranker  # noqa: E402
from qwen3_rag.core import spec as prompts  # noqa: E402
from qwen3_rag.core.config import normalize_dtype  # noqa: E402
from qwen3_rag.core.loading import cpu_features, cpu_native_bf16  # noqa: E402
from qwen3_rag.train.model_files import write_sentence_transformers_files  # noqa: E402

from _common import paragraphs  # noqa: E402
from tiny_models import OFFICIAL_0_6B, build_checkpoint  # noqa: E402

SHAPES = {**SHAPES, "0.6b": OFFICIAL_0_6B}
#: /proc/cpuinfo flags that decide low-precision matmul speed (printed when present).
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)

QUERY = "How should I rotate an API key without downtime?"


def mlp_shape(model_dir: Path) -> tuple[int, int]:
    """Hidden and intermediate size of the checkpoint: the MLP's matmul shape."""
    c = json.loads((model_dir / "config.json").read_text())
    return c["hidden_size"], c["intermediate_size"]


def flop_per_token(model_dir: Path, length: float) -> float:
    """Forward FLOPs per token: 2 x linear weights, plus causal attention at mean context L/2."""
    c = json.loads((model_dir / "config.json").read_text())
    h, d, layers = c["hidden_size"], c["head_dim"], c["num_hidden_layers"]
    nq, nkv, inter = c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    linear = 2 * layers * (2 * nq * d * h + 2 * nkv * d * h + 3 * h * inter)  # 0.881e9 for 0.6B
    return linear + 2 * nq * d * layers * length


# -- inputs --------------------------------------------------------------------------------
def corpus(n_docs: int, n_pairs: int) -> tuple[list[str], list[str]]:
    """Real prose of mixed lengths from examples/data: documents to embed and to rerank."""
    paras = [t for _, t in paragraphs(str(ROOT / "examples" / "data"))]
    sizes = [2, 4, 6, 2, 8, 4, 2, 6, 4, 2, 10, 2, 4, 6, 2, 4]
    docs, start = [], 0
    for i in range(n_docs):
        k = sizes[i % len(sizes)]
        docs.append("\n\n".join(paras[(start + j) % len(paras)] for j in range(k)))
        start += k
    pairs = [
        paras[i % len(paras)] + ("\n\n" + paras[(i + 7) % len(paras)] if i % 3 == 0 else "")
        for i in range(n_pairs)
    ]
    return docs, pairs


# -- peers ---------------------------------------------------------------------------------
_RERANK_TEMPLATE = (
    "{%- set q = (messages | selectattr('role', 'eq', 'query') | first).content -%}"
    "{%- set d = (messages | selectattr('role', 'eq', 'document') | first).content -%}"
    "{%- if q is not string %}{% set q = q[0].text %}{% endif -%}"
    "{%- if d is not string %}{% set d = d[0].text %}{% endif -%}"
    + prompts.RERANK_PREFIX.replace("\n", "\\n").join(["{{- '", "' -}}"])
    + "{{- '<Instruct>: ' + instruction + '\\n<Query>: ' + q + '\\n<Document>: ' + d -}}"
    + prompts.RERANK_SUFFIX.replace("\n", "\\n").join(["{{- '", "' -}}"])
)


def _mirror(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        target = dst / f.name
        if not target.exists():
            if f.suffix == ".safetensors":
                target.symlink_to(f.resolve())
            else:
                shutil.copy(f, target)


def st_embedding_dir(model: Path, work: Path) -> Path:
    """The checkpoint with the sentence-transformers config the official repo ships."""
    out = work / "st-embedding"
    _mirror(model, out)
    # The layout the fine-tuner writes for its outputs (last-token pooling, normalize, the
    # query prompt), plus the official repo's sequence limit.
    hidden = json.loads((model / "config.json").read_text())["hidden_size"]
    write_sentence_transformers_files(out, hidden)
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 8192, "do_lower_case": False})
    )
    return out


def st_reranker_dir(model: Path, work: Path) -> Path:
    """The checkpoint with a chat template that renders the official reranker prompt."""
    out = work / "st-reranker"
    _mirror(model, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = _RERANK_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


class CardEmbedder:
    """The Qwen3-Embedding model card's transformers code (one padded batch for all texts)."""

    def __init__(self, path: Path, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModel.from_pretrained(path, dtype=dtype).to(device)
        self.device = device

    @torch.no_grad()  # the card omits it; kept here so the peer is not penalised for autograd
    def embed(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=8192, return_tensors="pt"
        )
        batch = batch.to(self.device)
        out = self.model(**batch)
        hidden, mask = out.last_hidden_state, batch["attention_mask"]
        if bool(mask[:, -1].sum() == mask.shape[0]):
            pooled = hidden[:, -1]
        else:
            lengths = mask.sum(dim=1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths]
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu().numpy()


class CardReranker:
    """The Qwen3-Reranker model card's transformers code (one batch, full-vocabulary logits)."""

    def __init__(self, path: Path, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.device = device
        self.prefix = self.tokenizer.encode(prompts.RERANK_PREFIX, add_special_tokens=False)
        self.suffix = self.tokenizer.encode(prompts.RERANK_SUFFIX, add_special_tokens=False)
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")

    @torch.no_grad()
    def score(self, query: str, docs: list[str], max_length: int = 8192) -> list[float]:
        pairs = [prompts.format_rerank_body(query, d, prompts.DEFAULT_TASK) for d in docs]
        inputs = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=max_length - len(self.prefix) - len(self.suffix),
        )
        inputs["input_ids"] = [self.prefix + ids + self.suffix for ids in inputs["input_ids"]]
        inputs = self.tokenizer.pad(
            inputs, padding=True, return_tensors="pt", max_length=max_length
        )
        logits = self.model(**inputs.to(self.device)).logits[:, -1, :]
        pair = torch.stack([logits[:, self.no], logits[:, self.yes]], dim=1).float()
        return torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp().tolist()


# -- measurement ---------------------------------------------------------------------------
class PeakMemory:
    """Peak memory above the starting point while the block runs: RSS on CPU, allocator on GPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = self._rss()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss() - self._base)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._base)


def timed(
    fn: Callable[[Any], Any],
    inputs: Any,
    device: str,
    repeat: int,
    probe: Callable[[], None] | None = None,
) -> tuple[Any, float, int]:
    """``fn(inputs)``: result, best wall time of ``repeat`` runs, peak memory.

    A warm-up on the first two inputs comes first (kernel selection, lazy initialisation);
    ``probe`` runs after each timed run (outside the timing).
    """
    fn(inputs[:2])
    best, result, peak = float("inf"), None, 0
    for _ in range(repeat):
        with PeakMemory(device) as mem:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            result = fn(inputs)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        peak = max(peak, mem.peak)
        if probe is not None:
            probe()
    return result, best, peak


def each(
    makers: dict[str, Callable[[], Callable[[Any], Any]]],
    inputs: Any,
    device: str,
    repeat: int,
    probe: Callable[[], None] | None = None,
) -> dict[str, tuple[Any, float, int]]:
    """Build and time each system in turn; each is freed before the next one loads."""
    out = {}
    for name, make in makers.items():
        fn = make()
        out[name] = timed(fn, inputs, device, repeat, probe)
        del fn
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def gemm_gflops(device: str, dtype: torch.dtype, shape: tuple[int, int] = (1024, 3072)) -> float:
    """Throughput of the MLP's up-projection on 2,048 tokens: ``linear([2048, hidden], W)``.

    ``W`` is ``[intermediate, hidden]``, the layout of an ``nn.Linear`` weight, because kernels
    differ by layout: on a CPU without native bfloat16, ``a @ b`` in bfloat16 runs about 15x
    slower than the same product as a linear layer, which is what the model runs. On the CPU
    the products repeat for at least a second (after one warm-up), so a slow dtype costs
    seconds, not minutes.
    """
    hidden, inter = shape
    a = torch.randn(2048, hidden, device=device, dtype=dtype)
    w = torch.randn(inter, hidden, device=device, dtype=dtype)
    torch.nn.functional.linear(a, w)
    if device.startswith("cuda"):
        for _ in range(2):
            torch.nn.functional.linear(a, w)
        torch.cuda.synchronize()
    t = time.perf_counter()
    n = 0
    while n < (200 if device.startswith("cuda") else 2) or (
        device == "cpu" and time.perf_counter() - t < 1.0
    ):
        torch.nn.functional.linear(a, w)
        n += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * 2048 * hidden * inter * n / (time.perf_counter() - t) / 1e9


# -- runs ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    work = Path(args.work).resolve()
    shape = SHAPES["tiny" if args.smoke else args.shape]
    name = "tiny" if args.smoke else args.shape
    emb_dir = Path(args.embedding_model) if args.embedding_model else work / f"emb-{name}"
    rr_dir = Path(args.reranker_model) if args.reranker_model else work / f"rr-{name}"
    if not emb_dir.exists():
        build_checkpoint(emb_dir, "embedding", shape=shape, eos_postprocessor=True)
    if not rr_dir.exists():
        build_checkpoint(rr_dir, "reranker", shape=shape)
    docs, pairs = corpus(args.docs, args.pairs)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0)
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "shape": "given checkpoints" if args.embedding_model else name,
    }
    import sentence_transformers
    import transformers

    report["transformers"] = transformers.__version__
    report["sentence_transformers"] = sentence_transformers.__version__
    if device == "cpu":
        report["cpu"] = cpu_report()
    if not args.no_peers:
        compare_peers(args, device, dtype, emb_dir, rr_dir, docs, pairs, work, report)
    precisions = args.precisions
    if precisions is None:
        # bfloat16 without native support is many times slower than float32 (the library
        # warns): measured by default only where it can be fast, or in the tiny smoke run.
        native = device != "cpu" or cpu_native_bf16() or args.smoke
        precisions = "float32,bfloat16" if native else "float32"
        if not native:
            report["precision_note"] = (
                "bfloat16 not measured: this CPU has no native bfloat16 "
                "(--precisions float32,bfloat16 measures it anyway)"
            )
    names = [normalize_dtype(p.strip()) for p in precisions.split(",") if p.strip()]
    if names:
        report["precision"] = compare_precisions(args, device, emb_dir, rr_dir, docs, pairs, names)

    # GPU throughput at 512-token inputs ----------------------------------------------------
    if device.startswith("cuda") and not args.smoke:
        gflops = report.get("gemm_gflops") or gemm_gflops(device, dtype, mlp_shape(emb_dir))
        report["gpu_512"] = gpu_throughput(emb_dir, device, gflops)
        report["gpu_512"]["h100_roofline_tokens_per_s"] = round(
            989e12 / flop_per_token(emb_dir, 512)
        )
    return report


def cpu_report() -> dict[str, Any]:
    """The CPU's model name and flags: as torch detects them, and as /proc/cpuinfo lists them."""
    out: dict[str, Any] = {
        "torch_features": cpu_features(),
        "native_bf16": cpu_native_bf16(),
    }
    info = Path("/proc/cpuinfo")
    if info.exists():
        lines = info.read_text().splitlines()
        model = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "")
        flags = next(
            (set(x.split(":", 1)[1].split()) for x in lines if x.startswith("flags")), set()
        )
        out["model"] = model
        out["flags"] = [f for f in CPU_FLAGS if f in flags]
        out["flags_absent"] = [f for f in CPU_FLAGS if f not in flags]
    return out


def compare_peers(
    args: argparse.Namespace,
    device: str,
    dtype: torch.dtype,
    emb_dir: Path,
    rr_dir: Path,
    docs: list[str],
    pairs: list[str],
    work: Path,
    report: dict[str, Any],
) -> None:
    """qwen3-rag, sentence-transformers and the model cards' code, in ``dtype``, into ``report``."""
    # A shared machine's speed drifts by 20% or more within minutes, so the GEMM rate is
    # sampled after every timed run too and the ceiling uses the fastest sample: a noisy
    # sample can only make the ceiling higher and our share of it lower.
    gemm_samples = [gemm_gflops(device, dtype, mlp_shape(emb_dir))]

    def probe() -> None:
        gemm_samples.append(gemm_gflops(device, dtype, mlp_shape(emb_dir)))

    # Embedding ------------------------------------------------------------------------
    from sentence_transformers import CrossEncoder, SentenceTransformer

    n_tokens = sum(
        len(ids) for ids in Qwen3Embedder(emb_dir, device=device, dtype=dtype).encode_ids(docs)
    )
    report["embed_docs"], report["embed_tokens"] = len(docs), n_tokens

    def ours_embed() -> Callable[[Any], Any]:
        emb = Qwen3Embedder(emb_dir, device=device, dtype=dtype, show_progress=False)
        return emb.embed_documents

    def st_embed() -> Callable[[Any], Any]:
        st = SentenceTransformer(
            str(st_embedding_dir(emb_dir, work)), device=device, model_kwargs={"dtype": dtype}
        )
        return lambda texts: st.encode(texts, convert_to_numpy=True)

    def card_embed() -> Callable[[Any], Any]:
        card = CardEmbedder(emb_dir, device, dtype)
        return card.embed

    results = each(
        {"qwen3-rag": ours_embed, "sentence-transformers": st_embed, "model card": card_embed},
        docs,
        device,
        args.repeat,
        probe,
    )
    base = results["qwen3-rag"]
    gflops = max(gemm_samples)
    report["gemm_gflops"] = round(gflops, 1)
    report["gemm_gflops_samples"] = [round(g, 1) for g in gemm_samples]
    ceiling = gflops * 1e9 / flop_per_token(emb_dir, n_tokens / len(docs))
    report["embedding"] = {
        name: {
            "tokens_per_s": round(n_tokens / t, 1),
            "peak_mem_mb": round(mem / 2**20, 1),
            "speedup": round(t / base[1], 2),
            "min_cosine_vs_ours": float(
                np.min(np.sum(np.asarray(v, dtype=np.float32) * base[0], axis=1))
            ),
        }
        for name, (v, t, mem) in results.items()
    }
    report["embedding_ceiling_tokens_per_s"] = round(ceiling, 1)
    report["embedding_pct_of_ceiling"] = round(100 * n_tokens / base[1] / ceiling, 1)

    # Reranking ------------------------------------------------------------------------
    n_pair_tokens = sum(
        len(ids)
        for ids in Qwen3Reranker(rr_dir, device=device, dtype=dtype).encode_ids(QUERY, pairs)
    )
    report["rerank_pairs"], report["rerank_tokens"] = len(pairs), n_pair_tokens

    def ours_rerank() -> Callable[[Any], Any]:
        rr = Qwen3Reranker(rr_dir, device=device, dtype=dtype, show_progress=False)
        return lambda texts: rr.score(QUERY, texts)

    def st_rerank() -> Callable[[Any], Any]:
        ce = CrossEncoder(
            str(st_reranker_dir(rr_dir, work)), device=device, model_kwargs={"dtype": dtype}
        )
        # The template's {{ instruction }} gets the default task, as in the official prompt.
        kwargs = {"chat_template": {"instruction": prompts.DEFAULT_TASK}}
        return lambda texts: ce.predict(
            [(QUERY, d) for d in texts], processing_kwargs=kwargs
        ).tolist()

    def card_rerank() -> Callable[[Any], Any]:
        card = CardReranker(rr_dir, device, dtype)
        return lambda texts: card.score(QUERY, texts)

    rr_results = each(
        {"qwen3-rag": ours_rerank, "sentence-transformers": st_rerank, "model card": card_rerank},
        pairs,
        device,
        args.repeat,
    )
    base_rr = rr_results["qwen3-rag"]
    report["reranking"] = {
        name: {
            "pairs_per_s": round(len(pairs) / t, 2),
            "tokens_per_s": round(n_pair_tokens / t, 1),
            "peak_mem_mb": round(mem / 2**20, 1),
            "speedup": round(t / base_rr[1], 2),
            "max_abs_score_diff_vs_ours": float(
                np.max(np.abs(np.asarray(s) - np.asarray(base_rr[0])))
            ),
        }
        for name, (s, t, mem) in rr_results.items()
    }


def top_k_agreement(scores: list[float], reference: list[float], k: int = 10) -> int:
    """How many of the ``k`` best documents by ``reference`` are also in the ``k`` best by ``scores``.

    Ties rank in input order, as :meth:`Qwen3Reranker.rerank` ranks them.
    """
    k = min(k, len(scores))

    def top(values: list[float]) -> set[int]:
        return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])

    return len(top(scores) & top(reference))


def measure_precision(
    args: argparse.Namespace,
    device: str,
    dtype: torch.dtype,
    emb_dir: Path,
    rr_dir: Path,
    docs: list[str],
    pairs: list[str],
) -> tuple[dict[str, Any], np.ndarray, list[float]]:
    """This library's speed in ``dtype``, its share of the ``dtype`` GEMM ceiling, its outputs.

    The GEMM rate is sampled in ``dtype`` before and after every timed run; the ceiling uses
    the fastest sample.
    """
    samples = [gemm_gflops(device, dtype, mlp_shape(emb_dir))]

    def probe() -> None:
        samples.append(gemm_gflops(device, dtype, mlp_shape(emb_dir)))

    emb = Qwen3Embedder(emb_dir, device=device, dtype=dtype, show_progress=False)
    n_tokens = sum(len(ids) for ids in emb.encode_ids(docs))
    vectors, t_embed, _ = timed(emb.embed_documents, docs, device, args.repeat, probe)
    del emb  # one model in memory at a time
    gc.collect()
    rr = Qwen3Reranker(rr_dir, device=device, dtype=dtype, show_progress=False)
    n_pair_tokens = sum(len(ids) for ids in rr.encode_ids(QUERY, pairs))
    scores, t_rr, _ = timed(lambda d: rr.score(QUERY, d), pairs, device, args.repeat, probe)
    gflops = max(samples)
    ceiling = gflops * 1e9 / flop_per_token(emb_dir, n_tokens / len(docs))
    row = {
        "gemm_gflops": round(gflops, 1),
        "gemm_gflops_samples": [round(g, 1) for g in samples],
        "embed_tokens": n_tokens,
        "embed_tokens_per_s": round(n_tokens / t_embed, 1),
        "embed_pct_of_own_ceiling": round(100 * n_tokens / t_embed / ceiling, 1),
        "rerank_tokens": n_pair_tokens,
        "rerank_pairs_per_s": round(len(pairs) / t_rr, 2),
        "rerank_tokens_per_s": round(n_pair_tokens / t_rr, 1),
    }
    return row, np.asarray(vectors, dtype=np.float32), list(scores)


def compare_precisions(
    args: argparse.Namespace,
    device: str,
    emb_dir: Path,
    rr_dir: Path,
    docs: list[str],
    pairs: list[str],
    names: list[str],
) -> dict[str, Any]:
    """This library in each dtype of ``names`` on the same inputs; fidelity against the first."""
    rows: dict[str, dict[str, Any]] = {}
    outputs: dict[str, tuple[np.ndarray, list[float]]] = {}
    for name in names:
        row, vectors, scores = measure_precision(
            args, device, getattr(torch, name), emb_dir, rr_dir, docs, pairs
        )
        rows[name], outputs[name] = row, (vectors, scores)
    base = rows[names[0]]
    base_vectors, base_scores = outputs[names[0]]
    for name, (vectors, scores) in outputs.items():
        row = rows[name]
        row["embed_speedup"] = round(row["embed_tokens_per_s"] / base["embed_tokens_per_s"], 2)
        row["rerank_speedup"] = round(row["rerank_pairs_per_s"] / base["rerank_pairs_per_s"], 2)
        row["min_cosine"] = float(np.min(np.sum(vectors * base_vectors, axis=1)))
        row["max_abs_score_diff"] = float(np.max(np.abs(np.asarray(scores) - base_scores)))
        row["top10_agreement"] = top_k_agreement(scores, base_scores)
    return {
        "baseline": names[0],
        "embed_docs": len(docs),
        "rerank_pairs": len(pairs),
        "top_k": min(10, len(pairs)),
        "rows": rows,
    }


def gpu_throughput(emb_dir: Path, device: str, gflops: float) -> dict[str, Any]:
    """Tokens/s of the embedder on 4,096 inputs of exactly 512 tokens, per attention kernel."""
    out: dict[str, Any] = {"bf16_gemm_tflops": round(gflops / 1e3, 1)}
    words = " ".join(t for _, t in paragraphs(str(ROOT / "examples" / "data")))
    base = Qwen3Embedder(emb_dir, device=device, dtype="bfloat16")
    ids = base.tokenizer.encode_plain([words])[0]
    text = base.tokenizer.plain.decode(ids[:1200])
    texts = []
    for i in range(4096):  # distinct texts, each cut to exactly 512 tokens below
        texts.append(f"{i} " + text)
    del base
    variants = [
        ("sdpa", 16384, False),
        ("sdpa", 65536, False),
        ("sdpa", 65536, True),
        ("flash_attention_2", 65536, False),
    ]
    for attn, budget, compiled in variants:
        name = f"{attn}_budget{budget}" + ("_compiled" if compiled else "")
        try:
            emb = Qwen3Embedder(
                emb_dir,
                device=device,
                dtype="bfloat16",
                max_length=512,
                attn_implementation=attn,
                batch_tokens=budget,
                max_batch_size=1024,
                show_progress=False,
                compile=compiled,
            )
        except (ImportError, ValueError) as e:
            out[name] = f"unavailable: {str(e).splitlines()[0][:60]}"
            continue
        emb.embed_documents(texts[:256])  # warm-up (and compilation)
        torch.cuda.synchronize()
        t = time.perf_counter()
        emb.embed_documents(texts)
        torch.cuda.synchronize()
        out[f"{name}_tokens_per_s"] = round(4096 * 512 / (time.perf_counter() - t))
        del emb
        gc.collect()
    return out


def table(report: dict[str, Any]) -> str:
    lines = [
        f"device: {report['device']} ({report['threads']} threads), {report['dtype']}, torch {report['torch']}, "
        f"transformers {report['transformers']}, sentence-transformers {report['sentence_transformers']}, "
        f"model shape: {report['shape']}",
    ]
    if "cpu" in report:
        cpu = report["cpu"]
        torch_sees = ", ".join(
            f"{k} {'yes' if v else 'no' if v is False else '?'}"
            for k, v in cpu["torch_features"].items()
        )
        native = {True: "yes", False: "no", None: "unknown"}[cpu["native_bf16"]]
        lines.append(
            f"CPU: {cpu.get('model', 'unknown')}; torch detects {torch_sees}; native bfloat16: {native}"
        )
        if "flags" in cpu:
            lines.append(
                f"/proc/cpuinfo flags: {' '.join(cpu['flags']) or '-'} (absent: {' '.join(cpu['flags_absent']) or '-'})"
            )
    if "embedding" in report:
        lines += peers_table(report)
    if "precision" in report:
        lines += precision_table(report["precision"])
    if "precision_note" in report:
        lines.append(report["precision_note"])
    if "gpu_512" in report:
        lines += ["", "GPU embedder throughput, 4,096 inputs x 512 tokens:"]
        lines += [f"- {k}: {v}" for k, v in report["gpu_512"].items()]
    return "\n".join(lines)


def peers_table(report: dict[str, Any]) -> list[str]:
    lines = [
        f"GEMM {report['gemm_gflops']} GFLOP/s (fastest of {len(report['gemm_gflops_samples'])} samples, "
        f"slowest {min(report['gemm_gflops_samples'])}) -> embedding ceiling {report['embedding_ceiling_tokens_per_s']} tok/s",
        "",
        f"Embedding: {report['embed_docs']} documents, {report['embed_tokens']} tokens",
        "| system | tokens/s | x slower than qwen3-rag | peak mem MB | min cosine vs qwen3-rag |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["embedding"].items():
        lines.append(
            f"| {name} | {r['tokens_per_s']} | {r['speedup']} | {r['peak_mem_mb']} | {r['min_cosine_vs_ours']:.6f} |"
        )
    lines.append(f"qwen3-rag reaches {report['embedding_pct_of_ceiling']}% of the GEMM ceiling")
    lines += [
        "",
        f"Reranking: 1 query x {report['rerank_pairs']} documents, {report['rerank_tokens']} tokens",
        "| system | pairs/s | tokens/s | x slower than qwen3-rag | peak mem MB | max abs score diff vs qwen3-rag |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["reranking"].items():
        lines.append(
            f"| {name} | {r['pairs_per_s']} | {r['tokens_per_s']} | {r['speedup']} | {r['peak_mem_mb']} | "
            f"{r['max_abs_score_diff_vs_ours']:.2e} |"
        )
    return lines


def precision_table(precision: dict[str, Any]) -> list[str]:
    base, k = precision["baseline"], precision["top_k"]
    first = next(iter(precision["rows"].values()))
    lines = [
        "",
        f"Precision (qwen3-rag only): embedding {precision['embed_docs']} documents ({first['embed_tokens']} tokens), "
        f"reranking 1 query x {precision['rerank_pairs']} documents ({first['rerank_tokens']} tokens); fidelity vs {base}",
        f"| dtype | GEMM GFLOP/s (own) | embed tokens/s | % of own GEMM ceiling | x {base} | rerank pairs/s | x {base} "
        f"| min cosine | max abs score diff | top-{k} agreement |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in precision["rows"].items():
        lines.append(
            f"| {name} | {r['gemm_gflops']} | {r['embed_tokens_per_s']} | {r['embed_pct_of_own_ceiling']}% | "
            f"{r['embed_speedup']} | {r['rerank_pairs_per_s']} | {r['rerank_speedup']} | {r['min_cosine']:.6f} | "
            f"{r['max_abs_score_diff']:.2e} | {r['top10_agreement']}/{k} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--embedding-model", default=None, help="checkpoint folder (default: build a random one)"
    )
    p.add_argument(
        "--reranker-model", default=None, help="checkpoint folder (default: build a random one)"
    )
    p.add_argument("--work", default=str(ROOT / ".bench"), help="folder for built checkpoints")
    p.add_argument("--docs", type=int, default=16, help="documents to embed")
    p.add_argument("--pairs", type=int, default=32, help="documents to rerank for one query")
    p.add_argument("--repeat", type=int, default=2, help="timed runs per system (best is kept)")
    p.add_argument("--smoke", action="store_true", help="tiny random model, few inputs")
    p.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="0.6b",
        help="shape of the random checkpoints (default: the official 0.6B; small: 4 layers, "
        "hidden 256, for minutes-long runs)",
    )
    p.add_argument(
        "--no-peers",
        action="store_true",
        help="skip sentence-transformers and the model cards' code (this library only)",
    )
    p.add_argument(
        "--precisions",
        default=None,
        help="comma-separated dtypes to run this library in, the first the fidelity baseline "
        "(default: float32,bfloat16; float32 alone on a CPU without native bfloat16); "
        "'' for none",
    )
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)
    for name in (args.precisions or "").split(","):
        if name.strip() and normalize_dtype(name.strip()) == "auto":
            p.error("--precisions takes dtypes (float32, bfloat16, float16), not 'auto'")
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and argv is None:
        # glibc raises its mmap threshold after the first large free, after which freed
        # activations stay in the heap and later runs reuse them without growing RSS: peak
        # memory would depend on run order. A fixed threshold returns large blocks at once.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.smoke:
        args.docs, args.pairs, args.repeat = min(args.docs, 4), min(args.pairs, 4), 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run(args)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
