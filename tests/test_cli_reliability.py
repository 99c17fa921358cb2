"""The CLI under faults and odd input: kills, damaged or full databases, stale sources, options.

Issues #10 (first contact) and #18 (reliability round 2); each test fails without its fix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from qwen3_rag import __version__, cli
from qwen3_rag.cli import common as cli_common
from qwen3_rag.cli import main
from qwen3_rag.core import EmbedderConfig, RerankerConfig
from qwen3_rag.core.config import fields
from qwen3_rag.indexing import local as local_engine
from qwen3_rag.indexing import progress as progress_module

#: Index options shared by every run here: small chunks, the eager kernel (fastest for the
#: tiny model on a loaded CPU), short inputs.
FAST = ["--max-length", "128", "--chunk-size", "300", "--chunk-overlap", "0"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def index_json(capsys, paths, db, model, *extra) -> tuple[int, dict, str]:
    code, out, err = run_cli(
        capsys,
        "index",
        *map(str, paths),
        "--db",
        str(db),
        "--embedding-model",
        model,
        *FAST,
        "--json",
        "-q",
        *extra,
    )
    return code, (json.loads(out) if code == 0 else {}), err


def collection_state(db: Path, name: str = "qwen3-rag") -> dict:
    """Everything stored, by id, read in a fresh process so no in-process cache is involved."""
    code = (
        "import chromadb, json, sys\n"
        "c = chromadb.PersistentClient(sys.argv[1]).get_collection(sys.argv[2])\n"
        "g = c.get(include=['documents', 'metadatas', 'embeddings'])\n"
        "print(json.dumps({i: [d, m, [float(x) for x in e]] for i, d, m, e in "
        "zip(g['ids'], g['documents'], g['metadatas'], g['embeddings'])}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(db), name], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def assert_same_collection(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key][0] == want[key][0], key
        assert got[key][1] == want[key][1], key
        # Batches differ between runs; the embedder is batch-invariant to float32 rounding.
        np.testing.assert_allclose(got[key][2], want[key][2], atol=1e-5)


def stdlib_corpus(folder: Path, count: int, offset: int = 0) -> Path:
    """Real text: Python standard-library sources, copied as .txt files."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in lib.glob("*.py") if p.stat().st_size > 2000)
    for src in sources[offset : offset + count]:
        shutil.copy(src, folder / f"{src.stem}.txt")
    return folder


@pytest.fixture()
def model(embed_eos_path) -> str:
    return embed_eos_path


# -- #10 item 3: kills ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_run(tmp_path_factory, embed_eos_path):
    """A corpus that takes several seconds to index, and its uninterrupted result."""
    root = tmp_path_factory.mktemp("killcorpus")
    corpus = stdlib_corpus(root / "corpus", 24)
    db = root / "clean"
    argv = [
        sys.executable, "-m", "qwen3_rag", "index", str(corpus), "--db", str(db),
        "--embedding-model", embed_eos_path, *FAST, "--attn-implementation", "eager",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    first_write = wait_for_line(proc, "index:")
    done = wait_for_line(proc, "files read, done")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return argv, db, collection_state(db), done - first_write


def wait_for_line(proc: subprocess.Popen, text: str) -> float:
    """Block until the run prints a stderr line containing ``text``; return when."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if text in line:
            return time.monotonic()
    raise AssertionError(f"the run ended before printing {text!r}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_runs_resume_to_the_uninterrupted_collection(long_run, tmp_path, sig):
    """Kill at random points; every next run goes on, and the last equals a clean build."""
    argv, clean_db, want, seconds = long_run
    db = tmp_path / "db"
    argv = [a if a != str(clean_db) else str(db) for a in argv]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    handled = 0
    for round_ in range(4):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # A random point of the indexing itself (each run resumes, so it has less to do).
        assert proc.stderr is not None
        seen = []  # kept: the first "index:" line of a run with little left can be its "done" line
        for line in proc.stderr:
            seen.append(line)
            if "index:" in line:  # the first batch is stored
                break
        else:
            # An earlier kill landed after the last write: this run had nothing left to embed.
            assert proc.wait(timeout=120) == 0, f"seed {seed}, round {round_}"
            break
        time.sleep(rng.uniform(0.0, 0.9) * seconds * (1 - round_ / 5))
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=120)
        err = "".join(seen) + rest
        where = f"seed {seed}, round {round_}: rc {proc.returncode}\n{err}"
        assert "Traceback" not in err and "damaged" not in err, where
        if proc.returncode == 0 or (
            proc.returncode == -signal.SIGTERM and "files read, done" in err
        ):
            continue  # the signal came after the work was done
        if sig == signal.SIGTERM:
            # Handled like SIGINT: the write in flight finishes, the run says how to resume.
            assert proc.returncode == 1, where
            assert "stopped by SIGTERM" in err and "run the same command again" in err, where
            handled += 1
        else:
            assert proc.returncode == -signal.SIGKILL, where
    if sig == signal.SIGTERM:
        assert handled >= 1, f"seed {seed}: no SIGTERM arrived while indexing"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"seed {seed}\n{done.stderr}"
    assert_same_collection(collection_state(db), want)


def test_sigterm_stops_after_the_write_in_flight(capsys, tmp_path, model, monkeypatch):
    """In process: a SIGTERM during a write lets the write finish, then exits 1."""
    corpus = stdlib_corpus(tmp_path / "corpus", 3)
    real_write = local_engine._Writer.write
    calls = []

    def write_then_signal(self, *, drain=False):
        wrote = real_write(self, drain=drain)
        if wrote and not calls:
            calls.append(self.written)
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while this batch is being stored
        return wrote

    monkeypatch.setattr(local_engine._Writer, "write", write_then_signal)
    previous = signal.getsignal(signal.SIGTERM)
    code, _, err = index_json(capsys, [corpus], tmp_path / "db", model)
    assert code == 1 and f"stopped by SIGTERM after writing {calls[0]} chunks" in err
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    import chromadb

    stored = chromadb.PersistentClient(str(tmp_path / "db")).get_collection("qwen3-rag")
    assert stored.count() == calls[0]


# -- #10 item 3: damaged database and --rebuild ----------------------------------------------------
def test_damaged_database_one_line_then_rebuild(capsys, tmp_path, model):
    from chromadb.api.client import SharedSystemClient

    corpus = stdlib_corpus(tmp_path / "corpus", 2)
    db = tmp_path / "db"
    code, first, _ = index_json(capsys, [corpus], db, model)
    assert code == 0
    SharedSystemClient.clear_system_cache()
    sqlite = db / "chroma.sqlite3"
    sqlite.write_bytes(sqlite.read_bytes()[:8192])  # what a kill mid-write can leave

    code, _, err = index_json(capsys, [corpus], db, model)
    assert code == 3
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"the database in '{db}' is damaged" in err
    assert f"qwen3-rag index {corpus} --db {db} --rebuild" in err
    code, _, err = run_cli(capsys, "query", "q", "--db", str(db))
    assert code == 3 and "--rebuild" in err

    code, rebuilt, err = index_json(capsys, [corpus], db, model, "--rebuild")
    assert code == 0, err
    assert rebuilt["new"] == first["new"] == rebuilt["collection_count"]
    assert list(tmp_path.glob("db.damaged-*/chroma.sqlite3"))  # kept for inspection


def test_rebuild_recreates_with_new_settings(capsys, tmp_path, model):
    corpus = stdlib_corpus(tmp_path / "corpus", 1)
    db = tmp_path / "db"
    assert index_json(capsys, [corpus], db, model)[0] == 0
    code, _, err = index_json(capsys, [corpus], db, model, "--max-length", "64")
    assert code == 2 and "max_length=128" in err and "max_length=64" in err
    code, stats, _ = index_json(capsys, [corpus], db, model, "--max-length", "64", "--rebuild")
    assert code == 0 and stats["unchanged"] == 0 and stats["new"] == stats["collection_count"]


# -- #18 item 5: writes batched across files ------------------------------------------------------
def test_many_small_files_are_written_in_few_batches(capsys, tmp_path, model, monkeypatch):
    from chromadb.api.models.Collection import Collection

    corpus = tmp_path / "small"
    corpus.mkdir()
    for i in range(300):
        (corpus / f"note{i:03d}.txt").write_text(f"Note {i}: rotate key {i} after {i} days.")
    adds = []
    real_add = Collection.add

    def counting_add(self, *args, **kwargs):  # a spy: the real add runs
        adds.append(len(kwargs["ids"]))
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "add", counting_add)
    code, stats, _ = index_json(capsys, [corpus], tmp_path / "db", model)
    assert code == 0 and stats["new"] == 300 and sum(adds) == 300
    assert len(adds) <= 300 // local_engine.FIRST_WRITE_BATCH + 1  # one write per file before
    assert max(adds) <= local_engine.MAX_WRITE_BATCH


# -- #18 item 2: stale chunks, symlinks, prune -----------------------------------------------------
def test_renamed_folder_leaves_no_stale_chunks(capsys, tmp_path, model):
    ren_a = stdlib_corpus(tmp_path / "ren_a", 2)
    other = stdlib_corpus(tmp_path / "other", 1, offset=5)
    db = tmp_path / "db"
    _, first, _ = index_json(capsys, [ren_a], db, model)
    _, with_other, _ = index_json(capsys, [other], db, model)
    ren_b = ren_a.rename(tmp_path / "ren_b")
    code, stats, _ = index_json(capsys, [ren_b], db, model)
    assert code == 0
    # The moved copy replaces the old one; the other folder's chunks stay.
    assert stats["collection_count"] == with_other["collection_count"]
    assert stats["removed"] == first["new"]
    assert sorted(stats["removed_sources"]) == sorted(str(ren_a / p.name) for p in ren_b.iterdir())


def test_symlinks_are_stored_as_indexed_and_prune_reports(capsys, tmp_path, model):
    target = stdlib_corpus(tmp_path / "real", 1)
    file = next(target.iterdir())
    links = tmp_path / "links"
    links.mkdir()
    link = links / "alias.txt"
    link.symlink_to(file)
    db = tmp_path / "db"
    _, stats, _ = index_json(capsys, [links], db, model)
    import chromadb

    col = chromadb.PersistentClient(str(db)).get_collection("qwen3-rag")
    assert {m["source"] for m in col.get(include=["metadatas"])["metadatas"]} == {str(link)}
    link.unlink()
    code, out, _ = run_cli(capsys, "prune", "--db", str(db), "--json")
    report = json.loads(out)
    assert code == 0 and report["removed"] == stats["new"]
    assert report["removed_sources"] == [str(link)] and report["collection_count"] == 0
    code, out, _ = run_cli(capsys, "prune", "--db", str(db))
    assert code == 0 and "pruned 0 chunks of 0 missing files" in out


# -- #10 item 9, #18 item 7: options checked before any work --------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-length", "0"], "max_length must be at least 2, got 0"),
        (["--chunk-size", "0"], "--chunk-size must be at least 1, got 0"),
        (["--chunk-overlap", "-1"], "--chunk-overlap must be from 0 to"),
        (["--chunk-overlap", "300"], "--chunk-overlap must be from 0 to"),
        (["--dimensions", "7"], "dimensions must be at least 32, got 7"),
        (["--dtype", "int8"], "dtype='int8' is not supported"),
    ],
)
def test_bad_options_fail_before_any_work(capsys, tmp_path, extra, message):
    corpus = stdlib_corpus(tmp_path / "corpus", 1)
    db = tmp_path / "db"
    # A hub id that is not cached: reaching the model (or the hub) first would fail differently.
    argv = ["index", str(corpus), "--db", str(db), "--embedding-model", "Nobody/none", *FAST]
    code, out, err = run_cli(capsys, *argv, *extra)
    assert code == 2 and message in err and out == ""
    assert not db.exists()  # nothing was created


def test_query_on_a_missing_db_creates_nothing(capsys, tmp_path):
    db = tmp_path / "nowhere"
    code, _, err = run_cli(capsys, "query", "q", "--db", str(db))
    assert code == 2 and "does not exist" in err and not db.exists()


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit, match="0"):
        main(["index", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 8192)" in text and "(default: 1000)" in text
    with pytest.raises(SystemExit, match="0"):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"qwen3-rag {__version__}"


@pytest.mark.parametrize(("command", "cls"), [("index", EmbedderConfig), ("query", RerankerConfig)])
def test_model_flags_come_from_the_config(command, cls):
    """#11: every cli field is a flag with its help and default; nothing else restates them."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    actions = {a.dest: a for a in sub._actions}
    for f in fields(cls):
        if not f.metadata["cli"]:
            assert f.name not in actions
            continue
        action = actions[f.name]
        assert action.option_strings[0] == "--" + f.name.replace("_", "-")
        assert action.help.replace("%%", "%") == f"{f.metadata['help']} (default: {f.default})"
        assert action.default is None  # "not given": the collection's value may apply
    args = parser.parse_args(
        [command, "x", "--no-share-prefix"]
        if command == "query"
        else [command, "x", "--local-files-only", "--batch-tokens", "512"]
    )
    given = cli_common.given_options(args, cls)
    assert given == (
        {"share_prefix": False}
        if command == "query"
        else {"local_files_only": True, "batch_tokens": 512}
    )


# -- #10 item 4: model folders stored as absolute paths --------------------------------------------
@pytest.mark.slow
def test_relative_model_path_works_from_any_cwd(
    capsys, tmp_path, model, monkeypatch, reranker_path
):
    models = tmp_path / "models"
    shutil.copytree(model, models / "emb")
    corpus = stdlib_corpus(tmp_path / "corpus", 1)
    monkeypatch.chdir(models)
    code, _, err = index_json(capsys, [corpus], tmp_path / "db", "emb")
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for given in ([], ["--embedding-model", str(models / "emb")]):
        code, out, err = run_cli(
            capsys,
            "query",
            "q",
            "--db",
            str(tmp_path / "db"),
            "--reranker-model",
            reranker_path,
            "--json",
            *given,
        )
        assert code == 0, err
        assert json.loads(out)["results"]


# -- #10 item 6: the offline error says what to do ------------------------------------------------
def test_uncached_hub_id_offline_says_how_to_pass_a_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = stdlib_corpus(tmp_path / "corpus", 1)
    argv = ["index", str(corpus), "--db", str(tmp_path / "db"), "--embedding-model", "Nobody/none"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in err
    assert "Nobody/none" in err and "not in the local cache" in err
    assert "--embedding-model /path/to/folder" in err and "EMBED_MODEL=" in err
    # The switch the message names exists on the command line (it did not before).
    assert "--local-files-only" in err and "HF_HUB_OFFLINE=1" in err


@pytest.mark.slow
def test_unreachable_hub_is_not_called_a_missing_model(tmp_path):
    corpus = stdlib_corpus(tmp_path / "corpus", 1)
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "qwen3_rag", "index", str(corpus), "--db", str(tmp_path / "db"),
         "--embedding-model", "Nobody/none"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot reach the Hugging Face hub" in out.stderr
    assert "HF_HUB_OFFLINE" in out.stderr and "--embedding-model /path/to/folder" in out.stderr


# -- #10 item 7: a core-only install ---------------------------------------------------------------
@pytest.mark.parametrize("module", ["chromadb", "langchain_text_splitters", "pypdf"])
def test_missing_cli_extra_is_one_line(capsys, tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    code, _, err = run_cli(capsys, "index", str(tmp_path), "--db", str(tmp_path / "db"))
    assert (
        code == 2
        and err
        == f'ERROR: {module} is not installed; the CLI needs: pip install "qwen3-rag[cli]"\n'
    )


# -- #10 item 11, #11: quiet libraries, restored afterwards ----------------------------------------
@pytest.mark.slow
def test_library_noise_is_hidden_by_default_and_settings_restored(capsys, tmp_path, model):
    from test_cli import minimal_pdf
    from transformers.utils import logging as hf_logging

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # No %%EOF marker: pypdf logs "EOF marker not found" (then the file is skipped).
    (corpus / "no_eof.pdf").write_bytes(minimal_pdf("Reset button.").replace(b"%%EOF", b""))
    (corpus / "note.txt").write_text("Rotate keys every 90 days.")
    # pypdf words its complaint differently across releases and call orders.
    pdf_noise = re.compile(r"EOF marker|%%EOF|startxref")
    # Each run gets its own copy of the model, so each really loads weights (a model another
    # test left loaded is shared, and then no loading bar is drawn).
    quiet_model, verbose_model = tmp_path / "m-quiet", tmp_path / "m-verbose"
    shutil.copytree(model, quiet_model)
    shutil.copytree(model, verbose_model)
    hf_logging.enable_progress_bar()
    pypdf_level = logging.getLogger("pypdf").level
    code, _, err = index_json(capsys, [corpus], tmp_path / "db", str(quiet_model))
    assert code == 0
    assert not pdf_noise.search(err) and "Loading weights" not in err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is back
    assert logging.getLogger("pypdf").level == pypdf_level
    code, _, err = index_json(capsys, [corpus], tmp_path / "db2", str(verbose_model), "-v")
    assert code == 0 and pdf_noise.search(err) and "Loading weights" in err
    hf_logging.disable_progress_bar()
    code, _, _ = index_json(capsys, [corpus], tmp_path / "db3", model)
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()


# -- #10 item 5: progress inside a large file ------------------------------------------------------
@pytest.mark.slow
def test_progress_counts_chunks_inside_one_large_file(capsys, tmp_path, model, monkeypatch):
    lib = Path(sysconfig.get_paths()["stdlib"])
    corpus = tmp_path / "big"
    corpus.mkdir()
    (corpus / "big.txt").write_text((lib / "argparse.py").read_text()[:60_000])
    monkeypatch.setattr(progress_module, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(local_engine, "TARGET_BATCH_SECONDS", 0.2)
    code, _out, err = run_cli(
        capsys,
        "index",
        str(corpus),
        "--db",
        str(tmp_path / "db"),
        "--embedding-model",
        model,
        *FAST,
        "--attn-implementation",
        "eager",
    )
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("index:")]
    written = [int(line.split()[1].replace(",", "")) for line in lines]
    assert len(set(written)) >= 4 and written == sorted(written)  # several updates in one file
    assert all("chunks/s" in line and ("ETA" in line or line.endswith(", done")) for line in lines)
    assert "1/1 files read" in lines[1] and "ETA" in lines[1]


# -- #18 items 4 and 8: full disk, read-only files ------------------------------------------------
@contextlib.contextmanager
def read_only(*paths: Path):
    """Make files and folders unwritable, for root too (chattr +i), and undo it afterwards."""
    root = os.geteuid() == 0
    for p in paths:
        if root:
            subprocess.run(["chattr", "+i", str(p)], check=True)
        else:
            p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield
    finally:
        for p in paths:
            if root:
                subprocess.run(["chattr", "-i", str(p)], check=True)
            else:
                p.chmod(0o755 if p.is_dir() else 0o644)


def test_read_only_sqlite_refuses_index_allows_query(capsys, tmp_path, model, reranker_path):
    corpus = stdlib_corpus(tmp_path / "corpus", 1)
    db = tmp_path / "db"
    assert index_json(capsys, [corpus], db, model)[0] == 0
    (corpus / "new.txt").write_text("A new note about keys.")
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    with read_only(db / "chroma.sqlite3"):
        code, _, err = index_json(capsys, [corpus], db, model)
        assert code == 4 and "Traceback" not in err and err.count("\n") == 1
        assert f"cannot write the database in '{db}'" in err and "not writable" in err
    with read_only(*db.rglob("*"), db):
        code, out, err = run_cli(
            capsys, "query", "keys", "--db", str(db), "--reranker-model", reranker_path, "--json"
        )
        assert code == 0, err
        assert json.loads(out)["results"]
        code, _, err = index_json(capsys, [corpus], db, model)
        assert code == 4 and "not writable" in err
    SharedSystemClient.clear_system_cache()
    code, stats, _ = index_json(capsys, [corpus], db, model)
    assert code == 0 and stats["new"] == 1  # the next run recovers


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_full_disk_is_one_line_and_the_next_run_recovers(tmp_path, model):
    corpus = stdlib_corpus(tmp_path / "corpus", 12)
    db = tmp_path / "db"
    argv = [sys.executable, "-m", "qwen3_rag", "index", str(corpus), "--db", str(db),
            "--embedding-model", model, *FAST, "--attn-implementation", "eager"]  # fmt: skip
    full = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(600_000)
    )
    assert full.returncode == 4, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("ERROR")]
    assert "Traceback" not in full.stderr
    assert len(errors) == 1 and f"cannot write the database in '{db}'" in errors[0]
    assert "no space left" in errors[0]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    clean = tmp_path / "clean"
    subprocess.run([a if a != str(db) else str(clean) for a in argv], check=True, timeout=300,
                   capture_output=True)  # fmt: skip
    assert_same_collection(collection_state(db), collection_state(clean))


def _subcommands(parser) -> dict[str, object]:
    """Every leaf command's parser by its full name ("finetune embedder", "index", ...)."""
    found = {}
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        for name, sub in (choices if isinstance(choices, dict) else {}).items():
            if isinstance(sub, type(parser)):
                leaves = _subcommands(sub)
                found.update({f"{name} {k}": v for k, v in leaves.items()} or {name: sub})
    return found


def test_every_command_with_progress_takes_the_same_quiet_and_verbose_flags():
    commands = _subcommands(cli.build_parser())
    progress = {"serve"}  # a server: logs, no progress to silence
    checked = sorted(set(commands) - progress)
    assert {"index", "eval", "synth", "mine", "merge", "finetune embedder"} <= set(checked)
    for name in checked:
        flags = {s: a for a in commands[name]._actions for s in a.option_strings}
        assert flags["-q"] is flags["--quiet"] and flags["-v"] is flags["--verbose"], name


@pytest.mark.slow
def test_finetune_quiet_shows_no_progress_bar(capsys, tmp_path, embed_eos_path):
    data = tmp_path / "train.jsonl"
    rows = [{"query": f"what does step {i} do", "pos": [f"step {i} adds {i}"]} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = ["finetune", "embedder", str(data), "--model", embed_eos_path, "--max-steps", "1"]
    common += ["--batch-size", "2", "--lora-rank", "0"]
    for quiet in (False, True):
        flags = ["-q"] if quiet else []
        assert main([*common, "--output", str(tmp_path / f"out-{quiet}"), *flags]) == 0
        err = capsys.readouterr().err
        assert ("finetune embedding" in err) is not quiet, err
