"""BoNBoN: best-of-n distillation (Gui, Gârbacea & Veitch 2024, "BoNBoN Alignment and the Sweetness of Best-of-n").

Rows are (y_best, y_worst) = best and worst of n samples from π₀ (the reference) for the prompt.

    β* = 1/(2(n − 1)·H_{n−1})            (H = harmonic number; n = 8 → 0.0275482)
    h± = log π_θ(y±|x) − log π_ref(y±|x)  (summed; y₊ = best, y₋ = worst)
    loss = α·(−log π_θ(y_best|x)) + (1 − α)·(h₊ − h₋ − 1/(2β*))²         (form = "ipo", the paper's)
    loss = α·(−log π_θ(y_best|x)) + (1 − α)·(−log σ(β*(h₊ − h₋)))        (form = "sigmoid", the released code)

Why this β*: for continuous rewards, log π_BoN(y)/π₀(y) = log n + (n−1) log F(y), and
E[log-ratio(best) − log-ratio(worst)] = (n − 1)H_{n−1} = 1/(2β*); the squared term pins h₊ − h₋ to that value, so
its optimum is (approximately, for discrete outputs) π_BoN(y) = F(y)ⁿ − F(y⁻)ⁿ
(tests/theory/test_bonbon_best_of_n.py). The NLL is the *summed* sequence log-likelihood of y_best, per pair.

Needs a reference model (= the sampler π₀); summed log-probs. Defaults: n = 8, alpha = 0.005 (authors' README),
beta_override = None (→ β*(n)); form = "ipo". It has no
``beta`` field on purpose: the training config's global ``beta`` must not replace β*; set
``objective_args: {beta_override: …}`` to change it. Value at policy = reference: α·(−log π(y_best)) + (1 − α)/(4β*²).
Released-code difference: gl-ybnbxb/BoNBoN passes ``ipo=False`` for ``loss=bonbon``, so it evaluates the sigmoid
(DPO) form with β*; ``form="sigmoid"`` reproduces that. TRL/OpenRLHF have only approximations (length-normalised
IPO + token-mean SFT). No modifiers (f_divergence, WPO, LD-DPO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefalign.objectives.base import Objective, ObjectiveOutput, PairLogps, reward_metrics
from prefalign.objectives.registry import register

FORMS = ("ipo", "sigmoid")


def bonbon_beta(n: int) -> float:
    """β* = 1/(2(n − 1)H_{n−1}), the β at which the IPO target equals E[log-ratio(best) − log-ratio(worst)]."""
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    harmonic = sum(1.0 / k for k in range(1, n))
    return 1.0 / (2 * (n - 1) * harmonic)


@register
@dataclass
class BoNBoN(Objective):
    name = "bonbon"
    summary = "BoNBoN: α·NLL(best) + (1−α)·(h_best − h_worst − 1/(2β*))², β* = 1/(2(n−1)H_{n−1})"

    n: int = 8
    alpha: float = 0.005
    form: str = "ipo"
    beta_override: float | None = None  # None: β*(n)

    @property
    def beta(self) -> float:
        return self.beta_override if self.beta_override is not None else bonbon_beta(self.n)

    def validate(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 2:
            raise ValueError(f"n must be an integer >= 2, got {self.n}")
        if self.beta_override is not None and not self.beta_override > 0:
            raise ValueError(f"beta_override must be > 0 or None, got {self.beta_override}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got '{self.form}'")

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        h_w, h_l = lp.policy_chosen - lp.ref_chosen, lp.policy_rejected - lp.ref_rejected  # [B]
        margin = h_w - h_l
        beta = self.beta
        if self.form == "ipo":
            pref = (margin - 1.0 / (2 * beta)) ** 2
        else:
            pref = -F.logsigmoid(beta * margin)
        per_example = self.alpha * (-lp.policy_chosen) + (1 - self.alpha) * pref
        metrics = reward_metrics(beta * h_w.detach(), beta * h_l.detach())
        metrics["bonbon/margin"] = margin.detach().mean().item()
        return ObjectiveOutput(per_example.mean(), per_example, metrics)
