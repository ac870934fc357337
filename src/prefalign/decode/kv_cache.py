"""A KV cache whose full-attention layers write new keys and values in place instead of concatenating.

transformers' ``DynamicLayer`` grows by ``torch.cat`` on every decoded token: each step copies the whole cache of
every layer (B·H·t·D floats, twice), so a 64-token rollout of 32 rows after a 256-token prompt moves ~16 GB on the
W1 model and the copies were 40% of sampling time on a CPU. ``ReservedLayer`` allocates room for the whole
generation once (``reserve`` positions, known before the prefill: prompt width + max_new_tokens) and returns views
of the filled part, so each step writes only its own B·H·1·D values. The keys and values the attention reads are
the same numbers in the same order, so logits are unchanged (tested against ``DynamicCache`` and ``generate``).

Sliding-window and other special layers (their own update rules) are left as transformers builds them.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` with preallocated room: ``update`` writes into a buffer of ``reserve`` positions (doubling
    if a caller goes past it) and ``keys`` / ``values`` are views of its first ``t`` positions."""

    def __init__(self, reserve: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.reserve = int(reserve)
        self._k: torch.Tensor | None = None  # [B, H, capacity, D] buffers
        self._v: torch.Tensor | None = None
        self._len = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None
        self._len = 0

    def _room(self, key_states: torch.Tensor, value_states: torch.Tensor, need: int) -> None:
        capacity = 0 if self._k is None else self._k.shape[-2]
        if need <= capacity:
            return
        capacity = max(need, self.reserve, 2 * capacity)
        k = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))  # [B, H, capacity, D]
        v = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if self._len:
            k[..., : self._len, :] = self._k[..., : self._len, :]
            v[..., : self._len, :] = self._v[..., : self._len, :]
        self._k, self._v = k, v

    def _expose(self) -> None:
        self.keys = self._k[..., : self._len, :]  # [B, H, t, D] views, no copy
        self.values = self._v[..., : self._len, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, need = self._len, self._len + key_states.shape[-2]
        self._room(key_states, value_states, need)
        self._k[..., start:need, :] = key_states
        self._v[..., start:need, :] = value_states
        self._len = need
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def _remake(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Rebuild the buffers around new [B', H, t, D] contents (batch edits), keeping the reserved room."""
        self._k = self._v = None
        self._len = 0
        self.update(keys, values)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._len:
            self._remake(self.keys.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._len:
            self._remake(self.keys[indices, ...], self.values[indices, ...])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self._len:
            idx = beam_idx.to(self.keys.device)
            self._remake(self.keys.index_select(0, idx), self.values.index_select(0, idx))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove and self._len:
            self._len = max(self._len + tokens_to_remove, 0)
            self._expose()

    def reset(self) -> None:
        self._k = self._v = None
        self._len = 0
        super().reset()


def reserve_layers(cache, reserve: int):
    """Swap every plain ``DynamicLayer`` of an empty ``DynamicCache`` for a ``ReservedLayer(reserve)`` (layers added
    lazily later get one too); returns the cache."""
    layers = getattr(cache, "layers", None)
    if layers is None:  # an older transformers without cache layers: leave it as it is
        return cache
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            layers[i] = ReservedLayer(reserve)
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layer_class_to_replicate = lambda: ReservedLayer(reserve)
    return cache
