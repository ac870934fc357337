"""f-DPG: distributional policy gradient for any f-divergence (Go et al. 2023, "Aligning Language Models with
Preferences through f-divergence Minimization", arXiv 2302.08215; reference code naver/disco,
``disco/tuners/losses/f_divergence.py`` and its subclasses).

Minimise D_f(π_θ ‖ p) towards a normalised target p, with the convention

    D_f(π ‖ p) = E_{y∼p}[ f(t(y)) ],    t = π_θ / p,    f convex, f(1) = 0,

whose gradient, for samples from a proposal q (here the sampling policy π_old; q = π_θ on-policy), is

    ∇_θ D_f = E_{y∼q}[ (π_θ/q) · f′(t) · ∇log π_θ(y) ].

The learning signal is the pseudo-reward R = −f′(t) minus a baseline b (a windowed moving average of past
pseudo-rewards: disco's ``WindowedMovingAverage``, 1024 samples, the value *before* this batch is added, so it is
independent of the batch and the gradient stays unbiased). Per token: ℓ_t = −(π_θ/q)·(R − b)·log π_θ(y_t|·), summed
over the sequence and averaged over sequences (loss_type "sequence"), so Σ_t ∇ℓ_t = −(π/q)(R − b)∇log π_θ(y).

| divergence | D_f(π‖p)           | f(t)                               | f′(t)              | reads log Z? |
|------------|--------------------|------------------------------------|--------------------|--------------|
| ``kl``     | KL(p‖π) (DPG)      | −log t                             | −1/t               | yes: scale   |
| ``rkl``    | KL(π‖p)            | t log t                            | log t + 1          | no           |
| ``js``     | 2·JS(π, p)         | t log(2t/(1+t)) + log(2/(1+t))     | log(2t/(1+t))      | yes          |
| ``tv``     | TV(π, p)           | ½|t − 1|                           | ½ sign(t − 1)      | yes          |

The RLHF target is p(y) = π_ref(y)·e^{r(y)/β} / Z, so log t = log π_θ − (log π_ref + r/β) + log Z with Z unknown.

- ``rkl``: log Z only adds a per-prompt constant to f′, and E_π[c·∇log π] = 0: it cancels like a baseline. Then
  R = r/β − log(π/π_ref) − 1 − log Z, the KL-regularised RLHF reward: rkl-f-DPG is policy gradient on r/β − KL.
- ``kl``: f′ = −p/π scales each prompt's gradient by 1/Z(x): the direction within a prompt does not depend on Z, the
  weighting across prompts and the step size do.
- ``js``, ``tv``: Z sits inside the non-linearity and must be estimated. For strictly convex f (kl, rkl, js) a
  wrong Z does not move the optimum (f′(π/(cp)) = λ on the support ⇒ π ∝ p); for tv it does (any π ≤ c·p minimises
  TV(π, c·p) when c > 1).

Z is estimated per group from the rollout, by importance weights over the group's samples (disco keeps a running
average of the same weights per context): Ẑ(x) = mean_i p̃(y_i)/q(y_i), p̃ = π_ref·e^{r/β}. It is unbiased for Z, but
log Ẑ is biased low for small groups; with q uniform over a finite support it is exact. ``z_estimate="auto"`` uses
it for kl/js/tv and skips it for rkl. (The GDC target p ∝ a·b, with a binary constraint b, is not built here.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prefalign.online.algos.base import OnlineAlgorithm, OnlineNeeds, PolicyBatch, Rollout, register

DIVERGENCES = ("kl", "rkl", "js", "tv")
Z_ESTIMATES = ("auto", "group", "none")


def f_prime(log_t: torch.Tensor, divergence: str) -> torch.Tensor:
    """f′(t) from log t (see the table in the module docstring), elementwise."""
    if divergence == "kl":
        return -torch.exp(-log_t)
    if divergence == "rkl":
        return log_t + 1
    if divergence == "js":
        return math.log(2.0) - torch.nn.functional.softplus(-log_t)  # log(2t/(1+t)) = log 2 − log(1 + 1/t)
    if divergence == "tv":
        return 0.5 * torch.sign(log_t)
    raise ValueError(f"unknown divergence '{divergence}'; known: {', '.join(DIVERGENCES)}")


def f_value(log_t: torch.Tensor, divergence: str) -> torch.Tensor:
    """f(t) from log t, so that D_f(π‖p) = Σ_y p(y) f(π(y)/p(y)) (a diagnostic; elementwise)."""
    t = log_t.exp()
    if divergence == "kl":
        return -log_t
    if divergence == "rkl":
        return t * log_t
    if divergence == "js":
        return t * (f_prime(log_t, "js")) + math.log(2.0) - torch.nn.functional.softplus(log_t)
    if divergence == "tv":
        return 0.5 * (t - 1).abs()
    raise ValueError(f"unknown divergence '{divergence}'; known: {', '.join(DIVERGENCES)}")


def group_log_z(log_w: torch.Tensor, group: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """log of the per-group mean of exp(log_w) over the ``ok`` members, broadcast back: [N] → [N]."""
    _, idx = torch.unique(group, return_inverse=True)  # [N] dense group ids
    n_groups = int(idx.max()) + 1 if idx.numel() else 0
    lw = torch.where(ok, log_w, torch.full_like(log_w, -math.inf))  # [N]
    shift = torch.full((n_groups,), -math.inf, dtype=lw.dtype, device=lw.device).scatter_reduce(0, idx, lw, "amax")  # [P]
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    total = torch.zeros(n_groups, dtype=lw.dtype, device=lw.device).index_add_(0, idx, (lw - shift[idx]).exp())  # [P]
    count = torch.zeros(n_groups, dtype=lw.dtype, device=lw.device).index_add_(0, idx, ok.to(lw.dtype))  # [P]
    return (total.log() - count.clamp(min=1).log() + shift)[idx]  # [N]


@register
@dataclass
class FDPG(OnlineAlgorithm):
    name = "fdpg"

    divergence: str = "js"  # kl | rkl | js | tv; disco's FDPGTuner defaults to JS
    beta: float = 0.1  # target p ∝ π_ref·exp(r/β) (no paper default; prefalign's choice)
    baseline_window: int = 1024  # moving-average baseline over the last N pseudo-rewards (disco: 1024); 0: none
    z_estimate: str = "auto"  # auto | group | none: how log Z of the target is estimated (module docstring)
    loss_type = "sequence"  # fixed (not a field): the per-sequence sum carries the sequence-level gradient exactly

    def __post_init__(self) -> None:
        self._window: list[tuple[float, float]] = []  # running state: (Σ pseudo-reward, count) per past batch

    def needs(self) -> OnlineNeeds:
        return OnlineNeeds(reference=True, old_logp=True)

    def validate(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got '{self.divergence}'")
        if self.z_estimate not in Z_ESTIMATES:
            raise ValueError(f"z_estimate must be one of {', '.join(Z_ESTIMATES)}, got '{self.z_estimate}'")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.baseline_window < 0:
            raise ValueError(f"baseline_window must be >= 0, got {self.baseline_window}")

    # -- running state: the baseline window is part of a checkpoint ---------------------------------------
    def state(self) -> dict:
        return {"window": [list(x) for x in self._window]}

    def load_state(self, state: dict) -> None:
        self._window = [(float(s), float(n)) for s, n in state.get("window", [])]

    def baseline(self) -> float:
        """Mean pseudo-reward over the last ``baseline_window`` samples seen (0 before the first batch)."""
        n = sum(c for _, c in self._window)
        return sum(s for s, _ in self._window) / n if n > 0 else 0.0

    def _push(self, total: float, count: float) -> None:
        if self.baseline_window == 0 or count == 0:
            return
        self._window.append((total, count))
        while len(self._window) > 1 and sum(c for _, c in self._window[1:]) >= self.baseline_window:
            self._window.pop(0)  # whole batches leave the window (exact across processes: sums are reduced)

    # -- the algorithm ---------------------------------------------------------------------------------
    def _target_logp(self, ro: Rollout, logq: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        if ro.ref_logp is None:
            raise ValueError("f-DPG needs Rollout.ref_logp (the target is π_ref·exp(r/β)/Z)")
        m = ro.mask.to(ro.old_logp.dtype)
        r = torch.where(ok, ro.rewards, torch.zeros_like(ro.rewards))  # [N]
        log_p_tilde = (ro.ref_logp * m).sum(-1) + r / self.beta  # [N] unnormalised log target
        use_z = self.z_estimate == "group" or (self.z_estimate == "auto" and self.divergence != "rkl")
        log_z = group_log_z(log_p_tilde - logq, ro.group, ok) if use_z else torch.zeros_like(log_p_tilde)
        return log_p_tilde - log_z  # [N] log p(y), normalised by the estimate

    def advantages(self, ro: Rollout) -> dict[str, torch.Tensor]:
        ok = ~torch.isnan(ro.rewards)  # [N]
        m = ro.mask.to(ro.old_logp.dtype)
        logq = (ro.old_logp * m).sum(-1)  # [N] log q(y): the sampling policy
        target = self._target_logp(ro, logq, ok)  # [N]
        reward = -f_prime(logq - target, self.divergence)  # [N] pseudo-reward at π = q (exact for μ = 1)
        reward = torch.where(ok, reward, torch.zeros_like(reward))
        b = self.baseline() if self.baseline_window > 0 else 0.0
        sums = ro.reduce(torch.stack([reward.sum(), ok.to(reward.dtype).sum()]))  # [2] global Σ R, count
        self._push(float(sums[0]), float(sums[1]))
        base = torch.full_like(reward, b)  # [N]
        adv = torch.where(ok, reward - base, torch.zeros_like(reward))
        return {"advantages": adv, "target_logp": target, "baseline": base, "pseudo_reward": reward}

    def loss(self, b: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        m = b.mask.to(b.logp.dtype)  # [N, T]
        ok = ~torch.isnan(b.rewards)  # [N]
        logpi = (b.logp.detach() * m).sum(-1)  # [N] log π_θ(y), no gradient
        logq = (b.old_logp * m).sum(-1)  # [N]
        target = b.extra["target_logp"]  # [N] log p(y)
        log_t = logpi - target  # [N]
        reward = -f_prime(log_t, self.divergence)  # [N] at the current π (μ > 1 moves it)
        adv = torch.where(ok, reward - b.extra["baseline"], torch.zeros_like(reward))  # [N]
        w = torch.exp(logpi - logq)  # [N] importance weight π_θ/q
        per_token = -(w * adv)[:, None] * b.logp * m  # [N, T]; Σ_t ∇ = −w·A·∇log π_θ(y)
        with torch.no_grad():
            # D_f(π‖p) = E_p[f(t)] = E_q[(π/q) f(t)/t]: a per-batch estimate of the divergence being minimised
            div = (w * f_value(log_t, self.divergence) * torch.exp(-log_t))[ok]
        metrics = {
            "fdpg/pseudo_reward": float(reward[ok].mean()) if ok.any() else float("nan"),
            "fdpg/baseline": float(b.extra["baseline"][0]) if b.rewards.numel() else float("nan"),
            "fdpg/importance_weight": float(w[ok].mean()) if ok.any() else float("nan"),
            f"fdpg/{self.divergence}_estimate": float(div.mean()) if div.numel() else float("nan"),
        }
        return per_token, metrics
