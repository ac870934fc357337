"""Decoding G continuations of a prompt against one copy of the prompt's keys and values.

A rollout group is B prompts × G continuations. ``DynamicCache.batch_repeat_interleave`` after the prefill copies
every prompt's KV G times, and each decoding step then reads all B·G copies: for a 256-token prompt and 64 new
tokens the attention reads G·(256 + t) positions per prompt where 256 + G·t hold distinct numbers. Decoding on a
CPU is memory-bound, so attention time is the bytes read. Here:

    prefill (B rows) ──▶ GroupedLayer keeps prefix K, V [B, Hkv, L, D] once
    decode  (B·G rows) ──▶ new K, V written in place into [B·G, Hkv, T, D]; attention =
        softmax([q·Kₚᵀ ‖ q·K_cᵀ]·scale + mask) · [Vₚ ; V_c], the prefix product batched over the G·rep queries that
        share it (one read of Kₚ per prompt)

It is the same attention (one softmax over the concatenated scores; tested against ``DynamicCache`` decoding).
``config._attn_implementation`` is switched to ``prefalign_grouped`` only while a grouped stream runs a decoding
step (``active``), and back after; the prefill runs the model's own attention and mask, and any call this code does not recognise (a sliding window,
soft-capping, sinks) go to the model's own attention function on the full keys and values (exact, just slower).
Models qualify (``supported``) when every attention layer is a plain full-attention ``DynamicLayer`` read by sdpa or
eager attention; others decode through ``decode.kv_cache`` unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from prefalign.decode.kv_cache import ReservedLayer

NAME = "prefalign_grouped"
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("prefalign_grouped", default=None)  # (cache, original)
_OWN = {"sdpa": sdpa_attention_forward, "eager": eager_attention_forward}
_UNUSUAL = ("sliding_window", "softcap", "s_aux", "sinks", "position_bias")  # kwargs the grouped path does not do


class GroupedLayer(DynamicLayer):
    """Prefix keys and values once per prompt, continuation keys and values per row (a ``ReservedLayer``)."""

    def __init__(self, reserve: int = 0):
        super().__init__()
        self.group = 1  # G: rows per prompt after batch_repeat_interleave
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None  # [B, Hkv, L, D] each
        self.tail = ReservedLayer(reserve)  # [B·G, Hkv, t, D] continuations, written in place
        self.last_was_prefix = False

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.prefix is None:  # the prefill: attended by the model's own function; kept contiguous for bmm
            self.prefix = (key_states.contiguous(), value_states.contiguous())
            self.keys, self.values = self.prefix
            self.last_was_prefix = True
            return key_states, value_states
        self.last_was_prefix = False
        return self.tail.update(key_states, value_states)

    def continuation(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tail.keys, self.tail.values

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[B·G, Hkv, L + t, D] keys and values as a ``DynamicLayer`` would hold them (for the fallback path)."""
        kp, vp = (x.repeat_interleave(self.group, dim=0) for x in self.prefix)
        if not self.tail.get_seq_length():
            return kp, vp
        kc, vc = self.continuation()
        return torch.cat([kp, kc], dim=-2), torch.cat([vp, vc], dim=-2)

    def get_seq_length(self) -> int:
        return 0 if self.prefix is None else self.prefix[0].shape[-2] + self.tail.get_seq_length()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.tail.get_seq_length():
            raise RuntimeError("a grouped KV cache expands only between the prefill and the first decoding step")
        self.group *= repeats

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a grouped KV cache does not drop rows")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("a grouped KV cache does not reorder rows (no beam search)")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a grouped KV cache is not croppable")

    def reset(self) -> None:
        self.prefix, self.group = None, 1
        self.tail.reset()
        self.keys = self.values = None
        self.is_initialized = False


def attention_configs(model) -> list:
    """The distinct config objects the attention modules read ``_attn_implementation`` from."""
    seen: dict[int, object] = {}
    for m in model.modules():
        if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups") and hasattr(m, "config"):
            seen.setdefault(id(m.config), m.config)
    return list(seen.values())


def supported(model, cache) -> bool:
    """Whether grouped decoding is exact for ``model`` with this (empty) ``DynamicCache``."""
    layers = getattr(cache, "layers", None)
    configs = attention_configs(model)
    if not layers or not configs or any(type(layer) is not DynamicLayer for layer in layers):
        return False
    for c in configs:
        if getattr(c, "_attn_implementation", None) not in _OWN:
            return False
        if getattr(c, "attn_logit_softcapping", None) or getattr(c, "sliding_window", None) is not None:
            return False
    return len(layers) == len([m for m in model.modules() if hasattr(m, "num_key_value_groups")])


def grouped_cache(cache, reserve: int):
    """Swap the layers of an empty, ``supported`` ``DynamicCache`` for ``GroupedLayer``s; returns it."""
    cache.layers[:] = [GroupedLayer(reserve) for _ in cache.layers]
    return cache


@contextlib.contextmanager
def active(configs: list, cache):
    """Within: the attention modules reading ``configs`` (``attention_configs(model)``, found once per stream, not
    per step) call ``grouped_attention`` with this cache."""
    originals = [c._attn_implementation_internal for c in configs]
    token = _ACTIVE.set((cache, originals[0]))
    for c in configs:
        c._attn_implementation_internal = NAME
    try:
        yield
    finally:
        for c, o in zip(configs, originals):
            c._attn_implementation_internal = o
        _ACTIVE.reset(token)


def grouped_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """An ``AttentionInterface`` function: [B·G, Hq, 1, D] queries against the layer's shared prefix and own rows."""
    cache, original = _ACTIVE.get() or (None, "sdpa")
    own = _OWN.get(original, sdpa_attention_forward)
    layer = cache.layers[module.layer_idx] if cache is not None else None
    if not isinstance(layer, GroupedLayer) or layer.last_was_prefix:
        return own(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[2] != 1 or dropout or any(kwargs.get(k) is not None for k in _UNUSUAL):
        full_k, full_v = layer.full()
        if original == "eager" and attention_mask is not None and attention_mask.dtype == torch.bool:
            # the mask came from sdpa_mask (registered for this name): eager adds masks
            attention_mask = torch.zeros_like(attention_mask, dtype=query.dtype).masked_fill(
                ~attention_mask, torch.finfo(query.dtype).min)
        return own(module, query, full_k, full_v, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    kp, vp = layer.prefix  # [B, Hkv, L, D], contiguous
    kc, vc = layer.continuation()  # [B·G, Hkv, t, D] views of contiguous buffers
    B, Hkv, L, D = kp.shape
    G, t, Hq = layer.group, kc.shape[-2], query.shape[1]
    rep = Hq // Hkv
    scale = scaling if scaling is not None else D**-0.5
    # 3D views for bmm, so the cached keys and values are read in place, never copied
    kp, vp = kp.view(B * Hkv, L, D), vp.view(B * Hkv, L, D)
    kc, vc = kc.flatten(0, 1), vc.flatten(0, 1)  # [B·G·Hkv, t, D]
    q = query.reshape(B, G, Hkv, rep, D)  # head h = kv head h // rep, as repeat_kv expands them
    qp = q.permute(0, 2, 1, 3, 4).reshape(B * Hkv, G * rep, D)  # every query that reads prompt b's prefix
    sp = torch.bmm(qp, kp.transpose(1, 2)).view(B, Hkv, G, rep, L).permute(0, 2, 1, 3, 4)  # [B, G, Hkv, rep, L]
    sc = torch.bmm(q.reshape(B * G * Hkv, rep, D), kc.transpose(1, 2)).view(B, G, Hkv, rep, t)
    scores = torch.cat([sp, sc], dim=-1).float() * scale  # [B, G, Hkv, rep, L + t]
    if attention_mask is not None:  # [B·G, 1, 1, L + t]: bool (True = attend) or additive
        m = attention_mask[:, :, -1:, -(L + t):].reshape(B, G, 1, 1, L + t)
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    w = torch.softmax(scores, dim=-1).to(query.dtype)
    wp = w[..., :L].permute(0, 2, 1, 3, 4).reshape(B * Hkv, G * rep, L)
    out = torch.bmm(wp, vp).view(B, Hkv, G, rep, D).permute(0, 2, 1, 3, 4)  # [B, G, Hkv, rep, D]
    out = out + torch.bmm(w[..., L:].reshape(B * G * Hkv, rep, t), vc).view(B, G, Hkv, rep, D)
    return out.reshape(B * G, 1, Hq, D), None  # [B·G, q = 1, Hq, D], the layout attention modules expect


ALL_ATTENTION_FUNCTIONS.register(NAME, grouped_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
