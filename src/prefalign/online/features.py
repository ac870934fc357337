"""Per-token quantities online RL asks the log-prob layer for (registered reducers of ``logps.py``, computed chunk by
chunk on the logits the target log-probs already use — never a [batch, length, vocab] tensor):

- ``entropy``: H_t = −Σ_v π(v) log π(v), with gradient (an entropy bonus in the loss);
- ``entropy_stat``: the same without gradient (the diagnostic every run logs);
- ``value``: a value head V(h_t) = w·h_t + b on the final hidden state that predicts y_t (PPO's critic sharing the
  policy's body), with gradient into both; the head's (weight, bias) come in the context as ``value_head``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefalign.logps import Chunk, register_feature


def _entropy(c: Chunk) -> torch.Tensor:
    logp = c.logp()  # [C, V]
    return -(logp.exp() * logp).sum(-1)  # [C]


@register_feature("entropy")
def entropy(c: Chunk) -> torch.Tensor:
    return _entropy(c)


@register_feature("entropy_stat", grad=False)
def entropy_stat(c: Chunk) -> torch.Tensor:
    return _entropy(c)


@register_feature("value", inputs=("hidden", "value_head"))
def value(c: Chunk) -> torch.Tensor:
    w, b = c.context["value_head"]
    return F.linear(c.context["hidden"].to(w.dtype), w, b)[:, 0].float()  # [C]


class ValueHead(torch.nn.Module):
    """PPO's value head: one linear layer on the policy's final hidden state, zero-initialised (V = 0 at the start,
    so the first advantages are the returns themselves)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.weight, self.head.bias
