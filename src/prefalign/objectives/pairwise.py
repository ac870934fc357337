"""What every reference-based pairwise objective shares: sequence scores, and the three modifiers.

A pairwise objective file implements only ``pair_loss(sc, lp) -> [B]``. ``PairwiseObjective.compute`` does the rest,
in this order (TRL 1.16 ``DPOTrainer`` semantics; docs/objectives.md has the table):

1. **LD-DPO** (``ld_alpha``, Length Desensitization, arXiv 2409.06411). With ℓ = min(|y₊|, |y₋|), each
   sequence log-prob (policy and reference alike) becomes Σ_{t≤ℓ} log π(y_t) + α·Σ_{t>ℓ} log π(y_t).
   Needs per-token log-probs and masks (the reference's too: ``needs().ref_features = ("token_logps",)``).
   ``None`` (default) = off; α = 1 is plain DPO, α = 0 drops the tokens beyond the shared length.
2. Log-ratios h± = log π_θ(y±) − log π_ref(y±) (summed).
3. **f-divergence** (``f_divergence``, f-DPO, Wang et al. 2023, arXiv 2309.16240): scores s± = g(h±) with
   reverse_kl: h · forward_kl: 1 − e^(−h) · js_divergence: log 2 + log σ(h) ·
   alpha_divergence: (e^((α−1)h) − 1)/(α−1), α = ``f_alpha`` (|α − 1| < 1e-6 falls back to reverse_kl).
   Every g maps h = 0 to 0. The β·log Z(x) term of the f-DPO reparameterisation cancels only in s₊ − s₋, so an
   objective whose loss uses s₊ or s₋ alone sets ``supports_f_divergence = False`` and a non-default value is a
   ValueError (TRL raises too).
4. ``pair_loss`` → per-pair loss [B].
5. **WPO** (``use_weighting``, arXiv 2406.11827 Eq. 2): multiply by w₊·w₋, w = exp(mean_t[log π_θ(y_t) −
   log Σ_v π_θ(v)²]) over all completion tokens, without gradient. Needs policy per-token log-probs, masks and
   the feature ``log_sum_sq`` (``features["chosen_log_sum_sq"]``, ``["rejected_log_sum_sq"]``, computed chunk by
   chunk in logps.py). Sorting objectives (AOT) reject it: the weights would not follow the sort.

The length divisors of ``ipo`` / ``sigmoid_norm``, the ``sft`` NLL and the WPO weights always use all tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from prefalign.objectives.base import Needs, Objective, ObjectiveOutput, PairLogps, require, reward_metrics

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# Upper bound on (α−1)·h before exp() so the score stays finite after the cast back: TRL 1.16's values for
# fp32/bf16/fp16. fp64 (which TRL rejects with a KeyError) uses the fp32 bound, so results do not depend on dtype.
_EXP_CLAMP = {torch.float16: 11.0, torch.bfloat16: 80.0, torch.float32: 80.0, torch.float64: 80.0}


def f_divergence_score(h: torch.Tensor, kind: str, alpha: float = 0.5) -> torch.Tensor:
    """s = g(h) for the f-DPO score of a log-ratio h (any shape). See the module docstring for g."""
    if kind == "reverse_kl":
        return h
    if kind == "forward_kl":
        return 1 - torch.exp(-h)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(h)
    if kind == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:  # the α → 1 limit of (t^(α−1) − 1)/(α−1) is log t
            return h
        t = (alpha - 1.0) * h
        work = torch.float64 if t.dtype == torch.float64 else torch.float32  # exp in at least fp32
        t = t.to(work).clamp(max=_EXP_CLAMP[t.dtype])
        return torch.expm1(t).to(h.dtype) / (alpha - 1.0)
    raise ValueError(f"unknown f_divergence '{kind}'; known: {', '.join(F_DIVERGENCES)}")


def ld_sequence_logps(
    token_logps: torch.Tensor, mask: torch.Tensor, shared_len: torch.Tensor, alpha: float
) -> torch.Tensor:
    """LD-DPO sequence log-prob: full weight on the first ``shared_len`` completion tokens, ``alpha`` on the rest.

    token_logps, mask: [B, T]; shared_len: [B]. Returns [B].
    """
    m = mask.bool()
    pos = mask.long().cumsum(dim=1)  # [B, T] 1-based index of each completion token
    head = m & (pos <= shared_len.unsqueeze(1))
    tail = m & ~head
    zero = token_logps.new_zeros(())
    return torch.where(head, token_logps, zero).sum(1) + alpha * torch.where(tail, token_logps, zero).sum(1)


def wpo_weight(token_logps: torch.Tensor, token_log_sum_sq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """WPO weight per sequence, exp(mean over completion tokens of [log π(y_t) − log Σ_v π(v)²]); no gradient. [B]."""
    with torch.no_grad():
        m = mask.bool()
        per_token = torch.where(m, token_logps - token_log_sum_sq, token_logps.new_zeros(()))
        return torch.exp(per_token.sum(1) / m.sum(1).clamp(min=1))


def chosen_nll(lp: PairLogps) -> torch.Tensor:
    """Mean −log π_θ over all chosen completion tokens of the batch (a token mean, not a mean of row means). Scalar.

    Uses the summed log-probs and token counts: Σ_b log π(y_w,b) / Σ_b |y_w,b|; so ``chosen_tokens`` must be given.
    """
    return -lp.policy_chosen.sum() / lp.chosen_tokens.sum().clamp(min=1)


WPO_FEATURES = ("log_sum_sq",)  # what ``use_weighting`` asks the log-prob layer for


def wpo_weights(lp: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """(w₊, w₋), the WPO weights of chosen and rejected; [B] each."""
    tok_w, tok_l, m_w, m_l, sq_w, sq_l = require(
        lp, "use_weighting (WPO)", "policy_chosen_token_logps", "policy_rejected_token_logps", "chosen_mask",
        "rejected_mask", "chosen_log_sum_sq", "rejected_log_sum_sq")
    return wpo_weight(tok_w, sq_w, m_w), wpo_weight(tok_l, sq_l, m_l)


@dataclass
class PairScores:
    """What ``pair_loss`` gets. Sequence log-probs are after LD-DPO (if on); lengths count all completion tokens."""

    chosen: torch.Tensor  # [B] s₊ = g(h₊), the f-divergence score
    rejected: torch.Tensor  # [B] s₋
    chosen_logratio: torch.Tensor  # [B] h₊ = log π_θ(y_w) − log π_ref(y_w)
    rejected_logratio: torch.Tensor  # [B] h₋
    policy_chosen: torch.Tensor  # [B] log π_θ(y_w)
    policy_rejected: torch.Tensor  # [B]
    ref_chosen: torch.Tensor  # [B] log π_ref(y_w)
    ref_rejected: torch.Tensor  # [B]
    chosen_tokens: torch.Tensor  # [B] |y_w|, at least 1
    rejected_tokens: torch.Tensor  # [B] |y_l|, at least 1

    @property
    def delta(self) -> torch.Tensor:
        """Δ = s₊ − s₋."""
        return self.chosen - self.rejected


@dataclass
class PairwiseObjective(Objective):
    """Base of the reference-based pairwise objectives; subclasses implement ``pair_loss`` and add their fields.

    The modifier fields are keyword-only, so a subclass's own hyperparameters keep their positions after ``beta``.
    """

    needs_reference = True
    supports_f_divergence: ClassVar[bool] = True  # False: the loss uses s₊ or s₋ alone (see module docstring)
    supports_weighting: ClassVar[bool] = True  # False: the loss sorts the batch (AOT)

    beta: float = 0.1
    f_divergence: str = field(default="reverse_kl", kw_only=True)
    f_alpha: float = field(default=0.5, kw_only=True)  # α of alpha_divergence
    use_weighting: bool = field(default=False, kw_only=True)  # WPO
    ld_alpha: float | None = field(default=None, kw_only=True)  # LD-DPO; None = off

    def needs(self) -> Needs:
        """WPO: the policy's log Σπ²; LD-DPO: the reference's per-token log-probs (it rebuilds its sums too)."""
        return replace(super().needs(), policy_features=WPO_FEATURES if self.use_weighting else (),
                       ref_features=("token_logps",) if self.ld_alpha is not None else ())

    def validate(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.f_divergence not in F_DIVERGENCES:
            raise ValueError(f"unknown f_divergence '{self.f_divergence}'; known: {', '.join(F_DIVERGENCES)}")
        if self.f_divergence != "reverse_kl" and not self.supports_f_divergence:
            raise ValueError(
                f"objective '{self.name}' supports only f_divergence='reverse_kl' (its loss uses a single "
                f"sequence's score, where the β·log Z(x) term of f-DPO does not cancel); got '{self.f_divergence}'"
            )
        if self.use_weighting and not self.supports_weighting:
            raise ValueError(
                f"objective '{self.name}' does not support use_weighting (WPO): it sorts the batch, so "
                "per-pair weights would not follow their pairs"
            )
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"ld_alpha must be in [0, 1] or None, got {self.ld_alpha}")

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sequence_logps(self, lp: PairLogps) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy_w, policy_l, ref_w, ref_l) sequence log-probs [B], LD-DPO-weighted when ``ld_alpha`` is set."""
        if self.ld_alpha is None:
            return lp.policy_chosen, lp.policy_rejected, lp.ref_chosen, lp.ref_rejected
        require(lp, "ld_alpha (LD-DPO)", "policy_chosen_token_logps", "policy_rejected_token_logps",
                "ref_chosen_token_logps", "ref_rejected_token_logps", "chosen_mask", "rejected_mask")
        shared = torch.minimum(lp.chosen_mask.sum(1), lp.rejected_mask.sum(1))  # [B] ℓ = min(|y₊|, |y₋|)
        a = self.ld_alpha
        return (
            ld_sequence_logps(lp.policy_chosen_token_logps, lp.chosen_mask, shared, a),
            ld_sequence_logps(lp.policy_rejected_token_logps, lp.rejected_mask, shared, a),
            ld_sequence_logps(lp.ref_chosen_token_logps, lp.chosen_mask, shared, a),
            ld_sequence_logps(lp.ref_rejected_token_logps, lp.rejected_mask, shared, a),
        )

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        pi_w, pi_l, ref_w, ref_l = self.sequence_logps(lp)
        h_w, h_l = pi_w - ref_w, pi_l - ref_l  # [B]
        sc = PairScores(
            chosen=f_divergence_score(h_w, self.f_divergence, self.f_alpha),
            rejected=f_divergence_score(h_l, self.f_divergence, self.f_alpha),
            chosen_logratio=h_w,
            rejected_logratio=h_l,
            policy_chosen=pi_w,
            policy_rejected=pi_l,
            ref_chosen=ref_w,
            ref_rejected=ref_l,
            chosen_tokens=lp.chosen_tokens.clamp(min=1),
            rejected_tokens=lp.rejected_tokens.clamp(min=1),
        )
        per_example = self.pair_loss(sc, lp)  # [B]
        metrics = reward_metrics(self.beta * h_w.detach(), self.beta * h_l.detach())
        if self.use_weighting:
            w_w, w_l = wpo_weights(lp)
            per_example = per_example * (w_w * w_l)
            metrics["wpo/weight"] = (w_w * w_l).mean().item()
        return ObjectiveOutput(loss=per_example.mean(), per_example=per_example, metrics=metrics)


def smoothed_sigmoid_loss(z: torch.Tensor, eps: float) -> torch.Tensor:
    """−(1 − ε)·log σ(z) − ε·log σ(−z): the logistic loss with label smoothing ε (cDPO, AOT, SimPO, CPO)."""
    loss = -F.logsigmoid(z)
    if eps:
        loss = (1 - eps) * loss - eps * F.logsigmoid(-z)
    return loss
