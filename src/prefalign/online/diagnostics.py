"""What a rollout says about the run, as metrics (global over processes) and warnings — the numbers TRL users keep
asking for when "the loss is 0" (with μ = 1 and β = 0 the ratio is 1 and the advantages are centred, so the loss is
≈ 0 by construction while the gradient is not; the policy-gradient norm is the engine's ``grad_norm``):

- ``reward`` / ``reward_std`` and the same per reward function (``reward/<name>``);
- ``frac_reward_zero_std``: groups whose rewards are all equal (no signal for a group baseline) — warned when all are;
- ``completion_length`` mean / min / max and ``truncated_fraction``;
- ``kl/k1`` ``kl/k2`` ``kl/k3``: KL(π‖π_ref) per token by each estimator, on the sampled tokens;
- ``sampler/logq_gap``: mean |log q − log π_old| per token between the sampler's recorded log-probs and the training
  path's (≈ 0: both paths agree; large: the sampler drifted, e.g. a different precision);
- ``advantage_std``, ``judged_fraction`` (completions some reward could judge).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _global_mean_std(x: torch.Tensor, reduce: Callable) -> tuple[float, float, float]:
    """(mean, std, count) of the finite entries of x over every process."""
    ok = torch.isfinite(x)
    v = torch.where(ok, x.double(), 0.0)
    s = reduce(torch.stack([ok.sum().double(), v.sum(), (v * v).sum()]))
    n = float(s[0])
    if n == 0:
        return float("nan"), float("nan"), 0.0
    mean = float(s[1]) / n
    var = max(float(s[2]) / n - mean * mean, 0.0)
    return mean, var**0.5, n


def rollout_metrics(buf: dict, parts: dict, G: int, reduce: Callable, warn: Callable[[str, str], None]) -> dict:
    out: dict[str, float] = {}
    out["reward"], out["reward_std"], judged = _global_mean_std(buf["rewards"], reduce)
    n_all = float(reduce(torch.tensor([float(buf["rewards"].numel())], dtype=torch.float64))[0])
    out["judged_fraction"] = judged / max(n_all, 1.0)
    for name in parts:
        m, s, _ = _global_mean_std(buf[f"reward/{name}"], reduce)
        out[f"reward/{name}"], out[f"reward_std/{name}"] = m, s
    r = buf["rewards"].view(-1, G)  # [P, G]
    filled = torch.where(torch.isnan(r), r.nanmean(-1, keepdim=True), r)
    zero = ((filled.max(-1).values - filled.min(-1).values).abs() <= 1e-12) | torch.isnan(filled).all(-1)
    counts = reduce(torch.tensor([float(zero.sum()), float(zero.numel())], dtype=torch.float64))
    out["frac_reward_zero_std"] = float(counts[0] / counts[1].clamp(min=1))
    if out["frac_reward_zero_std"] == 1.0 and G > 1:
        warn("zero_std", "every group of this rollout has equal rewards: group-baseline advantages are all 0 and "
             "the policy gets no signal (make the task harder or easier, raise num_generations or temperature)")
    mask = buf["mask"]
    lengths = mask.sum(-1).double()
    s = reduce(torch.stack([lengths.sum(), buf["truncated"].double().sum(), torch.tensor(float(lengths.numel()),
                                                                                         dtype=torch.float64)]))
    out["completion_length"] = float(s[0] / s[2])
    out["truncated_fraction"] = float(s[1] / s[2])
    out["completion_length_min"] = float(lengths.min())  # this process's (a sum-reduce has no min)
    out["completion_length_max"] = float(lengths.max())
    tokens = float(reduce(mask.sum().double().reshape(1))[0])

    def token_mean(x: torch.Tensor) -> float:
        return float(reduce((x.double() * mask).sum().reshape(1))[0]) / max(tokens, 1.0)

    if "old_logp" in buf:
        out.update({k: token_mean(v) for k, v in _per_token(buf["old_logp"], buf["logq"], buf.get("ref_logp")).items()})
    adv = buf["advantages"]
    adv_seq = adv if adv.dim() == 1 else (adv * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    out["advantage_std"] = _global_mean_std(adv_seq, reduce)[1]
    return out


def _per_token(logp: torch.Tensor, logq: torch.Tensor | None, ref_logp: torch.Tensor | None) -> dict:
    """[N, T] per-token KL by each estimator (with a reference) and the sampler-vs-trainer gap."""
    out = {}
    if ref_logp is not None:
        from prefalign.online.kl import kl_per_token

        out.update({f"kl/{e}": kl_per_token(logp, ref_logp, e) for e in ("k1", "k2", "k3")})
    if logq is not None:
        out["sampler/logq_gap"] = (logq - logp).abs()
    return out


def sampling_metrics(logp: torch.Tensor, logq: torch.Tensor | None, ref_logp: torch.Tensor | None,
                     mask: torch.Tensor) -> dict[str, float]:
    """The same per-token diagnostics from a micro-batch of the first update of a rollout, where the policy is still
    the sampling policy (GRPO without an extra rollout pass): token means over this micro-batch."""
    m = mask.to(logp.dtype)
    n = m.sum().clamp(min=1)
    return {k: float((v.to(logp.dtype) * m).sum() / n) for k, v in _per_token(logp, logq, ref_logp).items()}
