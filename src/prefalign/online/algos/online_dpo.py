"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", arXiv 2402.04792), with
any pairwise objective of the catalogue in place of DPO.

Each rollout samples G ≥ 2 completions per prompt from the current policy; the reward picks the best and the worst
of each group (ties, and groups where fewer than two completions were judged, give no pair), and the pair is trained
with the offline objective named by ``loss`` — ``dpo``, ``ipo``, ``simpo``, … — unchanged, on the engine's pairwise
path (the prompt shared by both completions in the batch layout), against the reference when that objective has
one. With G = 2 this is TRL's ``OnlineDPOTrainer`` (two samples, the higher reward is chosen).

Hyperparameters: ``loss`` (default ``dpo``), ``loss_args`` (that objective's own hyperparameters; its β is the
config's ``beta``). The normaliser is the number of pairs of the global batch (each pair's loss is a mean over pairs,
as offline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefalign.online.algos.base import OnlineAlgorithm, OnlineNeeds, Rollout, register


def best_worst(rewards: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group (in order of first appearance): (chosen index, rejected index, valid) — the highest and the lowest
    judged reward; the first of equal maxima / the last of equal minima; invalid when the group's judged rewards all
    tie or fewer than two were judged. ``rewards`` [N] (NaN: not judged), ``group`` [N] → [P] each."""
    chosen, rejected, valid = [], [], []
    for g in torch.unique_consecutive(group).tolist():
        idx = (group == g).nonzero().flatten()
        r = rewards[idx]
        ok = ~torch.isnan(r)
        if ok.sum() < 2:
            chosen.append(int(idx[0]))
            rejected.append(int(idx[0]))
            valid.append(False)
            continue
        judged = idx[ok]
        rj = r[ok]
        hi = int(judged[int(torch.argmax(rj))])
        lo = int(judged[len(rj) - 1 - int(torch.argmin(rj.flip(0)))])
        chosen.append(hi)
        rejected.append(lo)
        valid.append(bool(rj.max() > rj.min()))
    as_t = lambda v, dt: torch.tensor(v, dtype=dt)  # noqa: E731
    return as_t(chosen, torch.long), as_t(rejected, torch.long), as_t(valid, torch.bool)


@register
@dataclass
class OnlineDPO(OnlineAlgorithm):
    name = "online_dpo"
    loss_type = "sequence"  # one unit per pair (see module docstring)
    loss: str = "dpo"
    loss_args: dict = field(default_factory=dict)
    beta: float = 0.1

    def needs(self) -> OnlineNeeds:
        return OnlineNeeds(reference=False, pairs=True)  # the pairwise objective says whether it needs one

    def validate(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"online_dpo: beta must be > 0 (the pairwise objective's β), got {self.beta}")

    def advantages(self, ro: Rollout) -> dict[str, torch.Tensor]:
        c, r, ok = best_worst(ro.rewards, ro.group)
        return {"advantages": torch.zeros_like(ro.rewards), "pair_chosen": c, "pair_rejected": r, "pair_valid": ok}
