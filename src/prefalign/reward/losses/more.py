"""MORE: per-dataset Bradley–Terry losses on a shared reward model, weighted by the MGDA min-norm point
(Zeng et al., "On Diversified Preferences of Large Language Model Alignment"; catalogue #44).

    L_k  = mean_{i: source_i = k} −log σ(Δ_i),  Δ_i = r_c,i − r_r,i − m_i      (k over the sources in the batch)
    g_k  = ∇_w L_k = Σ_{i∈k} (−σ(−Δ_i)/n_k)·(h_c,i − h_r,i)                   (linear head r = w·h + b; b cancels)
    λ    = argmin_{λ ∈ simplex} ‖Σ_k λ_k g_k‖²                                (Frank–Wolfe, ``min_norm_weights``)
    loss = Σ_k sg(λ_k)·L_k                                                     (λ detached)

g_k comes from the pooled features the head reads, so it needs no extra backward pass. The catalogue records the
authors' rule as read in dunzeng/MORE ``trainer.py`` (``more_ranking_loss``, ``MinNormSolver.find_min_norm_element_FW``);
that code was not available here, so the solver is the standard MGDA Frank–Wolfe min-norm solver (Sener & Koltun,
NeurIPS 2018), written from its description: start from the best pair (closed form), then step towards the vertex
with the smallest ⟨g_t, Σλg⟩ with exact line search, until the duality gap is below ``tol``. Our choices: no
gradient normalisation; the solve runs in fp64 on the CPU (an n_sources × n_sources Gram matrix).
With a single source in the micro-batch, λ = 1 and the loss is plain BT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefalign.reward.losses.base import RewardLoss, RewardNeeds, RewardScores, pair_metrics, register
from prefalign.reward.losses.bt import bt_delta, bt_nll


def _pair_min(M: Tensor, i: int, j: int) -> tuple[float, float]:
    """min over γ ∈ [0, 1] of ‖γ g_i + (1 − γ) g_j‖² from the Gram matrix: (γ, cost).
    γ = clip((g_j − g_i)·g_j / ‖g_i − g_j‖², 0, 1)."""
    a, b, c = M[i, i].item(), M[i, j].item(), M[j, j].item()
    d = a + c - 2 * b
    g = 0.5 if d <= 1e-30 else min(max((c - b) / d, 0.0), 1.0)
    return g, g * g * a + 2 * g * (1 - g) * b + (1 - g) ** 2 * c


def min_norm_weights(grads: Tensor, max_iter: int = 250, tol: float = 1e-10) -> Tensor:
    """λ ∈ simplex minimising ‖Σ_k λ_k g_k‖² for grads [n, d]; returns λ [n] (fp64, CPU)."""
    G = grads.detach().double().cpu().reshape(grads.shape[0], -1)
    n = G.shape[0]
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    M = G @ G.T  # [n, n] Gram matrix
    best = min(((i, j) + _pair_min(M, i, j) for i in range(n) for j in range(i + 1, n)), key=lambda t: t[3])
    lam = torch.zeros(n, dtype=torch.float64)
    lam[best[0]], lam[best[1]] = best[2], 1 - best[2]
    scale = max(M.diagonal().max().item(), 1e-300)
    for _ in range(max_iter):
        Ml = M @ lam  # [n]: ⟨g_t, v⟩ with v = Σλg
        t = int(torch.argmin(Ml))
        a, b, c = (lam @ Ml).item(), Ml[t].item(), M[t, t].item()
        if a - b <= tol * scale:  # Frank–Wolfe duality gap: v is optimal to within it
            break
        d = a - 2 * b + c
        gamma = 1.0 if d <= 0 else min(max((a - b) / d, 0.0), 1.0)  # exact line search on (1−γ)v + γ g_t
        lam = (1 - gamma) * lam
        lam[t] += gamma
    return lam


@register
@dataclass
class MORE(RewardLoss):
    name = "more"
    summary = "MORE: per-dataset BT losses weighted by the MGDA min-norm point of their head gradients"
    rows = "pairs"

    use_margin: bool = True  # subtract extras["margin"] when present
    max_iter: int = 250  # Frank–Wolfe iterations
    tol: float = 1e-10  # stop when the duality gap < tol · max_k ‖g_k‖²

    def validate(self) -> None:
        if self.max_iter < 1 or not self.tol >= 0:
            raise ValueError(f"max_iter must be ≥ 1 and tol ≥ 0, got {self.max_iter}, {self.tol}")

    def needs(self) -> RewardNeeds:
        return RewardNeeds(features=True, extras=("source",), optional=("margin",) if self.use_margin else ())

    def _solve(self, s: RewardScores) -> tuple[Tensor, ...]:
        """ℓ [B], each row's source index 0..n−1 [B], rows per source [n], λ [n] (detached), source ids [n]."""
        delta = bt_delta(s, self.use_margin)[:, 0]  # [B]
        ell = bt_nll(delta)
        ids, idx = torch.unique(s.extras["source"], return_inverse=True)  # idx [B] in 0..n−1
        n = torch.bincount(idx, minlength=len(ids)).to(ell.dtype)  # [n]
        with torch.no_grad():
            coef = -torch.sigmoid(-delta) / n[idx]  # [B] ∂L_k/∂r_c,i (= −∂L_k/∂r_r,i)
            dh = (s.features_chosen - s.features_rejected).to(coef.dtype)  # [B, H]
            G = torch.zeros(len(ids), dh.shape[1], dtype=coef.dtype, device=dh.device)
            G.index_add_(0, idx, coef[:, None] * dh)  # [n, H] head gradients g_k
            lam = min_norm_weights(G, self.max_iter, self.tol).to(ell.device, ell.dtype)
        return ell, idx, n, lam, ids

    def _per_example(self, s: RewardScores) -> Tensor:
        ell, idx, n, lam, _ = self._solve(s)
        return ell * (lam / n)[idx] * s.batch_size  # mean over rows = Σ_k λ_k L_k

    def compute(self, s: RewardScores) -> tuple[Tensor, dict[str, float]]:
        ell, idx, n, lam, ids = self._solve(s)
        per_source = torch.zeros_like(n).index_add(0, idx, ell) / n  # [n] L_k
        loss = (lam * per_source).sum()
        m = pair_metrics(s.chosen, s.rejected)
        for k, sid in enumerate(ids.tolist()):
            m[f"lambda/{sid}"] = lam[k].item()
            m[f"loss/{sid}"] = per_source[k].item()
        return loss, m
