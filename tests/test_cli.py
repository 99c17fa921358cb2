"""The qwen3-rag CLI and the demo apps, end to end on the tiny checkpoints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qwen3_rag.cli import main

from conftest import chroma_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose content stream draws ``text`` (enough for pypdf to extract)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "keys.md").write_text(
        "# Keys\n\nRotate keys every 90 days. Create the new key first, then revoke the old.\n\n"
        + "Never commit keys to source control. " * 20,
        encoding="utf-8",
    )
    (docs / "coffee.txt").write_text("Grind size matters. Water at 93 degrees.", encoding="utf-8")
    (docs / "sub" / "planets.md").write_text("Venus is the hottest planet.", encoding="utf-8")
    (docs / "manual.pdf").write_bytes(minimal_pdf("The reset button is on the back panel."))
    (docs / "ignored.csv").write_text("a,b", encoding="utf-8")
    return docs


@pytest.fixture()
def models(embed_eos_path, reranker_path) -> dict[str, str]:
    return {"embed": embed_eos_path, "rerank": reranker_path}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def index(capsys, corpus, db, models, *extra):
    return run_cli(
        capsys,
        "index",
        str(corpus),
        "--db",
        str(db),
        "--embedding-model",
        models["embed"],
        "--max-length",
        "256",
        "--chunk-size",
        "200",
        "--chunk-overlap",
        "20",
        "--json",
        "-q",
        *extra,
    )


def test_index_is_idempotent_and_tracks_changes(capsys, corpus, tmp_path, models):
    db = tmp_path / "db"
    code, out, _ = index(capsys, corpus, db, models)
    first = json.loads(out)
    assert code == 0 and first["files"] == 4 and first["new"] == first["chunks"] > 4
    code, out, _ = index(capsys, corpus, db, models)
    again = json.loads(out)
    assert again["new"] == 0 and again["unchanged"] == first["chunks"] and again["removed"] == 0

    (corpus / "coffee.txt").write_text("Espresso needs a fine grind.", encoding="utf-8")
    changed = json.loads(index(capsys, corpus, db, models)[1])
    assert changed["new"] == 1 and changed["removed"] == 1

    (corpus / "sub" / "planets.md").unlink()
    removed = json.loads(index(capsys, corpus, db, models)[1])
    assert removed["removed"] == 1 and removed["new"] == 0

    import chromadb

    col = chromadb.PersistentClient(str(db)).get_collection("qwen3-rag")
    metas = col.get(include=["metadatas", "documents"])
    assert col.count() == first["chunks"] - 1
    assert not any("planets" in m["source"] for m in metas["metadatas"])
    assert "Espresso needs a fine grind." in metas["documents"]
    assert any(m.get("page") == 1 for m in metas["metadatas"])  # the PDF was read


@pytest.mark.slow
def test_query_json_is_sorted_with_sources(capsys, corpus, tmp_path, models):
    db = tmp_path / "db"
    index(capsys, corpus, db, models)
    code, out, _ = run_cli(
        capsys,
        "query",
        "how do I rotate keys?",
        "--db",
        str(db),
        "--reranker-model",
        models["rerank"],
        "--k",
        "6",
        "--top-n",
        "3",
        "--json",
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["query"] == "how do I rotate keys?"
    scores = [r["score"] for r in payload["results"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    for r in payload["results"]:
        assert Path(r["source"]).is_file() and r["text"]
    # The same reranker scoring the same candidates gives the same order.
    from qwen3_rag import Qwen3Reranker

    rr = Qwen3Reranker(models["rerank"], max_length=8192)
    again = rr.score(payload["query"], [r["text"] for r in payload["results"]])
    assert max(abs(a - b) for a, b in zip(again, scores, strict=True)) <= 2e-6

    code, out, _ = run_cli(
        capsys,
        "query",
        "how do I rotate keys?",
        "--db",
        str(db),
        "--reranker-model",
        models["rerank"],
    )
    assert code == 0 and "score" in out
    assert any(name in out for name in ("keys.md", "coffee.txt", "planets.md", "manual.pdf"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["index", "{tmp}/missing"], "path not found"),
        (["index", "{tmp}/empty"], "no .txt, .md, .pdf files"),
        (["query", "q"], "does not exist"),
        (["index", "{corpus}", "--embedding-model", "{tmp}/no-model"], "does not exist"),
        (
            ["index", "{corpus}", "--chroma-url", "http://127.0.0.1:9"],
            "cannot reach the Chroma server",
        ),
        (["index", "{corpus}", "--chroma-url", "ftp://x"], "--chroma-url"),
        (["index", "{corpus}", "--dimensions", "7"], "dimensions must be at least 32, got 7"),
    ],
)
def test_clear_errors_without_tracebacks(capsys, corpus, tmp_path, models, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path, corpus=corpus) for a in argv]
    if "--chroma-url" not in argv:
        argv += ["--db", str(tmp_path / "db")]
    if "--embedding-model" not in argv and argv[0] == "index":
        argv += ["--embedding-model", models["embed"]]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "error",
    [
        TypeError("a programming error"),
        ValueError("cannot reshape array of size 6 into shape (5,)"),
    ],
)
def test_a_bug_keeps_its_traceback(capsys, corpus, tmp_path, models, monkeypatch, error):
    # A ValueError is not "bad input" unless the library raised it as its own error: a bug's
    # keeps its traceback instead of becoming a one-line usage error (exit 2).
    from qwen3_rag.indexing import plan

    def broken(path, chunk_size, chunk_overlap):
        raise error

    monkeypatch.setattr(plan, "chunk_file", broken)
    db = str(tmp_path / "db")
    with pytest.raises(type(error), match=re.escape(str(error))):
        run_cli(capsys, "index", str(corpus), "--db", db, "--embedding-model", models["embed"])


def test_unwritable_db_is_refused_with_its_path(capsys, corpus, tmp_path, models):
    if os.geteuid() == 0:
        # root ignores permissions; a path under a regular file cannot be created by anyone.
        blocker = tmp_path / "file"
        blocker.write_text("x")
        db = blocker / "db"
    else:
        db = tmp_path / "ro"
        db.mkdir()
        db.chmod(0o500)
    code, _, err = index(capsys, corpus, db, models)
    assert code == 2 and str(db) in err


def test_undecodable_bytes_are_replaced_and_damaged_files_listed(capsys, corpus, tmp_path, models):
    """#10 item 8: one bad byte no longer skips a file; --json says which files were skipped."""
    (corpus / "latin1.txt").write_bytes("Caf\xe9 au lait, cr\xe8me br\xfbl\xe9e.".encode("latin-1"))
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    code, out, err = index(capsys, corpus, tmp_path / "db", models)
    stats = json.loads(out)
    assert code == 0 and stats["files"] == 5 and stats["skipped"] == 1
    latin1 = str(corpus / "latin1.txt")
    assert stats["replaced_characters"] == {latin1: 4}
    assert [s["path"] for s in stats["skipped_files"]] == [str(corpus / "broken.pdf")]
    assert "cannot read this PDF" in stats["skipped_files"][0]["reason"]
    assert "latin1.txt: 4 undecodable bytes replaced" in err and "broken.pdf" in err

    import chromadb

    col = chromadb.PersistentClient(str(tmp_path / "db")).get_collection("qwen3-rag")
    got = col.get(where={"source": latin1}, include=["documents"])
    assert got["documents"] == ["Caf\ufffd au lait, cr\ufffdme br\ufffdl\ufffde."]


def test_model_or_dimension_mismatch_names_both(capsys, corpus, tmp_path, models):
    db = tmp_path / "db"
    index(capsys, corpus, db, models)
    code, _, err = index(capsys, corpus, db, models, "--dimensions", "32")
    assert code == 2 and "dimensions=64" in err and "dimensions=32" in err
    other = shutil.copytree(models["embed"], tmp_path / "other-model")
    code, _, err = run_cli(
        capsys,
        "query",
        "q",
        "--db",
        str(db),
        "--embedding-model",
        str(other),
        "--reranker-model",
        models["rerank"],
    )
    assert code == 2 and "model=" in err and str(other) in err


@pytest.mark.slow
def test_against_a_real_chroma_server(capsys, corpus, tmp_path, models):
    with chroma_server(tmp_path / "server") as url:
        code, out, err = run_cli(
            capsys,
            "index",
            str(corpus),
            "--chroma-url",
            url,
            "--embedding-model",
            models["embed"],
            "--max-length",
            "256",
            "--chunk-size",
            "200",
            "--chunk-overlap",
            "20",
            "--json",
            "-q",
        )
        assert code == 0, err
        first = json.loads(out)
        code, out, _ = run_cli(
            capsys,
            "index",
            str(corpus),
            "--chroma-url",
            url,
            "--embedding-model",
            models["embed"],
            "--max-length",
            "256",
            "--chunk-size",
            "200",
            "--chunk-overlap",
            "20",
            "--json",
            "-q",
        )
        assert json.loads(out)["new"] == 0 and json.loads(out)["chunks"] == first["chunks"]
        code, out, _ = run_cli(
            capsys,
            "query",
            "rotate keys",
            "--chroma-url",
            url,
            "--reranker-model",
            models["rerank"],
            "--json",
        )
        results = json.loads(out)["results"]
        assert code == 0 and results
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


@pytest.mark.slow
def test_console_script_runs_in_a_fresh_process(corpus, tmp_path, models):
    exe = Path(sys.executable).with_name("qwen3-rag")
    out = subprocess.run(
        [
            str(exe),
            "index",
            str(corpus),
            "--db",
            str(tmp_path / "db"),
            "--embedding-model",
            models["embed"],
            "--max-length",
            "128",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "indexed 4 files" in out.stdout
    help_out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "index" in help_out.stdout and "query" in help_out.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "script", ["chroma_quickstart.py", "langchain_rag.py", "llamaindex_rag.py"]
)
def test_demo_apps_run_end_to_end(script, tmp_path, models):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OPENAI_API_KEY", None)
    help_out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--help"], capture_output=True, text=True, env=env
    )
    assert help_out.returncode == 0 and "--embedding-model" in help_out.stdout
    argv = [
        sys.executable,
        str(EXAMPLES / script),
        "How should I rotate an API key?",
        "--embedding-model",
        models["embed"],
        "--reranker-model",
        models["rerank"],
        "--db",
        str(tmp_path / "db"),
        "--top-n",
        "2",
    ]
    for _ in range(2):  # a second run reuses the stored collection
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr
        assert ".md" in out.stdout or ".txt" in out.stdout


@pytest.mark.slow
def test_second_process_on_the_same_folder_is_refused(corpus, tmp_path, models):
    """reliability.md case 43: embedded Chroma is single-process."""
    import fcntl

    db = tmp_path / "db"
    db.mkdir()
    with open(db / ".qwen3-rag.lock", "a+") as holder:  # another qwen3-rag holds the folder
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        exe = Path(sys.executable).with_name("qwen3-rag")
        out = subprocess.run(
            [
                str(exe),
                "index",
                str(corpus),
                "--db",
                str(db),
                "--embedding-model",
                models["embed"],
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert out.returncode == 2
    assert "in use by another qwen3-rag process" in out.stderr and "Traceback" not in out.stderr


def truncation_corpus(folder: Path) -> Path:
    """One file of long chunks (standard-library source) among many short ones."""
    folder.mkdir()
    (folder / "long.md").write_text(Path(os.__file__).read_text(encoding="utf-8")[:3000])
    for i in range(30):
        (folder / f"short{i:02d}.txt").write_text(f"Note {i}: the kettle is on.", encoding="utf-8")
    return folder


def test_the_truncation_warning_counts_against_every_chunk_embedded(capsys, tmp_path, models):
    import chromadb

    docs = truncation_corpus(tmp_path / "docs")
    db = tmp_path / "db"
    code, out, err = run_cli(
        capsys, "index", str(docs), "--db", str(db), "--embedding-model", models["embed"],
        "--max-length", "32", "--chunk-size", "1000", "--chunk-overlap", "0", "--json", "-q",
    )  # fmt: skip
    assert code == 0, err
    stats = json.loads(out)
    got = chromadb.PersistentClient(str(db)).get_collection("qwen3-rag").get()
    long = [
        d for d, m in zip(got["documents"], got["metadatas"], strict=True) if "long" in m["source"]
    ]
    # Hundreds of characters of source are far over 32 tokens; the notes are far under.
    assert len(long) >= 3 and min(map(len, long)) > 300 and stats["new"] == len(long) + 30
    line = f"{len(long)} of {stats['new']} chunks were longer than max_length=32 tokens"
    assert line in err and err.count("were truncated") == 1, err
