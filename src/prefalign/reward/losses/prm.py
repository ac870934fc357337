"""Process reward model (PRM): a score per reasoning step, trained on per-step correctness labels
(Lightman et al., "Let's Verify Step by Step", arXiv 2305.20050; Math-Shepherd, Wang et al. 2023).

    z_j  = the score read at the end of step j (the method puts it in extras["step_scores"] [S])
    y_j  = extras["step_labels"] [S] in [0, 1] (1 = the step is correct; soft labels allowed)
    ℓ_j  = BCE(z_j, y_j) = −y_j log σ(z_j) − (1 − y_j) log σ(−z_j)
    loss = mean over the micro-batch's steps (reduction="step")  or  mean over rows of each row's step mean ("row")

Row of each step: extras["step_row"] [S] in 0..B−1, steps of a row in order. Our choice vs TRL: TRL's PRMTrainer
(removed in 1.16) labelled the step-separator token of each step and trained a 2-class token classifier with
cross-entropy over labelled tokens; a 2-class softmax on logits (a, b) is BCE on b − a, so one logit per step read at
the step's end is the same model with one redundant logit dropped, and reduction="step" is TRL's token mean.
per_example: "step" → B/S·Σ_{j in row} ℓ_j, "row" → the row's step mean (0 for a row without steps); both average
to the loss. ``chosen`` [B, 1] (e.g. the last step's score) is not used by the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prefalign.reward.losses.base import RewardLoss, RewardNeeds, RewardScores, register


def first_error(bad: Tensor, row: Tensor, B: int) -> Tensor:
    """[B] index (within its row) of each row's first step with ``bad`` True; −1 when none. bad, row [S]."""
    order = torch.sort(row, stable=True).indices  # steps grouped by row, order within a row kept
    r = row[order]
    start = torch.zeros(B + 1, dtype=torch.long, device=row.device)
    start[1:] = torch.bincount(r, minlength=B).cumsum(0)
    pos = torch.arange(len(r), device=row.device) - start[r]  # [S] position within the row
    big = torch.iinfo(torch.long).max
    cand = torch.where(bad[order], pos, torch.full_like(pos, big))
    first = torch.full((B,), big, dtype=torch.long, device=row.device).scatter_reduce(0, r, cand, "amin")
    return torch.where(first == big, torch.full_like(first, -1), first)


@register
@dataclass
class PRM(RewardLoss):
    name = "prm"
    summary = "process reward model: BCE on a score read at each step's end vs per-step correctness labels"
    rows = "steps"

    reduction: str = "step"  # "step": mean over all steps of the micro-batch (TRL's token mean); "row": per-row

    def validate(self) -> None:
        if self.reduction not in ("step", "row"):
            raise ValueError(f"reduction must be 'step' or 'row', got {self.reduction!r}")

    def needs(self) -> RewardNeeds:
        return RewardNeeds(extras=("step_scores", "step_labels", "step_row"))

    def _steps(self, s: RewardScores) -> tuple[Tensor, Tensor, Tensor]:
        z, y, row = s.extras["step_scores"], s.extras["step_labels"], s.extras["step_row"].long()
        if not (z.shape == y.shape == row.shape) or z.dim() != 1:
            raise ValueError("reward loss 'prm': step_scores, step_labels, step_row must all be [S]")
        if row.numel() and (row.min() < 0 or row.max() >= s.batch_size):
            raise ValueError(f"reward loss 'prm': step_row must be in 0..{s.batch_size - 1}")
        return z, y.to(z.dtype), row

    def _per_example(self, s: RewardScores) -> Tensor:
        z, y, row = self._steps(s)
        ell = F.binary_cross_entropy_with_logits(z, y, reduction="none")  # [S]
        B = s.batch_size
        per_row = torch.zeros(B, dtype=ell.dtype, device=ell.device).index_add(0, row, ell)  # [B] Σ over steps
        if self.reduction == "step":
            return per_row * (B / max(len(z), 1))
        count = torch.bincount(row, minlength=B).clamp(min=1).to(ell.dtype)
        return per_row / count

    def metrics(self, s: RewardScores) -> dict[str, float]:
        z, y, row = (t.detach() for t in self._steps(s))
        good, pred = y > 0.5, z > 0
        out = {"step_accuracy": (pred == good).double().mean().item(),
               "first_error_accuracy": (first_error(~good, row, s.batch_size)
                                        == first_error(~pred, row, s.batch_size)).double().mean().item()}
        if good.any():
            out["score_correct"] = z[good].double().mean().item()
        if (~good).any():
            out["score_incorrect"] = z[~good].double().mean().item()
        return out
