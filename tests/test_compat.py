"""core/compat.py: each transformers touch point keeps its contract, and none of them warns.

Every test here runs with warnings turned into errors, so a deprecation that a new transformers
release adds at one of the touch points fails the suite (the FutureWarning for
``past_key_values`` in transformers 5.24 did, before the cache argument was picked from the
signature).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3Model

from qwen3_rag import Qwen3Embedder, Qwen3Reranker
from qwen3_rag.core import compat
from qwen3_rag.core.loading import from_pretrained_kwargs

from conftest import CORPUS


@pytest.fixture(autouse=True)
def _warnings_are_errors() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


DOCS = [*CORPUS[:3], *CORPUS[4:9]]


def _embedding_model(path: str, attn: str = "sdpa") -> Any:
    return AutoModel.from_pretrained(path, **from_pretrained_kwargs(torch.float32, attn)).eval()


# -- end to end: the code paths that reach the touch points, on this transformers -----------


@pytest.mark.parametrize("packed", [True, False])
def test_shared_prefix_rerank_runs_without_a_warning(reranker_path, packed):
    shared = Qwen3Reranker(reranker_path, max_length=128, share_prefix=True)
    whole = Qwen3Reranker(reranker_path, max_length=128, share_prefix=False)
    shared.packed = whole.packed = packed  # False: the padded (GPU) path, on the CPU
    caches: list[object] = []

    def spy(_module, _args, kwargs):
        caches.append(kwargs.get(compat.cache_kwarg_name()))

    handle = shared._loaded.model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        got = shared.score("What is the capital of China?", DOCS)
    finally:
        handle.remove()
    # The prefix ran once into a cache that every batch then continued.
    assert len(caches) >= 2 and all(c is caches[0] and c is not None for c in caches)
    want = whole.score("What is the capital of China?", DOCS)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("packed", [True, False])
def test_embedding_runs_without_a_warning(embed_eos_path, packed):
    emb = Qwen3Embedder(embed_eos_path, max_length=64)
    emb.packed = packed
    vectors = emb.embed_documents(DOCS)
    assert vectors.shape == (len(DOCS), emb.hidden_size)
    one_by_one = np.concatenate([emb.embed_documents([d]) for d in DOCS])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)


# -- the contract of each compat function ---------------------------------------------------


def test_cache_kwarg_is_the_installed_signatures_current_name():
    params = inspect.signature(Qwen3Model.forward).parameters
    name = compat.cache_kwarg_name()
    assert name in params
    # Where both names are accepted, the old one is the deprecated alias: never pick it.
    assert name == ("cache" if "cache" in params else "past_key_values")
    assert compat.cache_forward_kwargs(None) == {"use_cache": False}
    marker = object()
    assert compat.cache_forward_kwargs(marker) == {name: marker, "use_cache": True}


def test_frozen_prefix_cache_continues_exactly_and_stores_nothing(embed_eos_path):
    model = _embedding_model(embed_eos_path)
    torch.manual_seed(0)
    prefix = torch.randint(0, 151643, (1, 7))
    tails = torch.randint(0, 151643, (3, 5))  # three rows continue the same prefix
    cache = compat.new_prefix_cache()
    with torch.inference_mode():
        model(input_ids=prefix, **compat.cache_forward_kwargs(cache))
        assert cache.get_seq_length() == 7
        compat.freeze_prefix_cache(cache)
        stored = [layer.keys.clone() for layer in cache.layers]
        for _ in range(2):  # one frozen cache serves any number of batches
            positions = torch.arange(7, 12).expand(3, -1)
            got = model(
                input_ids=tails, position_ids=positions, **compat.cache_forward_kwargs(cache)
            ).last_hidden_state
            assert cache.get_seq_length() == 7
            for layer, before in zip(cache.layers, stored, strict=True):
                assert torch.equal(layer.keys, before)
        full = torch.cat([prefix.expand(3, -1), tails], dim=1)
        want = model(input_ids=full, **compat.cache_forward_kwargs(None)).last_hidden_state
    torch.testing.assert_close(got, want[:, 7:], atol=1e-5, rtol=1e-5)


class _Heads(torch.nn.Module):
    """What transformers' SDPA reads from an attention module: the GQA group count."""

    num_key_value_groups = 2
    is_causal = True


def test_sdpa_attention_is_grouped_causal_attention_in_transformers_layout():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    out, weights = compat.sdpa_attention(_Heads(), q, k, v, None, scaling=0.25, is_causal=True)
    assert weights is None and out.shape == (2, 5, 4, 8)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), is_causal=True, scale=0.25
    )
    torch.testing.assert_close(out, want.transpose(1, 2))
    # A boolean mask is True where a key is visible.
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    masked, _ = compat.sdpa_attention(_Heads(), q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(masked, out)


def test_registered_attention_gets_every_layer_maskless_with_its_kwarg(embed_eos_path):
    seen: list[tuple[object, object]] = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((attention_mask, kwargs.pop("qwen3_rag_test_token", None)))
        return compat.sdpa_attention(module, query, key, value, attention_mask, **kwargs)

    compat.register_attention("qwen3_rag_test_spy", spy)
    spied = _embedding_model(embed_eos_path, "qwen3_rag_test_spy")
    plain = _embedding_model(embed_eos_path)
    ids = torch.tensor([[9707, 1879, 11, 1246, 525, 498]])
    token = object()
    with torch.inference_mode():
        got = spied(
            input_ids=ids,
            use_cache=False,
            **compat.maskless_forward_kwargs({"qwen3_rag_test_token": token}),
        ).last_hidden_state
        want = plain(input_ids=ids, use_cache=False).last_hidden_state
    assert seen == [(None, token)] * spied.config.num_hidden_layers
    torch.testing.assert_close(got, want)  # no mask, one row: plain causal attention


def test_causal_lm_backbone_is_the_decoder_sharing_the_weights(reranker_path):
    causal = AutoModelForCausalLM.from_pretrained(
        reranker_path, **from_pretrained_kwargs(torch.float32, "sdpa")
    )
    backbone = compat.causal_lm_backbone(causal)
    assert isinstance(backbone, Qwen3Model)
    assert backbone.get_input_embeddings().weight is causal.get_input_embeddings().weight
    ids = torch.tensor([[9707, 1879]])
    with torch.inference_mode():
        hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state
        logits = causal(input_ids=ids, use_cache=False).logits
        torch.testing.assert_close(causal.get_output_embeddings()(hidden), logits)
