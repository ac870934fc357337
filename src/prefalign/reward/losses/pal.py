"""PAL-A: a pluralistic reward model of users as mixtures of K prototype ideal points (Chen et al., "PAL: Pluralistic
Alignment Framework for Learning from Heterogeneous Preferences"; catalogue #45).

    f(h)  = projection of the pooled features h [H] → [D]     (linear, or a one-hidden-layer MLP: mlp_hidden)
    u_i   = softmax(w_i)·P                                     (P [K, D] prototypes, w [U, K] user weights)
    logit = ‖f(h_r) − u_i‖ − ‖f(h_c) − u_i‖                    (> 0 when the chosen is CLOSER to u_i's ideal point)
    ℓ     = BCE(logit, 1) = −log σ(logit)
    reward of y for user i = −‖f(h_y) − u_i‖

Source: the rule as the catalogue records it from RamyaLab/pluralistic-alignment ``src/pal_rm_a/learner.py``,
``userLearner.py`` (not available here; written from that description). Our choices: Euclidean (not squared)
distance with no temperature (a linear f can learn the scale); f linear by default; P ~ N(0, 1), w ~ N(0, 0.1²).
PAL-B (ideal points conditioned on the prompt, cosine variant) is NOT built: its exact form is not clear from the
catalogue. A new user needs only w: ``fit_new_user``. The score head's outputs (``chosen``) are not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefalign.reward.losses.base import RewardLoss, RewardNeeds, RewardScores, register


def _dist(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distance over the last dim; smooth at 0 (the norm's gradient is undefined there)."""
    return ((a - b).pow(2).sum(-1) + 1e-12).sqrt()


class PALModule(nn.Module):
    """PAL-A's parameters: projection f, prototypes P [K, D], user weights w [U, K]."""

    def __init__(self, hidden_size: int, dim: int, num_prototypes: int, num_users: int, mlp_hidden: int = 0):
        super().__init__()
        self.proj = (nn.Linear(hidden_size, dim) if not mlp_hidden else
                     nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, dim)))
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim))  # [K, D]
        self.user_logits = nn.Parameter(0.1 * torch.randn(num_users, num_prototypes))  # [U, K]

    def ideal(self, user: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
        """Ideal points [B, D] of known users (ids [B]) or of given user weights ([K] or [B, K])."""
        w = self.user_logits[user] if weights is None else weights
        return torch.softmax(w, -1) @ self.prototypes.to(w.dtype)

    def reward(self, h: Tensor, user: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
        """[B] reward −‖f(h) − u‖ of sequences with pooled features h [B, H]."""
        return -_dist(self.proj(h), self.ideal(user, weights))

    def logit(self, h_a: Tensor, h_b: Tensor, user: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
        """[B] logit of P(a ≻ b | user) = ‖f(h_b) − u‖ − ‖f(h_a) − u‖."""
        u = self.ideal(user, weights)
        return _dist(self.proj(h_b), u) - _dist(self.proj(h_a), u)


@register
@dataclass
class PAL(RewardLoss):
    name = "pal"
    summary = "PAL-A: users as mixtures of prototype ideal points; −log σ(‖f(y_r) − u‖ − ‖f(y_c) − u‖)"
    rows = "pairs"

    num_users: int  # required: the number of distinct users in the data (extras["user"] in 0..num_users−1)
    num_prototypes: int = 3  # K
    dim: int = 16  # D, the ideal-point space
    mlp_hidden: int = 0  # 0: f is linear H → D; > 0: Linear → GELU → Linear with this width

    def validate(self) -> None:
        for f in ("num_users", "num_prototypes", "dim"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be ≥ 1, got {getattr(self, f)}")
        if self.mlp_hidden < 0:
            raise ValueError(f"mlp_hidden must be ≥ 0, got {self.mlp_hidden}")

    def needs(self) -> RewardNeeds:
        return RewardNeeds(features=True, extras=("user",), num_heads=None)

    def module(self, hidden_size: int) -> PALModule:
        if getattr(self, "_module", None) is None or self._hidden != hidden_size:
            self._module = PALModule(hidden_size, self.dim, self.num_prototypes, self.num_users, self.mlp_hidden)
            self._hidden = hidden_size
        return self._module

    def _logit(self, s: RewardScores) -> Tensor:
        mod = getattr(self, "_module", None)
        if mod is None:
            raise ValueError("reward loss 'pal' owns parameters: call loss.module(hidden_size) and train them")
        user = s.extras["user"].long()
        if user.numel() and (user.min() < 0 or user.max() >= self.num_users):
            raise ValueError(f"reward loss 'pal': user ids must be in 0..{self.num_users - 1}")
        dtype = next(mod.parameters()).dtype
        return mod.logit(s.features_chosen.to(dtype), s.features_rejected.to(dtype), user)  # [B]

    def _per_example(self, s: RewardScores) -> Tensor:
        return -F.logsigmoid(self._logit(s))

    def compute(self, s: RewardScores) -> tuple[Tensor, dict[str, float]]:
        z = self._logit(s)
        w = torch.softmax(self._module.user_logits.detach(), -1)
        return -F.logsigmoid(z).mean(), {
            "accuracy": (z > 0).double().mean().item(), "margin": z.detach().mean().item(),
            "user_weight_entropy": -(w * w.clamp_min(1e-12).log()).sum(-1).mean().item(),
        }


def fit_new_user(module: PALModule, chosen: Tensor, rejected: Tensor, steps: int = 200, lr: float = 0.1,
                 l2: float = 1e-3) -> Tensor:
    """Fit only a new user's weights w [K] from a few of their pairs (pooled features chosen, rejected [N, H]),
    the projection and prototypes frozen; Adam on mean −log σ(logit) + l2·‖w‖². Returns w (detached); score with
    ``module.logit(h_a, h_b, weights=w)`` or ``module.reward(h, weights=w)``."""
    with torch.no_grad():
        dtype = module.prototypes.dtype
        fa, fb = module.proj(chosen.to(dtype)), module.proj(rejected.to(dtype))  # [N, D]
        P = module.prototypes.detach()
    w = torch.zeros(P.shape[0], dtype=dtype, device=P.device, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        u = torch.softmax(w, -1) @ P  # [D]
        loss = -F.logsigmoid(_dist(fb, u) - _dist(fa, u)).mean() + l2 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()
