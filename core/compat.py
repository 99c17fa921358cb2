"""The one door to transformers internals: one small function per touch point.

The rest of the core uses only transformers' public loading API (``AutoConfig``,
``AutoModel*.from_pretrained``) and the model's documented output (``last_hidden_state``).
Everything else it relies on -- how a KV cache is passed and extended, the SDPA kernel, the
attention and mask registries, precomputed mask mappings, keyword arguments travelling to the
attention function -- is reached through this module, so a transformers release that moves one
of them is absorbed here, once.

Verified on transformers 4.56.0 (the floor, ``make test-floor``) and 5.24.0 (the newest), where
none of these functions triggers a warning. Each function's docstring says how the versions
differ at its touch point.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

#: ``Qwen3Model.forward``'s cache argument names, newest first.
_CACHE_KWARGS = ("cache", "past_key_values")


@functools.cache
def cache_kwarg_name() -> str:
    """Name of the argument that hands a KV cache to ``Qwen3Model.forward``.

    transformers 4.56.0 calls it ``past_key_values``; 5.24.0 calls it ``cache``, where
    ``past_key_values`` still works but emits a ``FutureWarning`` on every call (its removal is
    announced for 5.40). The installed release's signature decides, once per process, so the
    releases in between need no version table.

    Raises:
        ImportError: If ``Qwen3Model.forward`` takes neither name (an unsupported release).
    """
    from transformers.models.qwen3.modeling_qwen3 import Qwen3Model

    params = inspect.signature(Qwen3Model.forward).parameters
    for name in _CACHE_KWARGS:
        if name in params:
            return name
    raise ImportError(
        "this transformers release passes the KV cache to Qwen3Model.forward under none of "
        f"{_CACHE_KWARGS}; qwen3-rag does not support it yet"
    )


def cache_forward_kwargs(cache: Any) -> dict[str, Any]:
    """Keyword arguments for ``model(...)`` that continue ``cache``, or use none when it is None.

    The cache argument's name differs between releases (see :func:`cache_kwarg_name`).

    Example:
        >>> cache_forward_kwargs(None)
        {'use_cache': False}
    """
    if cache is None:
        return {"use_cache": False}
    return {cache_kwarg_name(): cache, "use_cache": True}


@functools.cache
def _shared_prefix_cache_class() -> type:
    """A ``DynamicCache`` that stores a prefix once, then stays read-only once frozen.

    ``DynamicCache()`` takes no argument and keeps one layer object per decoder layer in
    ``layers``, each holding ``keys``/``values`` of shape ``[batch, kv_heads, tokens, head_dim]``,
    in 4.56 through 5.24. ``update`` receives the layer index third; what follows (4.56:
    a positional ``cache_kwargs`` dict, 5.2x: ``kwargs=``) is passed through untouched.
    """
    from transformers import DynamicCache

    class SharedPrefixCache(DynamicCache):
        frozen = False

        def update(
            self,
            key_states: torch.Tensor,
            value_states: torch.Tensor,
            layer_idx: int,
            *args: Any,
            **kwargs: Any,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.frozen:
                keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
                return keys, values
            layer: Any = self.layers[layer_idx]  # a DynamicLayer: ``keys``/``values`` are set
            rows = key_states.shape[0]
            return (
                torch.cat([layer.keys.expand(rows, -1, -1, -1), key_states], dim=-2),
                torch.cat([layer.values.expand(rows, -1, -1, -1), value_states], dim=-2),
            )

    return SharedPrefixCache


def new_prefix_cache() -> Any:
    """An empty KV cache to run a shared prefix into (one row), then :func:`freeze_prefix_cache`.

    It is transformers' ``DynamicCache`` (see :func:`_shared_prefix_cache_class` for the parts
    of its layout this relies on), so the model fills it like any other cache.
    """
    return _shared_prefix_cache_class()()


def freeze_prefix_cache(cache: Any) -> None:
    """Make a filled prefix cache read-only, so one prefix serves any number of batches.

    Frozen, each layer's ``update`` returns the prefix (broadcast to the batch's rows) joined
    with the batch's own keys/values and stores nothing: the batch's keys/values are freed as
    soon as the layer is done instead of accumulating for all layers (hundreds of MB for a
    32-document batch), and the cache's length stays the prefix's.
    """
    cache.frozen = True


def sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The SDPA attention function of transformers (what ``attn_implementation="sdpa"`` runs).

    It lives in ``transformers.integrations.sdpa_attention`` in 4.56 through 5.24 and takes
    ``[batch, heads, tokens, head_dim]`` tensors, repeats the key/value heads for grouped-query
    attention (reading ``module.num_key_value_groups``) and returns
    ``([batch, tokens, heads, head_dim], None)``. A boolean mask is True where a key is visible.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return out, None


def register_attention(name: str, function: Callable[..., tuple[torch.Tensor, Any]]) -> None:
    """Make ``function`` loadable as ``attn_implementation=name``, with SDPA's mask builder.

    ``AttentionInterface`` (exported by ``transformers``) and ``AttentionMaskInterface`` /
    ``sdpa_mask`` (``transformers.masking_utils``) exist with this ``register`` API in 4.56
    through 5.24. A model loaded under ``name`` builds masks as an SDPA model does and calls
    ``function(module, query, key, value, attention_mask, **kwargs)`` in every layer.
    Registering the same name again replaces the entry.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, sdpa_mask)


def maskless_forward_kwargs(attention_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments for ``model(...)`` that build no attention mask and reach the attention function.

    In 4.56 through 5.24 ``Qwen3Model.forward`` takes a dict ``attention_mask`` as a mask per
    layer type that is already built; ``{"full_attention": None}`` therefore builds none (a
    ``tokens x tokens`` mask for a packed row would be large and is not needed). Qwen3
    checkpoints use full attention in every layer (``use_sliding_window`` is false in the
    official configs). Any other keyword given to the model travels unchanged through the
    decoder layers to the attention function (``**kwargs``, ``TransformersKwargs``).

    Example:
        >>> maskless_forward_kwargs({"my_kwarg": 1})
        {'attention_mask': {'full_attention': None}, 'my_kwarg': 1}
    """
    return {"attention_mask": {"full_attention": None}, **attention_kwargs}


def causal_lm_backbone(causal_lm: torch.nn.Module) -> torch.nn.Module:
    """The decoder (``Qwen3Model``) inside a ``Qwen3ForCausalLM``, without its LM head.

    ``base_model`` (the ``model`` attribute) works in 4.56 through 5.24;
    ``get_decoder()`` returns None in 4.56.0, so it is not used.
    """
    backbone = causal_lm.base_model
    if not isinstance(backbone, torch.nn.Module):
        raise TypeError(f"{type(causal_lm).__name__}.base_model is not a module")
    return backbone
