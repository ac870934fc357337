"""DAEMON: decoding as direct metrics optimisation (arXiv 2310.01041), as summarised in methods.md #40.

The target distribution is the energy-based model
    q(y) ∝ p(y) · exp(−μᵀ f(y)),
with f(y) ∈ R^d metrics of a text (repetition, length, coherence …) and μ chosen so that E_q[f] equals the
metric expectations measured on human text. q is the I-projection of p onto {E[f] = target}, so μ minimises
the convex dual  D(μ) = log E_p[exp(−μᵀf)] + μᵀ·target  (gradient: target − E_q[f]). E_p is estimated with
samples from p (self-normalised importance sampling); decoding draws n candidates from p per prompt and
resamples one with weights ∝ exp(−μᵀf) (sampling-importance-resampling).

A consequence checked in the tests: E_h[log q] − E_h[log p] = KL(q ‖ p) ≥ 0 for any h with E_h[f] = target,
so q fits human text at least as well as p does.
The rule is from a secondary summary, not the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from prefalign.decode.generate import GenOptions, sample
from prefalign.errors import UserError


@dataclass
class DaemonConfig:
    features: str = field(default="", metadata={
        "help": "'module:function' f(prompts, completions) -> [N, d] metric values of each completion"})
    target: list | None = field(default=None, metadata={"help": "d target expectations (human-text metrics)"})
    mu: list | None = field(default=None, metadata={"help": "fixed μ (d floats); None = fit on the candidates"})
    n: int = field(default=8, metadata={"help": "candidates sampled per prompt for resampling"})


def fit_mu(features: torch.Tensor, target: torch.Tensor, log_weights: torch.Tensor | None = None,
           iters: int = 100, tol: float = 1e-10) -> torch.Tensor:
    """μ [d] with E_q[f] = target, q ∝ w·exp(−μᵀf), from features [M, d] (and log base weights [M]).

    Damped Newton on the convex dual (Hessian = Cov_q[f]), in float64; d is small.
    """
    f = features.double()  # [M, d]
    t = torch.as_tensor(target, dtype=torch.float64).reshape(-1)  # [d]
    lw = torch.zeros(f.shape[0], dtype=torch.float64) if log_weights is None else log_weights.double()

    def dual(mu: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(lw - f @ mu, 0) + mu @ t  # log normaliser is constant in μ

    mu = torch.zeros(f.shape[1], dtype=torch.float64)
    for _ in range(iters):
        q = torch.softmax(lw - f @ mu, 0)  # [M] tilted weights
        mean = q @ f  # [d] E_q[f]
        grad = t - mean
        if grad.abs().max() < tol:
            break
        cov = (f - mean).T @ ((f - mean) * q[:, None])  # [d, d] Cov_q[f]
        step = torch.linalg.solve(cov + 1e-12 * torch.eye(len(t), dtype=torch.float64), grad)
        lr, value = 1.0, dual(mu)
        while dual(mu - lr * step) > value - 1e-4 * lr * (grad @ step) and lr > 1e-8:  # Armijo backtracking
            lr /= 2
        mu = mu - lr * step
    return mu.to(features.dtype)


def sir_select(features: torch.Tensor, mu: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Resample one candidate per prompt: features [P, n, d] -> index [P], P(i) ∝ exp(−μᵀf_i)."""
    logits = -(features.double() @ mu.double())  # [P, n] importance weights q/p, up to a constant
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]


def daemon_decode(model, tokenizer, prompts: Sequence[str], opts: GenOptions,
                  cfg: DaemonConfig) -> tuple[list[str], list[dict]]:
    from prefalign.reward.load import import_callable

    if not cfg.features:
        raise UserError("daemon", "no features function given", "set hparam features='module:function'")
    feature_fn = import_callable(cfg.features, where="daemon features")
    n = cfg.n
    repeated = [p for p in prompts for _ in range(n)]
    drawn = sample(model, tokenizer, repeated, opts)
    texts, counts = drawn.texts, drawn.counts
    feats = torch.as_tensor(feature_fn(repeated, texts), dtype=torch.float64).reshape(len(repeated), -1)  # [P*n, d]
    if cfg.mu is not None:
        mu = torch.tensor(_floats(cfg.mu), dtype=torch.float64)
    elif cfg.target is not None:
        mu = fit_mu(feats, torch.tensor(_floats(cfg.target), dtype=torch.float64))  # candidates estimate E_p
    else:
        raise UserError("daemon", "neither target nor mu given", "set hparam target=[...] (or mu=[...])")
    if mu.numel() != feats.shape[1]:
        raise UserError("daemon", f"{mu.numel()} values in target/mu for {feats.shape[1]} features",
                        "give one value per feature")
    achieved = torch.softmax(-(feats @ mu), 0) @ feats  # [d] E_q[f] on these candidates
    # A target outside the candidates' convex hull cannot be matched (μ runs off); report the gap.
    gap = None if cfg.target is None else float((achieved - torch.tensor(_floats(cfg.target))).abs().max())
    generator = torch.Generator().manual_seed(opts.seed + 1)  # resampling has its own stream
    chosen = sir_select(feats.view(len(prompts), n, -1), mu, generator)  # [P]
    completions, info = [], []
    for i, j in enumerate(chosen.tolist()):
        completions.append(texts[i * n + j])
        info.append({"features": feats[i * n + j].tolist(), "chosen": j, "n": n, "tokens": counts[i * n + j],
                     "mu": mu.tolist(), "tilted_means": achieved.tolist(), "moment_gap": gap})
    return completions, info


def _floats(value) -> list[float]:
    """A list of floats from a list, one number, or a CLI string "0.1,0.2"."""
    if isinstance(value, str):
        value = value.split(",")
    elif not isinstance(value, (list, tuple)):
        value = [value]
    try:
        return [float(v) for v in value]
    except ValueError as e:
        raise UserError("daemon", f"cannot read numbers from {value!r}", "give floats like 0.1,0.2") from e
