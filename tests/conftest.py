from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_models import build_checkpoint

# Tests never reach a model hub: every checkpoint is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

# Texts that exercise the tokenizer: scripts, code, emoji, whitespace, template look-alikes.
CORPUS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "",
    "   ",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "Берлин — столица Германии.",
    "مرحبا بالعالم",
    "def add(a, b):\n    return a + b  # 🐍\n",
    "SELECT id, name FROM users WHERE age > 30;",
    "🚀🔥✨ emoji only? 👍🏽",
    "\n\nleading newlines and trailing tabs\t\t",
    "1234567890 numbers first",
    "a" * 700,
    "word " * 300,
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def embed_eos_path(tiny_dir: Path) -> str:
    """Embedding checkpoint whose tokenizer appends <|endoftext|> (current official revision)."""
    return str(
        build_checkpoint(
            tiny_dir / "embed-eos", "embedding", eos_postprocessor=True, initializer_range=0.1
        )
    )


@pytest.fixture(scope="session")
def embed_plain_path(tiny_dir: Path) -> str:
    """Embedding checkpoint whose tokenizer does not append the EOS (older revisions)."""
    return str(
        build_checkpoint(
            tiny_dir / "embed-plain",
            "embedding",
            eos_postprocessor=False,
            initializer_range=0.1,
            seed=1,
        )
    )


@pytest.fixture(scope="session")
def reranker_path(tiny_dir: Path) -> str:
    """Reranker with a tied LM head, like Qwen3-Reranker-0.6B and 4B."""
    return str(build_checkpoint(tiny_dir / "reranker", "reranker", initializer_range=0.1, seed=2))


@pytest.fixture(scope="session")
def reranker_untied_path(tiny_dir: Path) -> str:
    """Reranker with an untied LM head, like Qwen3-Reranker-8B."""
    return str(
        build_checkpoint(
            tiny_dir / "reranker-untied",
            "reranker",
            tie_word_embeddings=False,
            initializer_range=0.1,
            seed=3,
        )
    )
