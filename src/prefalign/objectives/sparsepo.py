"""SparsePO: token-masked DPO (Christopoulou et al. 2024, "SparsePO: Controlling Preference Alignment of LLMs via
Sparse Token Masks"; reference code huawei-noah/HEBO SparsePO/src/trainers/sparse_trainer.py).

    h_t = log π_θ(y_t|·) − log π_ref(y_t|·)   per completion token
    u = Σ_t m^u_t h_t(y_w) − Σ_t m^u_t h_t(y_l)
    d = Σ_t m^d_t D_t(y_w) − Σ_t m^d_t D_t(y_l),  D_t = −KL_t(π_ref ‖ π_θ)   (needs full next-token distributions)
    loss = −log σ(β(u − d)) + λ_u·‖m^u‖₁ + λ_d·‖m^d‖₁        (‖m‖₁ here: mean over the pair's completion tokens)

``sparsepo_loss`` is the whole formula for given masks and D_t. The registered objective ``sparsepo`` can only use
what the log-prob layer provides today: masks ≡ 1 and no KL term (``D_t`` needs the reference's and the policy's
full next-token distributions, and learned masks m = ReLU(linear(hidden states)) need hidden states — neither is
in PairLogps). In that configuration it equals DPO exactly (tests: test_sparsepo_ones_is_dpo), computed token-wise.

Needs a reference model with **per-token** log-probs for policy and reference (needs_token_logps,
needs_ref_token_logps; so not ``reference: precompute``). Defaults: β = 0.1, λ_u = λ_d = 0 (no mask parameters to
penalise when masks are fixed). Value at policy = reference: ln 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from prefalign.objectives.base import Objective, ObjectiveOutput, PairLogps, reward_metrics
from prefalign.objectives.registry import register


def _l1(m_w: torch.Tensor, m_l: torch.Tensor, mask_w: torch.Tensor, mask_l: torch.Tensor) -> torch.Tensor:
    """Mean |m| over the completion tokens of both responses of each pair. [B]."""
    tot = (m_w.abs() * mask_w).sum(1) + (m_l.abs() * mask_l).sum(1)
    return tot / (mask_w.sum(1) + mask_l.sum(1)).clamp(min=1)


def sparsepo_loss(h_w: torch.Tensor, h_l: torch.Tensor, mask_w: torch.Tensor, mask_l: torch.Tensor,
                  m_u_w: torch.Tensor, m_u_l: torch.Tensor, beta: float,
                  m_d_w: torch.Tensor | None = None, m_d_l: torch.Tensor | None = None,
                  d_w: torch.Tensor | None = None, d_l: torch.Tensor | None = None,
                  lambda_u: float = 0.0, lambda_d: float = 0.0) -> torch.Tensor:
    """Per-pair SparsePO loss [B]. h_*, mask_*, m_*, d_* are [B, T] (token log-ratios, completion masks, masks,
    D_t = −KL_t(π_ref‖π_θ)). The KL term is used when d_w/d_l and m_d_w/m_d_l are given."""
    mask_w, mask_l = mask_w.to(h_w.dtype), mask_l.to(h_l.dtype)
    u = (m_u_w * h_w * mask_w).sum(1) - (m_u_l * h_l * mask_l).sum(1)  # [B]
    loss = lambda_u * _l1(m_u_w, m_u_l, mask_w, mask_l)
    if d_w is not None:
        d = (m_d_w * d_w * mask_w).sum(1) - (m_d_l * d_l * mask_l).sum(1)
        u = u - d
        loss = loss + lambda_d * _l1(m_d_w, m_d_l, mask_w, mask_l)
    return -F.logsigmoid(beta * u) + loss


@register
@dataclass
class SparsePO(Objective):
    name = "sparsepo"
    summary = "SparsePO: token-masked DPO; registered with masks ≡ 1 and no KL term (= DPO, token-wise)"
    needs_token_logps: ClassVar[bool] = True
    needs_ref_token_logps: ClassVar[bool] = True

    beta: float = 0.1

    def validate(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        need = ("policy_chosen_token_logps", "policy_rejected_token_logps", "ref_chosen_token_logps",
                "ref_rejected_token_logps", "chosen_mask", "rejected_mask")
        missing = [n for n in need if getattr(lp, n) is None]
        if missing:
            raise ValueError(f"objective 'sparsepo' needs PairLogps.{', PairLogps.'.join(missing)}")
        h_w = lp.policy_chosen_token_logps - lp.ref_chosen_token_logps  # [B, Tc]
        h_l = lp.policy_rejected_token_logps - lp.ref_rejected_token_logps  # [B, Tr]
        ones_w, ones_l = torch.ones_like(h_w), torch.ones_like(h_l)
        per_example = sparsepo_loss(h_w, h_l, lp.chosen_mask, lp.rejected_mask, ones_w, ones_l, self.beta)
        hw = (h_w * lp.chosen_mask).sum(1).detach()
        hl = (h_l * lp.rejected_mask).sum(1).detach()
        return ObjectiveOutput(per_example.mean(), per_example, reward_metrics(self.beta * hw, self.beta * hl))
