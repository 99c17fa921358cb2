"""slerp merging: the formula per tensor, endpoints, norms, the parallel fallback, N > 2,
mismatch errors, and a merged folder that loads in Qwen3Embedder and transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen3_rag.cli import main
from qwen3_rag.train.merge import MergeError, slerp, slerp_merge

from tiny_models import TINY, build_checkpoint


def reference_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Textbook slerp on flattened float64 arrays; linear when |cos| > 0.9995 or a norm is 0."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0 or abs(x @ y / (nx * ny)) > 0.9995:
        return ((1 - t) * x + t * y).reshape(a.shape)
    omega = np.arccos(np.clip(x @ y / (nx * ny), -1, 1))
    return ((np.sin((1 - t) * omega) * x + np.sin(t * omega) * y) / np.sin(omega)).reshape(a.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_endpoints_reproduce_the_inputs_exactly(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g).to(dtype), torch.randn(5, 7, generator=g).to(dtype)
    assert torch.equal(slerp(a, b, 0.0), a) and slerp(a, b, 0.0).dtype == dtype
    assert torch.equal(slerp(a, b, 1.0), b)
    c = a + 1e-3 * b  # nearly parallel: the linear branch keeps the endpoints too
    assert torch.equal(slerp(a, c, 0.0), a) and torch.equal(slerp(a, c, 1.0), c)


def test_equal_norm_tensors_keep_their_norm_along_the_arc():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(300, generator=g, dtype=torch.float64)
    b = torch.randn(300, generator=g, dtype=torch.float64)
    b = b / b.norm() * a.norm()
    for t in (0.1, 0.25, 0.5, 0.9):
        mid = slerp(a, b, t)
        assert float(mid.norm()) == pytest.approx(float(a.norm()), rel=1e-12)
        np.testing.assert_allclose(
            mid.numpy(), reference_slerp(a.numpy(), b.numpy(), t), rtol=1e-12
        )
        # Linear interpolation would shrink it: slerp really is spherical here.
        assert float(((1 - t) * a + t * b).norm()) < 0.99 * float(a.norm())


def test_nearly_parallel_zero_and_opposite_tensors_fall_back_to_linear():
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for b in (2 * a, -a, torch.zeros(3, dtype=torch.float64), a + 1e-4):
        torch.testing.assert_close(slerp(a, b, 0.3), 0.7 * a + 0.3 * b, rtol=0, atol=1e-15)
    assert torch.isfinite(slerp(torch.zeros(3), torch.zeros(3), 0.5)).all()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    paths = [
        build_checkpoint(
            root / f"c{i}", "embedding", eos_postprocessor=True, initializer_range=0.1, seed=10 + i
        )
        for i in range(3)
    ]
    for path in paths:  # a trainer's leftovers, never copied into the merge
        (path / "optimizer.pt").write_bytes(b"not a model file")
        (path / "trainer_state.json").write_text("{}")
    return paths


def load(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.fixture(scope="module")
def merged_two(checkpoints, tmp_path_factory):
    parent = tmp_path_factory.mktemp("merged")
    return parent, slerp_merge(checkpoints[:2], [1.0, 3.0], out=parent / "merged")


@pytest.mark.slow
def test_two_checkpoints_merge_tensor_by_tensor(checkpoints, merged_two):
    a, b = checkpoints[:2]
    parent, out = merged_two
    ta, tb, merged = load(a), load(b), load(out)
    assert set(merged) == set(ta)
    parallel = 0
    for key in ta:
        want = reference_slerp(ta[key].numpy(), tb[key].numpy(), 0.75)
        np.testing.assert_allclose(merged[key].numpy(), want, rtol=1e-5, atol=1e-7, err_msg=key)
        parallel += torch.equal(ta[key], tb[key])
    assert parallel > 0  # the norms' all-ones weights take the linear branch
    names = sorted(p.name for p in out.iterdir())
    assert "optimizer.pt" not in names and "trainer_state.json" not in names
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= set(
        names
    )
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (a / "config.json").read_text()
    )
    assert [p.name for p in parent.iterdir()] == ["merged"]  # no staging folder left


def test_more_than_two_checkpoints_merge_pairwise_with_cumulative_weights(checkpoints, tmp_path):
    weights = [2.0, 1.0, 1.0]
    out = slerp_merge(checkpoints, weights, out=tmp_path / "m3")
    tensors = [load(c) for c in checkpoints]
    merged = load(out)
    for key in ("layers.0.self_attn.q_proj.weight", "embed_tokens.weight", "norm.weight"):
        # m2 = slerp(c0, c1, 1/3); m3 = slerp(m2, c2, 1/4): weights 2:1:1.
        m2 = reference_slerp(tensors[0][key].numpy(), tensors[1][key].numpy(), 1 / 3)
        want = reference_slerp(m2, tensors[2][key].numpy(), 1 / 4)
        np.testing.assert_allclose(merged[key].numpy(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_the_merged_folder_loads_in_qwen3_embedder_and_transformers_alike(checkpoints, merged_two):
    from transformers import AutoModel

    from qwen3_rag.core import Qwen3Embedder

    out = merged_two[1]
    emb = Qwen3Embedder(out, device="cpu")
    texts = ["The capital of China is Beijing.", "def add(a, b): return a + b"]
    got = np.asarray(emb.embed_documents(texts))
    model = AutoModel.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        rows = [
            model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
            for ids in emb.encode_ids(texts)
        ]
    want = torch.nn.functional.normalize(torch.stack(rows), dim=-1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # And it is a new model: neither input gives these vectors.
    first = np.asarray(Qwen3Embedder(checkpoints[0], device="cpu").embed_documents(texts))
    assert np.abs(first - got).max() > 1e-3


def test_mismatched_checkpoints_raise_naming_the_tensor_and_checkpoint(checkpoints, tmp_path):
    a = checkpoints[0]
    other = build_checkpoint(
        tmp_path / "wide",
        "embedding",
        shape=dict(TINY, intermediate_size=96),
    )
    with pytest.raises(
        MergeError,
        match=r"tensor 'layers\.0\.mlp\.down_proj\.weight' has shape \[64, 96\] in checkpoint '.*wide'",
    ):
        slerp_merge([a, other], out=tmp_path / "x")

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    tensors = load(a)
    tensors["extra.weight"] = tensors.pop("norm.weight")
    save_file(tensors, str(renamed / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MergeError, match=r"checkpoint '.*renamed' has no tensor 'norm\.weight'"):
        slerp_merge([a, renamed], out=tmp_path / "x")
    with pytest.raises(MergeError, match=r"checkpoint '.*c0' has no tensor 'extra\.weight'"):
        slerp_merge([renamed, a], out=tmp_path / "x")

    half = tmp_path / "half"
    half.mkdir()
    tensors = load(a)
    tensors["norm.weight"] = tensors["norm.weight"].bfloat16()
    save_file(tensors, str(half / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        MergeError, match=r"tensor 'norm\.weight' is BF16 in checkpoint '.*half' but F32"
    ):
        slerp_merge([a, half], out=tmp_path / "x")

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"w": torch.zeros(2)}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(MergeError, match="LoRA adapter only"):
        slerp_merge([a, adapter], out=tmp_path / "x")
    with pytest.raises(MergeError, match="at least two checkpoints, got 1"):
        slerp_merge([a], out=tmp_path / "x")
    with pytest.raises(ValueError, match=r"weights\[1\] must be a finite number >= 0"):
        slerp_merge([a, a], [1.0, -1.0], out=tmp_path / "x")
    with pytest.raises(ValueError, match="weights are all 0"):
        slerp_merge([a, a], [0, 0], out=tmp_path / "x")
    with pytest.raises(ValueError, match="got 3 weights for 2 checkpoints"):
        slerp_merge([a, a], [1, 1, 1], out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        slerp_merge([a, a], out=half)


def test_merge_command(checkpoints, tmp_path, capsys):
    target = tmp_path / "cli"
    code = main(
        [
            "merge",
            str(checkpoints[0]),
            str(checkpoints[1]),
            "--output",
            str(target),
            "--weights",
            "1",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    said = capsys.readouterr().out.strip()  # what was written, not a bare path
    assert said.startswith(
        f"merged 2 checkpoints (slerp, weights 0.5, 0.5) into the model folder {str(target)!r}: "
    )
    assert f"{len(load(target))} tensors in " in said
    assert set(load(target)) == set(load(checkpoints[0]))
    code = main(
        ["merge", str(checkpoints[0]), str(tmp_path / "missing"), "--output", str(tmp_path / "y")]
    )
    assert code == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_zero_weights_and_t_give_the_endpoints_exactly(checkpoints, tmp_path, capsys):
    """t = 0 / 1 (``--t``, or a weight of 0) is a checkpoint, bit for bit; t = 0.5 is neither."""
    first, second = load(checkpoints[0]), load(checkpoints[1])
    for t, want in ((0.0, first), (1.0, second)):
        target = tmp_path / f"t{t}"
        argv = ["merge", *map(str, checkpoints[:2]), "--output", str(target), "--t", str(t), "-q"]
        assert main(argv) == 0
        got = load(target)
        assert all(torch.equal(got[n], want[n]) for n in want)
    mixed = load(slerp_merge(checkpoints, [0.0, 1.0, 1.0], out=tmp_path / "w"))
    middle = load(slerp_merge(checkpoints[1:], out=tmp_path / "m"))
    assert all(torch.equal(mixed[n], middle[n]) for n in middle)  # the 0 drops the first
    argv = ["merge", *map(str, checkpoints), "--output", str(tmp_path / "x"), "--t", "0.5"]
    assert main(argv) == 2 and "two checkpoints" in capsys.readouterr().err
