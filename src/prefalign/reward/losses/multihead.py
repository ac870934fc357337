"""Multi-head reward model: K score heads on one backbone (e.g. helpfulness, harmlessness, honesty), one loss per
head, combined with head weights.

    kind="bt"  (pair rows):   ℓ_ik = BCE(Δ_ik, t_ik) = −t·log σ(Δ_ik) − (1 − t)·log σ(−Δ_ik),  Δ_ik = r_c,ik − r_r,ik − m_i
               t = extras["targets"] [B, K]: the probability that the chosen wins on head k (1 = chosen better,
               0 = rejected better, 0.5 = tie); absent = 1 everywhere, i.e. plain BT on every head.
    kind="mse" (scored rows): ℓ_ik = (r_ik − t_ik)²,  t = extras["targets"] [B, K]
    NaN in t_ik = row i does not label head k: masked out.
    L_k  = Σ_i m_ik ℓ_ik / Σ_i m_ik        (mean over the rows labelling head k; 0 when none does)
    loss = Σ_k w_k L_k                     (w = head_weights, default uniform 1/K; taken as given, not renormalised)

Our design (no single reference): per-head means, so a head's weight does not depend on how many rows label it in
a micro-batch. per_example_i = Σ_k w_k m_ik ℓ_ik · B / n_k, whose mean is the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prefalign.reward.losses.base import RewardLoss, RewardNeeds, RewardScores, pair_metrics, register
from prefalign.reward.losses.bt import bt_delta
from prefalign.reward.losses.regression import scored_metrics


@register
@dataclass
class MultiHead(RewardLoss):
    name = "multihead"
    summary = "K score heads, one BT (pairs) or MSE (scored) loss per head; NaN targets mask a head"

    kind: str = "bt"  # "bt" (pair rows) | "mse" (scored rows)
    num_heads: int | None = None  # None: K from the data (or from head_weights)
    head_weights: tuple[float, ...] | None = None  # [K]; None = uniform 1/K
    use_margin: bool = True  # kind="bt": subtract extras["margin"] ([B] or [B, K]) when present

    @property
    def rows(self) -> str:  # type: ignore[override]  # depends on kind
        return "pairs" if self.kind == "bt" else "scored"

    def validate(self) -> None:
        if self.kind not in ("bt", "mse"):
            raise ValueError(f"kind must be 'bt' or 'mse', got {self.kind!r}")
        if self.head_weights is not None:
            self.head_weights = tuple(float(w) for w in self.head_weights)
            if any(w < 0 for w in self.head_weights) or not any(self.head_weights):
                raise ValueError(f"head_weights must be ≥ 0 and not all 0, got {self.head_weights}")
            if self.num_heads is not None and len(self.head_weights) != self.num_heads:
                raise ValueError(f"head_weights has {len(self.head_weights)} entries, num_heads={self.num_heads}")
        if self.num_heads is not None and self.num_heads < 1:
            raise ValueError(f"num_heads must be ≥ 1, got {self.num_heads}")

    def needs(self) -> RewardNeeds:
        K = self.num_heads if self.num_heads is not None else (len(self.head_weights) if self.head_weights else None)
        if self.kind == "mse":
            return RewardNeeds(extras=("targets",), num_heads=K)
        return RewardNeeds(optional=("targets",) + (("margin",) if self.use_margin else ()), num_heads=K)

    def _terms(self, s: RewardScores) -> tuple[Tensor, Tensor]:
        """Per-(row, head) losses ℓ [B, K] (0 where masked) and the mask m [B, K]."""
        t = s.extras.get("targets")
        t = torch.ones_like(s.chosen) if t is None else t.to(s.chosen.dtype).reshape(s.chosen.shape)
        m = ~torch.isnan(t)
        t = torch.where(m, t, torch.zeros_like(t))  # a NaN must not reach the graph, even multiplied by 0
        if self.kind == "bt":
            ell = F.binary_cross_entropy_with_logits(bt_delta(s, self.use_margin), t, reduction="none")
        else:
            ell = (s.chosen - t) ** 2
        return torch.where(m, ell, torch.zeros_like(ell)), m

    def _weights(self, K: int, like: Tensor) -> Tensor:
        w = self.head_weights if self.head_weights is not None else (1.0 / K,) * K
        return torch.tensor(w, dtype=like.dtype, device=like.device)  # [K]

    def _per_example(self, s: RewardScores) -> Tensor:
        ell, m = self._terms(s)  # [B, K]
        n = m.sum(0).clamp(min=1).to(ell.dtype)  # [K] rows labelling each head
        return (ell * (self._weights(s.num_heads, ell) * s.batch_size / n)).sum(1)  # [B]

    def metrics(self, s: RewardScores) -> dict[str, float]:
        ell, m = self._terms(s)
        out: dict[str, float] = {}
        if self.kind == "bt":
            out.update(pair_metrics(s.chosen, s.rejected))
            t = s.extras.get("targets")
            t = torch.ones_like(s.chosen) if t is None else t.reshape(s.chosen.shape)
            win = ((s.chosen > s.rejected) == (t > 0.5)).double()
            decided = m & (t != 0.5)
        for k in range(s.num_heads):
            mk = m[:, k]
            if not mk.any():
                continue
            out[f"head{k}/loss"] = ell[mk, k].mean().item()
            if self.kind == "bt":
                if decided[:, k].any():
                    out[f"head{k}/accuracy"] = win[decided[:, k], k].mean().item()
            else:
                out.update(scored_metrics(s.chosen[mk, k], s.extras["targets"].reshape(s.chosen.shape)[mk, k],
                                          prefix=f"head{k}/"))
        if self.kind == "bt" and decided.any():
            out["accuracy"] = win[decided].mean().item()  # agreement with each head's label, labelled heads only
        return out
