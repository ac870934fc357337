"""Loss normalisers: how per-token losses of a rollout become one scalar, by ``loss_type``.

The loss of an optimiser step is defined on the *global* batch (every micro-batch of the accumulation window, on
every process) as ``Σ loss_sum / global_units``: each micro-batch contributes ``aggregate(...)[0] / U`` where U is
the sum of ``units(mask, loss_type)`` over the whole window, all-reduced *before* the update. Gradient accumulation
and data parallelism then change nothing, for every loss type (``tests/online/test_algos_aggregation.py``). With
DDP, which *averages* gradients over P processes, a process back-propagates ``P · loss_sum / U``.

=========  ==========================================  ===========  =========================================
loss_type  loss_sum of a micro-batch                   unit         global loss
=========  ==========================================  ===========  =========================================
grpo       Σ_seq (Σ_tok ℓ / |seq|)                     sequences    mean over sequences of the token mean
                                                                    (Shao et al. 2024, arXiv 2402.03300)
dr_grpo    Σ_seq Σ_tok ℓ / max_completion_length       sequences    Σ ℓ / (N · L_max), length-unbiased (Liu et
                                                                    al. 2025, arXiv 2503.20783)
dapo       Σ_tok ℓ                                     tokens       global token mean (Yu et al. 2025, arXiv
                                                                    2503.14476)
bnpo       Σ_tok ℓ                                     tokens       global token mean (TRL's "batch-normalised"
                                                                    loss; see below)
sequence   Σ_seq Σ_tok ℓ                               sequences    mean over sequences of the per-sequence sum
=========  ==========================================  ===========  =========================================

Sequences are counted as rows, including rows whose mask is empty (a truncated completion masked out still counts,
as in TRL's ``.mean()`` over the batch); tokens are the True entries of the mask.

Difference from TRL 1.16: TRL's ``bnpo`` divides each micro-batch by its *own* token count and ``grpo``/``dr_grpo``
by its own sequence count, then divides by the accumulation steps; that is the global loss above only when every
micro-batch has the same count (always for grpo/dr_grpo with fixed micro-batch size, rarely for bnpo), so TRL's bnpo
changes with the split (the trl#5619 bug class). Here bnpo and dapo are the same global token mean; the name bnpo is
kept for configs written for TRL.
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "sequence")
_TOKEN_UNITS = ("dapo", "bnpo")


def _check(loss_type: str) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type '{loss_type}'; known: {', '.join(LOSS_TYPES)}")


def units(mask: torch.Tensor, loss_type: str) -> float:
    """How many normalising units a micro-batch with completion ``mask`` [N, T] holds: tokens or sequences."""
    _check(loss_type)
    return float(mask.sum()) if loss_type in _TOKEN_UNITS else float(mask.shape[0])


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str,
              max_completion_length: int | None = None) -> tuple[torch.Tensor, float]:
    """(loss_sum, units) of one micro-batch; its share of the global loss is loss_sum / (global units).

    ``per_token`` [N, T] (zero or not outside ``mask``; the mask is applied here), ``mask`` [N, T] bool.
    ``max_completion_length`` is required by ``dr_grpo`` (the generation limit, not the longest sampled length).
    """
    _check(loss_type)
    m = mask.to(per_token.dtype)
    masked = per_token * m  # [N, T]
    if loss_type == "grpo":
        loss_sum = (masked.sum(-1) / m.sum(-1).clamp(min=1)).sum()  # Σ_seq token mean; empty rows add 0
    elif loss_type == "dr_grpo":
        if not max_completion_length or max_completion_length <= 0:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length > 0")
        loss_sum = masked.sum() / max_completion_length
    else:  # dapo, bnpo, sequence: a plain sum; they differ only in the unit
        loss_sum = masked.sum()
    return loss_sum, units(mask, loss_type)
