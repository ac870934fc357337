"""What every point-wise (unpaired) objective shares: rows are (prompt, completion, label), not pairs.

A point-wise objective sets ``row_kind = "unpaired"`` and receives a ``PointLogps`` (policy/reference summed
log-probs of each completion, the boolean label, token counts, and, when ``needs().row_options`` has
``mismatched`` (KTO), the log-probs of mismatched prompt/completion pairs for KTO's KL estimate). ``per_example[i]`` is the loss of row i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prefalign.objectives.base import Objective, ObjectiveOutput, PointLogps


def point_metrics(rewards: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    """rewards/chosen and rewards/rejected (means over desirable / undesirable rows), margins, and accuracy: the
    fraction of rows whose implicit reward has the label's sign (reward > 0 for desirable, < 0 for undesirable)."""
    r, lab = rewards.detach().float(), label.bool()
    out = {"rewards/accuracies": ((r > 0) == lab).float().mean().item()}
    if lab.any():
        out["rewards/chosen"] = r[lab].mean().item()
    if (~lab).any():
        out["rewards/rejected"] = r[~lab].mean().item()
    if lab.any() and (~lab).any():
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out


@dataclass
class PointObjective(Objective):
    """Base of point-wise objectives; subclasses implement ``compute(PointLogps)``."""

    row_kind: ClassVar[str] = "unpaired"

    def __call__(self, logps: PointLogps) -> ObjectiveOutput:  # type: ignore[override]
        if not isinstance(logps, PointLogps):
            raise TypeError(f"objective '{self.name}' takes PointLogps (unpaired rows), got {type(logps).__name__}")
        if self.needs_reference and logps.ref is None:
            raise ValueError(f"objective '{self.name}' needs reference log-probs (PointLogps.ref)")
        return self.compute(logps)


def check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
