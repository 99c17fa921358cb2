"""Files as users expect them: the umask's mode, atomic writes, dataset folders never silently
overwritten, and options refused before the corpus is embedded."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qwen3_rag.cli import main
from qwen3_rag.datafiles import open_atomic, write_atomic
from qwen3_rag.eval import build_stdlib_dataset, stdlib_code_search, write_beir


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_of_a_new_file(tmp_path, mask, expected):
    with umask(mask):
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives, for comparison
        write_atomic(tmp_path / "a" / "lines.txt", ["one\n", "two\n"])
        with open_atomic(tmp_path / "bytes.bin") as handle:
            handle.write(b"\x00\x01")
    assert _mode(plain) == expected
    assert _mode(tmp_path / "a" / "lines.txt") == expected
    assert _mode(tmp_path / "bytes.bin") == expected
    assert (tmp_path / "a" / "lines.txt").read_text() == "one\ntwo\n"


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "kept.txt"
    write_atomic(target, ["old\n"])

    def lines():
        yield "new\n"
        raise RuntimeError("stopped halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        write_atomic(target, lines())
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]


def test_dataset_writers_refuse_a_non_empty_folder_unless_told(tmp_path):
    data = build_stdlib_dataset(modules=["shlex"])
    folder = stdlib_code_search(tmp_path / "train", modules=["shlex", "heapq"], split="train")
    before = (folder / "corpus.jsonl").read_bytes()
    with pytest.raises(FileExistsError, match=r"not empty .*overwrite=True"):
        stdlib_code_search(folder, modules=["shlex"], split="train")
    with pytest.raises(FileExistsError, match="not empty"):
        write_beir(data, folder)
    assert (folder / "corpus.jsonl").read_bytes() == before  # untouched
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        write_beir(data, tmp_path / "file", overwrite=True)
    write_beir(data, tmp_path / "empty")  # missing: created
    (tmp_path / "blank").mkdir()
    write_beir(data, tmp_path / "blank")  # empty: fine
    stdlib_code_search(folder, modules=["shlex"], split="train", overwrite=True)
    assert (folder / "corpus.jsonl").read_bytes() != before


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_every_eval_output_has_the_umask_mode(tmp_path, embed_eos_path, capsys):
    out = tmp_path / "out"
    with umask(0o022):
        argv = [
            "eval", "stdlib:shlex", "--embedding-model", embed_eos_path, "--baseline", "bm25",
            "--json", str(out / "r.json"), "--save-runs", str(out / "runs"),
            "--plot", str(out / "p.png"), "--save-dataset", str(out / "data"),
            "--eval-cache", str(out / "cache"), "--permutations", "500", "-q",
        ]  # fmt: skip
        assert main(argv) == 0
    capsys.readouterr()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".json", ".trec", ".png", ".jsonl", ".tsv", ".npz"}
    assert {(p.name, _mode(p)) for p in files} == {(p.name, 0o644) for p in files}
    assert not [p for p in files if p.name.startswith(".")]  # no temporary file left
    # The dataset folder is not overwritten by a second run, unless asked.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--save-dataset" in err and "not empty" in err and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dimensions", "1024"], "dimensions=1024 is out of range"),
        (["--compare-to", "bm26", "--baseline", "bm25"], "compare_to='bm26' names no row"),
        (["--baseline", "st:{empty}"], "cannot load sentence-transformers model"),
        (["--plot", "{tmp}/p.gif"], "unknown file type '.gif'"),
        (["--json", "{tmp}"], "is a folder"),
        (["--save-runs", "{file}"], "is a file"),
        (["--save-dataset", "{full}"], "not empty"),
        (["--propose", "2"], "--propose applies to --search-instructions only"),
    ],
)
def test_options_are_refused_before_the_corpus_is_embedded(
    extra, message, tmp_path, embed_eos_path, capsys
):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    where = {"empty": tmp_path / "empty", "tmp": tmp_path, "file": tmp_path / "file"}
    where["full"] = tmp_path / "full"
    extra = [e.format(**where) for e in extra]
    cache = tmp_path / "cache"
    argv = ["eval", "stdlib:shlex", "--embedding-model", embed_eos_path, "-q"]
    assert main([*argv, "--eval-cache", str(cache), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(cache.glob("*.npz"))  # no corpus vector was computed
