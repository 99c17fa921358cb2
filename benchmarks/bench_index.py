"""Indexing many small files with the CLI vs embedding the same texts alone.

Issue #18 item 5: writing once per file made 10,000 files of about 70 characters take 190 s
(1,000s of Chroma ``add`` calls). The CLI now embeds and writes across files in bounded batches;
the target is indexing within 1.5x of the time the embedder alone needs for the same texts.

The texts are lines of Python standard-library docstrings (real text, 40 to 100 characters);
the model is a random-weight Qwen3 checkpoint (speed does not depend on the values) of the
tests' tiny shape by default, or ``--shape small`` (4 layers, hidden 256). Both measurements use
the same embedder options, in one process, each after a warm-up.

    python benchmarks/bench_index.py                  # 10,000 files, tiny model
    python benchmarks/bench_index.py --files 2000 --shape small
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the random-checkpoint builder lives with the tests

from qwen3_rag import Qwen3Embedder  # noqa: E402
from qwen3_rag.cli import main as cli_main  # noqa: E402

from tiny_models import build_checkpoint  # noqa: E402

SHAPES = {
    "tiny": None,  # tests/tiny_models.py's TINY shape
    "small": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
    },
}


def docstring_lines(count: int) -> list[str]:
    """``count`` distinct lines of 40-100 characters from standard-library docstrings."""
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, None] = {}
    for path in sorted(lib.glob("*.py")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            text = line.strip()
            if 40 <= len(text) <= 100 and not text.startswith(("#", "def ", "class ", "import")):
                seen.setdefault(text, None)
                if len(seen) == count:
                    return list(seen)
    raise SystemExit(f"only {len(seen)} distinct lines found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    # Chroma rebuilds the embedding function from the stored config on every add; with the
    # default runtime options that finds the CLI's loaded model (any other option reloads it).
    parser.add_argument("--attn-implementation", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "index.json")
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qwen3rag-bench-index-"))
    try:
        model = build_checkpoint(
            work / "model", "embedding", shape=SHAPES[opts.shape], eos_postprocessor=True
        )
        texts = docstring_lines(opts.files)
        corpus = work / "corpus"
        corpus.mkdir()
        for i, text in enumerate(texts):
            (corpus / f"{i:05d}.txt").write_text(text, encoding="utf-8")
        options = {"max_length": 128, "attn_implementation": opts.attn_implementation}
        extra = (
            ["--attn-implementation", opts.attn_implementation] if opts.attn_implementation else []
        )

        embedder = Qwen3Embedder(str(model), show_progress=False, **options)
        embedder.embed_documents(texts[:256])  # warm-up
        started = time.perf_counter()
        embedder.embed_documents(texts)
        embed_seconds = time.perf_counter() - started

        argv = [
            "index", str(corpus), "--embedding-model", str(model), "--max-length", "128",
            *extra, "--json", "-q",
        ]  # fmt: skip
        cli_main([*argv, "--db", str(work / "warm")])  # warm-up (imports, first Chroma open)
        started = time.perf_counter()
        code = cli_main([*argv, "--db", str(work / "db")])
        index_seconds = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"index failed with exit status {code}")
        result = {
            "files": opts.files,
            "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
            "model": f"random-weight Qwen3, {opts.shape} shape",
            "attn_implementation": opts.attn_implementation or "default (sdpa, packed on CPU)",
            "embed_only_s": round(embed_seconds, 2),
            "cli_index_s": round(index_seconds, 2),
            "ratio": round(index_seconds / embed_seconds, 2),
            "machine": f"{platform.processor() or platform.machine()}, "
            f"{__import__('os').cpu_count()} CPUs",
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(
        f"| {result['files']:,} files x {result['mean_chars']} chars | "
        f"{result['embed_only_s']} s | {result['cli_index_s']} s | {result['ratio']}x |\n"
    )


if __name__ == "__main__":
    main()
