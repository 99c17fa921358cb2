"""bfloat16 on the CPU: detection of native support, the one warning, and the same recipe.

``dtype="bfloat16"`` keeps packing, prefix sharing and the float32 yes/no head; ``"auto"`` stays
float32 on the CPU. Speed is measured by ``benchmarks/bench.py``, never here.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM

from qwen3_rag import Qwen3Embedder, Qwen3Reranker
from qwen3_rag.core.loading import cpu_features, cpu_native_bf16

from conftest import CORPUS

MAX_LEN = 128
QUERY = "What is the capital of China?"
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _proc_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("/proc/cpuinfo has no flags line")


# -- detection ------------------------------------------------------------------------------
@pytest.mark.skipif(
    not (X86 and Path("/proc/cpuinfo").exists()), reason="reads Linux x86 /proc/cpuinfo"
)
def test_cpu_features_agree_with_the_kernel():
    flags = _proc_flags()
    features = cpu_features()
    assert features["avx2"] == ("avx2" in flags)
    assert features["avx512_bf16"] == ("avx512_bf16" in flags)
    assert features["amx_tile"] == ("amx_tile" in flags)
    assert features["avx512_vnni"] == ("avx512_vnni" in flags)
    assert cpu_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def _bf16_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "qwen3_rag.core.loading" and "dtype='bfloat16'" in r.getMessage()
    ]


def test_bfloat16_on_a_cpu_without_native_support_warns_once(embed_eos_path, caplog):
    with caplog.at_level(logging.WARNING):
        emb = Qwen3Embedder(embed_eos_path, max_length=MAX_LEN, dtype="bfloat16")
        emb.embed_documents(CORPUS[:3])
    assert emb.dtype == torch.bfloat16
    warnings = _bf16_warnings(caplog)
    if cpu_native_bf16():
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert "use dtype='float32'" in warnings[0]
        found = [name for name, on in cpu_features().items() if on]
        assert all(name in warnings[0] for name in found)  # names what the CPU does have
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for dtype in ("auto", "float32"):
            assert Qwen3Embedder(embed_eos_path, dtype=dtype).dtype == torch.float32
    assert _bf16_warnings(caplog) == []


# -- the same recipe in bfloat16 -------------------------------------------------------------
@torch.no_grad()
def _reference_vectors(path: str, ids: list[list[int]]) -> np.ndarray:
    """One input at a time: bfloat16 backbone, last token, normalised in float32."""
    model = AutoModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    rows = [model(input_ids=torch.tensor([row])).last_hidden_state[0, -1] for row in ids]
    return F.normalize(torch.stack(rows).float(), dim=1).numpy()


@torch.no_grad()
def _reference_scores(path: str, ids: list[list[int]]) -> tuple[list[float], list[float]]:
    """P(yes) from bfloat16 hidden states: with a float32 yes-no row, and as the card does it.

    The card takes the LM head's bfloat16 logits for "yes" (9693) and "no" (2152).
    """
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    weight = model.get_output_embeddings().weight
    row = weight[9693].float() - weight[2152].float()
    fp32_head, card = [], []
    for seq in ids:
        hidden = model.model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
        fp32_head.append(float(torch.sigmoid(hidden.float() @ row)))
        logits = model.lm_head(hidden)
        pair = torch.stack([logits[2152], logits[9693]]).float()
        card.append(float(torch.softmax(pair, dim=0)[1]))
    return fp32_head, card


@pytest.mark.slow
def test_bfloat16_embeddings_are_packed_and_match_the_recipe(embed_eos_path):
    emb = Qwen3Embedder(embed_eos_path, max_length=MAX_LEN, dtype="bfloat16")
    assert emb.packed  # packing is kept on the CPU in bfloat16
    got = emb.embed_documents(CORPUS)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    want = _reference_vectors(embed_eos_path, emb.encode_ids(CORPUS))
    assert float(np.min(np.sum(got * want, axis=1))) >= 0.9995
    exact = Qwen3Embedder(embed_eos_path, max_length=MAX_LEN).embed_documents(CORPUS)
    cosines = np.sum(got * exact, axis=1)
    assert 0.999 <= float(np.min(cosines)) < 0.999999  # close to float32, and really bfloat16


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.grid
def test_bfloat16_scores_come_from_a_float32_head(reranker_path, share_prefix):
    rr = Qwen3Reranker(
        reranker_path, max_length=MAX_LEN, dtype="bfloat16", share_prefix=share_prefix
    )
    assert rr.packed and rr._loaded.extras["head"].dtype == torch.float32
    got = rr.score(QUERY, CORPUS)
    fp32_head, card = _reference_scores(reranker_path, rr.encode_ids(QUERY, CORPUS))
    assert max(abs(g - w) for g, w in zip(got, fp32_head, strict=True)) <= 1e-6
    # Rounding the two logits to bfloat16 (the card's way) differs: the check has teeth.
    assert max(abs(g - c) for g, c in zip(got, card, strict=True)) > 1e-4
    exact = Qwen3Reranker(reranker_path, max_length=MAX_LEN).score(QUERY, CORPUS)
    assert max(abs(g - e) for g, e in zip(got, exact, strict=True)) <= 0.02
