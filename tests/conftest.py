from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tiny_models import build_checkpoint

# Tests never reach a model hub: every checkpoint is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
# Ray's token authentication (its default for new clusters) with a token of this test run's own,
# not ~/.ray/auth_token. Ray reads both once, when it is first imported (RayConfig and its token
# cache), so they are set here, before any test imports it: a head started later by a fixture
# and every in-process driver then agree, whatever test imported Ray first.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", uuid.uuid4().hex)

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    """Wait until ``proc`` listens on ``port`` (127.0.0.1); fail if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, f"{what} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{what} did not start in {seconds} s"
            time.sleep(0.3)


@contextlib.contextmanager
def chroma_server(path: Path, seconds: float = 120) -> Iterator[str]:
    """A real ``chroma run`` server on 127.0.0.1 storing in ``path``, for the block; its URL."""
    port = free_port()
    chroma = Path(sys.executable).with_name("chroma")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "chroma run", seconds)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


_TINY_SPECS = {
    # Tokenizer appends <|endoftext|> itself (current official Qwen3-Embedding revision).
    "embed-eos": dict(kind="embedding", eos_postprocessor=True, seed=0),
    # Tokenizer does not append it (older revisions, GGUF conversions).
    "embed-plain": dict(kind="embedding", eos_postprocessor=False, seed=1),
    # Tied LM head, like Qwen3-Reranker-0.6B and 4B.
    "reranker": dict(kind="reranker", seed=2),
    # Untied LM head, like Qwen3-Reranker-8B.
    "reranker-untied": dict(kind="reranker", tie_word_embeddings=False, seed=3),
}
_tiny_root: Path | None = None
_tiny_lock = threading.Lock()


def tiny_checkpoint(name: str) -> str:
    """Path of a tiny random-weight checkpoint, built once per test session."""
    global _tiny_root
    with _tiny_lock:
        if _tiny_root is None:
            _tiny_root = Path(tempfile.mkdtemp(prefix="qwen3rag-tiny-"))
            atexit.register(shutil.rmtree, _tiny_root, ignore_errors=True)
        path = _tiny_root / name
        if not path.exists():
            spec = dict(_TINY_SPECS[name])
            build_checkpoint(path, spec.pop("kind"), initializer_range=0.1, **spec)
        return str(path)


@pytest.fixture(scope="session")
def embed_eos_path() -> str:
    return tiny_checkpoint("embed-eos")


@pytest.fixture(scope="session")
def embed_plain_path() -> str:
    return tiny_checkpoint("embed-plain")


@pytest.fixture(scope="session")
def reranker_path() -> str:
    return tiny_checkpoint("reranker")


@pytest.fixture(scope="session")
def reranker_untied_path() -> str:
    return tiny_checkpoint("reranker-untied")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A ``grid`` test's first case stays in the fast tier; its other cases are ``slow``.

    ``tryfirst``: before pytest's own hook deselects by ``-m``.
    """
    seen: set[tuple[str, str]] = set()
    for item in items:
        if item.get_closest_marker("grid") is None:
            continue
        key = (str(item.path), getattr(item, "originalname", item.name))
        if key in seen:
            item.add_marker(pytest.mark.slow)
        seen.add(key)
