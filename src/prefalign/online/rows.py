"""How many of a group's G completions share one copy of the prompt in the ``shared_prefix`` layout.

Putting the prompt once and all G completions after it in one row (``collate_groups``) runs the prompt once per
group, but the row is L + G·T long and attention over it is dense under a 4D mask: a cost in (L + G·T)² where G
separate rows cost G·(L + T)². With long prompts and short completions sharing wins by far (GRPO on 256-token
prompts, 64-token completions: the positions drop from 2,560 to 768 per group); with short prompts and long
completions (32 and 256) the quadratic term wins and one completion per row is cheaper. Per micro-batch we pick the
k that minimises the estimated FLOPs of a forward pass,

    cost(k) = ⌈G / k⌉ · (n_k + ρ · n_k²),    n_k = L + k · T̄,

where the linear part (projections and MLP) costs 2·params per position per layer and the attention 4·H·d per
(query, key) pair per layer, so ρ = 2·H·d / params-per-layer (≈ 1 / (6·hidden) for a Llama). The log-probs do not
depend on k (tested); only the cost does. ``completions_per_row`` fixes k instead (G: the whole group in one row).
"""

from __future__ import annotations

import math


def attention_ratio(model) -> float:
    """ρ: attention FLOPs per (query, key) pair over linear FLOPs per position, for one decoder layer of ``model``
    (the first module with ``num_key_value_groups``'s parent layer); 1 / (6 · hidden) when it cannot be read."""
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) or 512
    for m in model.modules():
        attn = getattr(m, "self_attn", None)
        if attn is not None and hasattr(attn, "num_key_value_groups"):
            heads = getattr(config, "num_attention_heads", None)
            head_dim = getattr(attn, "head_dim", None) or hidden // (heads or 1)
            params = sum(p.numel() for p in m.parameters())
            if heads and params:
                return 2.0 * heads * head_dim / params
    return 1.0 / (6.0 * hidden)


def completions_per_row(prompt_lengths: list[int], completion_lengths: list[int], group_size: int,
                        ratio: float) -> int:
    """The k in 1..G with the lowest estimated cost for these groups (ties: the larger k, fewer rows)."""
    G = group_size
    L = sum(prompt_lengths) / max(len(prompt_lengths), 1)
    T = sum(completion_lengths) / max(len(completion_lengths), 1)

    def cost(k: int) -> float:
        n = L + k * T
        return math.ceil(G / k) * (n + ratio * n * n)

    return min(range(G, 0, -1), key=cost)
