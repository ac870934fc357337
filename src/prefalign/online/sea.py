"""SEA's exploration: an ensemble of reward heads on frozen features, and Thompson-sampled duels (Liu et al. 2024,
"Sample-Efficient Alignment for LLMs", arXiv 2411.01493; reference code sail-sg/oat, ``oat/rm/model.py``
(``EnnEETS.get_duel_actions``, ``EnnEETS.learn``, ``EnnPassive``), ``oat/rm/networks.py`` (``EnsembleModel``),
``oat/exploration.py``).

The contextual dueling bandit: for each prompt, G candidate responses with frozen features φ [G, H]; pick two, ask
the oracle which wins, learn. Pieces, usable by an online method (the policy update on the chosen pair is an
ordinary pairwise objective — DPO/IPO/SLiC — from ``prefalign.objectives``):

- ``RewardEnsemble``: E independent heads r_e(φ) (an MLP d → h → h → 1 per member, or linear with ``hidden=0``),
  each anchored to its own random initialisation θ_e⁰ (a randomised prior, "epistemic neural network").
- ``ensemble_loss``: L = mean_{e,b} −log σ(r_e(φ_w) − r_e(φ_l)) + λ·(B/N)·mean((θ − θ⁰)²), B the batch size and N
  the number of queries asked so far (the prior's weight shrinks as data grows; oat: λ = 0.5, E = 20, Adam 1e-3,
  weight decay 5e-5, 5 SGD steps per round).
- ``thompson_duel``: shuffle the members; y₁ = argmax_y r_{e₁}(y); y₂ = argmax_y r_{e_k}(y) for the first later
  member (k ≤ ``max_try``) whose argmax differs from y₁; optionally the second-best of a member; else y₂ = y₁
  (a clash; oat can then draw y₂ at random, ``random_on_clash``).
- ``passive_duel`` (oat's ``EnnPassive``: the first two candidates, i.e. two samples of the policy) and
  ``uniform_duel`` (two distinct candidates at random), the baselines; ``best_response``: argmax of the mean reward.
- ``label_duels``: the oracle's verdict on each duel from the configured reward (the higher reward wins; a tie, an
  unjudged candidate or a clash y₁ = y₂ gives no label).
- ``EnsembleLearner``: the ensemble with its own Adam (oat: ``rm_lr`` 1e-3, L2 ``rm_wd`` 5e-5) and a replay buffer of
  every labelled duel; ``learn`` takes ``rm_sgd_steps`` steps, each on ``rm_batch_size`` duels drawn uniformly from
  the buffer (oat ``EnnEETS.learn`` on its ``UniformBuffer``, ``train_bs`` 128), N = all queries so far. Its whole
  state (weights, anchor, Adam moments, buffer, N) round-trips through ``state_tensors`` / ``load_state_tensors``.

The registered online algorithm ``sea`` (``online/algos/sea.py``) wires these into the engine.

Shapes: features [P, G, H] (P prompts, G candidates); rewards [E, P, G]; duels ([P], [P]) long.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RewardEnsemble(nn.Module):
    """E reward heads evaluated in one batched pass; ``forward(features [..., H]) → [E, ...]``."""

    def __init__(self, in_dim: int, num_heads: int = 20, hidden: int = 128, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        dims = [in_dim, hidden, hidden, 1] if hidden > 0 else [in_dim, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            # oat's init: normal, σ = 1/(2√d_in), truncated at ±2σ (oat resamples outside; clamped here), zero bias
            w = torch.randn(num_heads, d_in, d_out, generator=generator, dtype=dtype) / (2 * math.sqrt(d_in))
            w = w.clamp(-1 / math.sqrt(d_in), 1 / math.sqrt(d_in))
            self.weights.append(nn.Parameter(w))  # [E, d_in, d_out]
            self.biases.append(nn.Parameter(torch.zeros(num_heads, d_out, dtype=dtype)))  # [E, d_out]
        self.num_heads = num_heads
        self.register_buffer("anchor", self.flat_params().detach().clone())  # θ⁰, the prior each member keeps

    def flat_params(self) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in self.parameters()])

    def regularization(self) -> torch.Tensor:
        """mean((θ − θ⁰)²) over every parameter of every member (oat's ``EnsembleModel.regularization``)."""
        return (self.flat_params() - self.anchor).square().mean()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        lead = features.shape[:-1]
        x = features.reshape(1, -1, features.shape[-1]).expand(self.num_heads, -1, -1)  # [E, M, H]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b[:, None, :], x, w)  # [E, M, d_out]
            if i < len(self.weights) - 1:
                x = F.relu(x)
        return x[..., 0].reshape(self.num_heads, *lead)  # [E, ...]


def ensemble_loss(model: RewardEnsemble, chosen: torch.Tensor, rejected: torch.Tensor, num_queries: int,
                  lam: float = 0.5) -> torch.Tensor:
    """Bradley–Terry on every member plus the anchored prior: mean −log σ(r_w − r_l) + λ·(B/N)·reg.

    ``chosen``/``rejected`` [B, H] features of the duels' winners and losers; ``num_queries`` N ≥ B, all labels so far.
    """
    margin = model(chosen) - model(rejected)  # [E, B]
    bt = -F.logsigmoid(margin).mean()
    return bt + lam * chosen.shape[0] / max(num_queries, 1) * model.regularization()


def thompson_duel(rewards: torch.Tensor, generator: torch.Generator | None = None, max_try: int | None = None,
                  allow_second_best: bool = False, random_on_clash: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """SEA's duel from ensemble rewards [E, P, G] → (first [P], second [P]) candidate indices (oat ``EnnEETS``)."""
    E, P, G = rewards.shape
    max_try = E if max_try is None else max_try
    order = torch.randperm(E, generator=generator)  # members drawn without replacement
    best = rewards.argmax(-1)  # [E, P]
    first = best[order[0]]  # [P]
    second = torch.full_like(first, -1)
    for e in order[1:max_try]:
        take = (best[e] != first) & (second == -1)
        second = torch.where(take, best[e], second)
        if not (second == -1).any():
            break
    if allow_second_best and (second == -1).any():
        runner_up = rewards.argsort(-1)[..., -2]  # [E, P]
        for e in order[:max_try]:
            take = (runner_up[e] != first) & (second == -1)
            second = torch.where(take, runner_up[e], second)
    if random_on_clash and G > 1:
        shift = torch.randint(1, G, (P,), generator=generator)  # uniform over the G − 1 other candidates
        second = torch.where(second == -1, (first + shift) % G, second)
    return first, torch.where(second == -1, first, second)


def passive_duel(num_prompts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two candidates (two on-policy samples): learning without active selection (oat ``EnnPassive``)."""
    return torch.zeros(num_prompts, dtype=torch.long), torch.ones(num_prompts, dtype=torch.long)


def uniform_duel(num_prompts: int, num_candidates: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two distinct candidates uniformly at random per prompt."""
    first = torch.randint(num_candidates, (num_prompts,), generator=generator)
    shift = torch.randint(1, num_candidates, (num_prompts,), generator=generator)
    return first, (first + shift) % num_candidates


def best_response(rewards: torch.Tensor) -> torch.Tensor:
    """argmax over candidates of the ensemble-mean reward, [E, P, G] → [P] (oat ``get_best_action``)."""
    return rewards.mean(0).argmax(-1)


def label_duels(rewards: torch.Tensor, first: torch.Tensor,
                second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The oracle on duels: rewards [P, G] (NaN: not judged), duel indices [P] each → (winner [P], loser [P],
    labelled [P] bool). The higher reward wins; equal rewards, an unjudged side, or y₁ = y₂ give no label (the winner
    and loser are then y₁ and y₂ as given)."""
    rows = torch.arange(rewards.shape[0])
    r1, r2 = rewards[rows, first], rewards[rows, second]
    ok = (first != second) & ~torch.isnan(r1) & ~torch.isnan(r2) & (r1 != r2)
    first_wins = r1 > r2
    return torch.where(first_wins, first, second), torch.where(first_wins, second, first), ok


class EnsembleLearner:
    """The reward ensemble, its optimizer and its replay buffer of labelled duels (features of winner and loser)."""

    def __init__(self, in_dim: int, num_heads: int = 20, hidden: int = 128, lr: float = 1e-3,
                 weight_decay: float = 5e-5, lam: float = 0.5, sgd_steps: int = 5, batch_size: int = 128,
                 buffer_size: int = 0, seed: int = 0):
        self.model = RewardEnsemble(in_dim, num_heads, hidden, generator=torch.Generator().manual_seed(seed))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=weight_decay)  # oat: Adam + L2
        self.lam, self.sgd_steps, self.batch_size, self.buffer_size = lam, sgd_steps, batch_size, buffer_size
        self.won = torch.zeros(0, in_dim)  # [Q, H] the buffer: winners' features
        self.lost = torch.zeros(0, in_dim)  # [Q, H] losers'
        self.num_queries = 0  # N: every label asked so far (the buffer may keep fewer)

    @torch.no_grad()
    def rewards(self, features: torch.Tensor) -> torch.Tensor:
        """[..., H] → [E, ...] every member's reward."""
        return self.model(features.float())

    def add(self, won: torch.Tensor, lost: torch.Tensor) -> None:
        self.won = torch.cat([self.won, won.float()])
        self.lost = torch.cat([self.lost, lost.float()])
        self.num_queries += len(won)
        if self.buffer_size and len(self.won) > self.buffer_size:  # keep the most recent
            self.won, self.lost = self.won[-self.buffer_size :], self.lost[-self.buffer_size :]

    def learn(self, generator: torch.Generator) -> float | None:
        """``sgd_steps`` Adam steps on batches drawn uniformly (with replacement) from the buffer; the last step's
        loss, or None when the buffer is empty."""
        if len(self.won) == 0:
            return None
        with torch.enable_grad():  # (the method's rollout runs under no_grad)
            return self._learn(generator)

    def _learn(self, generator: torch.Generator) -> float | None:
        loss = None
        for _ in range(self.sgd_steps):
            idx = torch.randint(len(self.won), (min(self.batch_size, len(self.won)),), generator=generator)
            loss = ensemble_loss(self.model, self.won[idx], self.lost[idx], self.num_queries, self.lam)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return None if loss is None else float(loss.detach())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"model/{k}": v.detach().clone() for k, v in self.model.state_dict().items()}
        for i, st in self.opt.state_dict()["state"].items():
            out.update({f"opt/{i}/{k}": v.detach().clone() for k, v in st.items()})
        if len(self.won):  # (a zero-size tensor is not stored)
            out["won"], out["lost"] = self.won.clone(), self.lost.clone()
        out["num_queries"] = torch.tensor([self.num_queries], dtype=torch.long)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        sd = self.opt.state_dict()
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt/"):
                _, i, name = k.split("/", 2)
                state.setdefault(int(i), {})[name] = v.clone()
        self.opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
        H = self.won.shape[1]
        self.won = tensors["won"].clone() if "won" in tensors else torch.zeros(0, H)
        self.lost = tensors["lost"].clone() if "lost" in tensors else torch.zeros(0, H)
        self.num_queries = int(tensors["num_queries"][0])
