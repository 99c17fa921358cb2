"""CUDA paths: bf16/fp16 numerics, attention kernels, prefix reuse. Run on a GPU machine.

CI has no GPU; these tests are skipped there and run wherever ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen3_rag import Qwen3Embedder, Qwen3Reranker

from conftest import CORPUS
from reference import ReferenceEmbedder, ReferenceReranker

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DOCS = [*CORPUS, "Beijing is the capital of China.", "x" * 50]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_auto_dtype_is_bf16_on_cuda(embed_eos_path):
    emb = Qwen3Embedder(embed_eos_path, max_length=128)
    assert emb.device.type == "cuda" and emb.dtype == torch.bfloat16
    assert emb.batch_tokens == 16384


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cuda_embeddings_match_the_fp32_reference(embed_eos_path, dtype, attn):
    ref = ReferenceEmbedder(embed_eos_path, 128)
    want = np.stack([ref.embed(t).numpy() for t in DOCS])
    emb = Qwen3Embedder(
        embed_eos_path, device="cuda", dtype=dtype, attn_implementation=attn, max_length=128
    )
    got = emb.embed_documents(DOCS)  # a ragged, left-padded batch
    assert np.isfinite(got).all()
    assert _cos(got, want).min() >= (0.99999 if dtype == "float32" else 0.999)
    one_by_one = np.concatenate([emb.embed_documents([t]) for t in DOCS])
    assert _cos(got, one_by_one).min() >= (0.99999 if dtype == "float32" else 0.999)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_cuda_scores_match_the_fp32_reference(reranker_path, dtype, share_prefix):
    ref = ReferenceReranker(reranker_path, 128)
    want = np.array([ref.score("capital of China?", d) for d in DOCS])
    rr = Qwen3Reranker(
        reranker_path, device="cuda", dtype=dtype, share_prefix=share_prefix, max_length=128
    )
    got = np.array(rr.score("capital of China?", DOCS))
    tol = 1e-5 if dtype == "float32" else 1e-2
    assert np.abs(got - want).max() <= tol
    assert ((got >= 0) & (got <= 1)).all()


def test_flash_attention_2_when_installed(embed_eos_path):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises((ImportError, ValueError)):
            Qwen3Embedder(embed_eos_path, device="cuda", attn_implementation="flash_attention_2")
        return
    sdpa = Qwen3Embedder(embed_eos_path, device="cuda", attn_implementation="sdpa", max_length=128)
    fa2 = Qwen3Embedder(
        embed_eos_path, device="cuda", attn_implementation="flash_attention_2", max_length=128
    )
    assert _cos(sdpa.embed_documents(DOCS), fa2.embed_documents(DOCS)).min() >= 0.999


def test_compiled_model_matches_eager(embed_eos_path, reranker_path):
    eager = Qwen3Embedder(embed_eos_path, device="cuda", max_length=128)
    compiled = Qwen3Embedder(embed_eos_path, device="cuda", max_length=128, compile=True)
    assert compiled._loaded is not eager._loaded
    for batch in (DOCS, DOCS[:3], DOCS[5:]):  # several shapes: one dynamic compilation
        assert _cos(eager.embed_documents(batch), compiled.embed_documents(batch)).min() >= 0.999
    rr = Qwen3Reranker(reranker_path, device="cuda", max_length=128)
    rc = Qwen3Reranker(reranker_path, device="cuda", max_length=128, compile=True)
    diff = np.abs(np.array(rr.score("q", DOCS)) - np.array(rc.score("q", DOCS)))
    assert diff.max() <= 1e-2


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cuda_paths_raise_no_transformers_warning(embed_eos_path, reranker_path, attn):
    # The CUDA paths are padded (no packing) and reach core/compat.py's cache argument; a
    # deprecation at any transformers touch point must show up here as an error.
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", module=r"transformers(\.|$)")
        emb = Qwen3Embedder(embed_eos_path, device="cuda", attn_implementation=attn)
        assert not emb.packed
        emb.embed_documents(DOCS)
        rr = Qwen3Reranker(reranker_path, device="cuda", attn_implementation=attn, max_length=128)
        scores = rr.score("capital of China?", DOCS)
    ref = ReferenceReranker(reranker_path, 128)
    want = np.array([ref.score("capital of China?", d) for d in DOCS])
    assert np.abs(np.array(scores) - want).max() <= 1e-2
