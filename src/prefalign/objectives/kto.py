"""KTO: Kahneman–Tversky Optimisation on unpaired thumbs-up/down rows (Ethayarajh et al. 2024, arXiv 2402.01306,
Eq. 7), with TRL 1.16 ``KTOTrainer`` semantics (``loss_type="kto"``).

    h = log π_θ(y|x) − log π_ref(y|x)          (summed over completion tokens)
    z₀ = max(0, mean_i[log π_θ(y_{i−1}|x_i) − log π_ref(y_{i−1}|x_i)])   no gradient (kl_estimate="mismatched")
    desirable row:    λ_D·(1 − σ(β(h − z₀)))
    undesirable row:  λ_U·(1 − σ(β(z₀ − h)))
    loss = mean over rows

z₀, the KL reference point: TRL pairs each prompt with the completion of the previous example in the batch (its "KL
dataset") and takes the batch mean of the log-ratio of those mismatched pairs, detached and clamped at 0.
``kl_estimate``: "mismatched" (TRL; ``needs().row_options = {"mismatched": True}``, and the loop provides
``kl_policy``/``kl_ref``), "batch" (mean of the rows' own h,
detached, clamped at 0 — no extra forward pass; an approximation, not TRL), "none" (z₀ = 0, as TRL's
``apo_zero_unpaired`` does for its KL). Under several processes TRL also averages z₀ across processes; here it is
the micro-batch's.

Needs a reference model; summed log-probs; unpaired rows (prompt, completion, label). Defaults (TRL's): β = 0.1,
desirable_weight = undesirable_weight = 1.0, kl_estimate = "mismatched". Value at policy = reference: ½·λ per row.
With one row per micro-batch (``batch_size: 1``) the KL estimate comes from the row itself and equals its implied
reward, so ``prefalign train`` refuses it unless ``kl_estimate: none`` (``batch_size_problem``; TRL refuses it too).
The desirable/undesirable ratio should satisfy Eq. 8 of the paper (λ_D·n_D/(λ_U·n_U) ∈ [1, 4/3]); TRL warns,
here it is up to the user.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from prefalign.objectives.base import Needs, ObjectiveOutput, PointLogps
from prefalign.objectives.pointwise import PointObjective, check_beta, point_metrics
from prefalign.objectives.registry import register

KL_ESTIMATES = ("mismatched", "batch", "none")


@register
@dataclass
class KTO(PointObjective):
    name = "kto"
    summary = "KTO (TRL KTOTrainer): λ(1 − σ(±β(h − z₀))), z₀ = detached KL estimate from mismatched pairs"

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    kl_estimate: str = "mismatched"

    def needs(self) -> Needs:
        mismatched = {"mismatched": True} if self.kl_estimate == "mismatched" else {}
        return replace(super().needs(), row_options=mismatched)

    def validate(self) -> None:
        check_beta(self.beta)
        if self.kl_estimate not in KL_ESTIMATES:
            raise ValueError(f"kl_estimate must be one of {KL_ESTIMATES}, got '{self.kl_estimate}'")
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ValueError("desirable_weight and undesirable_weight must be >= 0")

    def batch_size_problem(self, batch_size: int) -> tuple[str, str] | None:
        """(what, what to do) when ``batch_size`` rows per micro-batch cannot work, else None. With one row the
        KL estimate z₀ comes from that row itself, so it equals the row's implied reward (h) and the loss compares
        h with itself; TRL's KTOTrainer refuses this too."""
        if batch_size >= 2 or self.kl_estimate == "none":
            return None
        return (f"objective 'kto' with batch_size 1: its KL reference point z0 (kl_estimate '{self.kl_estimate}') "
                "is then computed from the row itself, so it equals the row's implied reward and the loss compares "
                "that reward with itself (TRL refuses this too)",
                "use batch_size >= 2 (gradient_accumulation_steps keeps the global batch), or objective_args: "
                "{kto: {kl_estimate: none}}")

    def reference_point(self, lp: PointLogps, h: torch.Tensor) -> torch.Tensor:
        """z₀, a detached scalar ≥ 0."""
        if self.kl_estimate == "none":
            return h.new_zeros(())
        if self.kl_estimate == "batch":
            return h.detach().mean().clamp(min=0)
        if lp.kl_policy is None or lp.kl_ref is None:
            raise ValueError("kto with kl_estimate='mismatched' needs PointLogps.kl_policy and kl_ref "
                             "(log-probs of mismatched prompt/completion pairs); or use kl_estimate='batch'")
        return (lp.kl_policy - lp.kl_ref).detach().mean().clamp(min=0)

    def compute(self, lp: PointLogps) -> ObjectiveOutput:
        h = lp.policy - lp.ref  # [B]
        z0 = self.reference_point(lp, h)
        des = self.desirable_weight * (1 - torch.sigmoid(self.beta * (h - z0)))
        und = self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - h)))
        per_example = torch.where(lp.label, des, und)
        metrics = {**point_metrics(self.beta * h, lp.label), "kl": float(z0)}
        return ObjectiveOutput(per_example.mean(), per_example, metrics)
