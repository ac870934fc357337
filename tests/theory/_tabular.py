"""A tabular policy: one logit per (prompt, response), K responses per prompt, and the exact population loss.

Preference data is not sampled: for every prompt and every ordered pair (i, j), i ≠ j, the pair is shown with
probability 1/(K(K−1)/2) per unordered pair and labelled "i wins" with probability ``win[p, i, j]``. The population
loss of an objective is then Σ_p Σ_{i≠j} win[p,i,j]·ℓ(i ≻ j) / (#pairs), computed with the objective's own
``per_example`` on a PairLogps holding every ordered pair — exact, no sampling.
"""

from __future__ import annotations

import torch

from prefalign.objectives import Objective, PairLogps

f64 = torch.float64


def ordered_pairs(P: int, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt, winner, loser) index vectors for every ordered pair of distinct responses."""
    p, i, j = torch.meshgrid(torch.arange(P), torch.arange(K), torch.arange(K), indexing="ij")
    keep = i != j
    return p[keep], i[keep], j[keep]


def pair_logps(logits: torch.Tensor, ref_logp: torch.Tensor) -> PairLogps:
    """PairLogps for every ordered pair of a [P, K] logit table against [P, K] reference log-probs."""
    P, K = logits.shape
    p, i, j = ordered_pairs(P, K)
    logp = torch.log_softmax(logits, dim=-1)
    return PairLogps(logp[p, i], logp[p, j], ref_logp[p, i], ref_logp[p, j])


def bt_win(r: torch.Tensor) -> torch.Tensor:
    """[P, K, K] Bradley–Terry win probabilities σ(r_i − r_j)."""
    return torch.sigmoid(r[:, :, None] - r[:, None, :])


def population_loss(obj: Objective, logits: torch.Tensor, ref_logp: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    P, K = logits.shape
    p, i, j = ordered_pairs(P, K)
    per_pair = obj(pair_logps(logits, ref_logp)).per_example
    return (win[p, i, j] * per_pair).sum() / (P * K * (K - 1) / 2)


def fit_lbfgs(obj: Objective, ref_logp: torch.Tensor, win: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """Minimise the population loss over the logit table (from the reference) with L-BFGS; returns the logits."""
    logits = ref_logp.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([logits], lr=1, max_iter=iters, tolerance_grad=1e-12, tolerance_change=1e-15,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = population_loss(obj, logits, ref_logp, win)
        loss.backward()
        return loss

    opt.step(closure)
    return logits.detach()


def fit_adam(obj: Objective, ref_logp: torch.Tensor, win: torch.Tensor, checkpoints: list[int], lr: float = 0.1):
    """Adam from the reference; returns the logit table after each number of steps in ``checkpoints``."""
    logits = ref_logp.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    out = []
    for step in range(1, max(checkpoints) + 1):
        opt.zero_grad()
        population_loss(obj, logits, ref_logp, win).backward()
        opt.step()
        if step in checkpoints:
            out.append(logits.detach().clone())
    return out


def random_problem(P: int, K: int, seed: int, reward_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    ref_logp = torch.log_softmax(torch.randn(P, K, generator=g, dtype=f64), dim=-1)
    r = reward_scale * (2 * torch.rand(P, K, generator=g, dtype=f64) - 1)
    return ref_logp, r


def total_variation(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Largest over prompts of ½Σ|π − π*|, for logit tables."""
    return 0.5 * (torch.softmax(logits, -1) - torch.softmax(target, -1)).abs().sum(-1).max()
