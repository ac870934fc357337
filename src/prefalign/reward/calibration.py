"""Calibration of a pairwise reward model from its scores: ECE, reliability bins, temperature scaling.

A Bradley–Terry reward model predicts P(chosen ≻ rejected) = σ((r_c − r_r)/T) = σ(Δ/T). In a preference set the
outcome is always "chosen wins", so the labels alone are all 1 and a model that says p = 1 for every pair would
look perfect. Which answer is listed first is an artefact of the file, so calibration must not depend on it: we
measure it on the symmetrised set {(σ(Δ/T), y), (σ(−Δ/T), 1 − y)} — both orderings of every pair, y = 1 for
"chosen wins" as labelled. The reliability diagram is then point-symmetric about (0.5, 0.5), and a tie (Δ = 0,
p = 0.5 both ways) lands in the 0.5 bin with accuracy 0.5: a tie is half right, the same rule as the
RewardBench-style accuracy in ``evaluation.py``. Labels may be soft (0.5 = annotators tied).

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", §4.2) fits one T > 0 on
held-out pairs by minimising the NLL of σ(Δ/T); it rescales confidence and never changes which answer ranks
higher, so accuracy is unchanged. ``reward_stats.json`` stores T with the reward mean and std (keys "mean" and
"std" are read by the reward-normalisation transform too — do not rename them).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch

from prefalign.errors import UserError

T_MIN, T_MAX = 1e-3, 1e3  # fit_temperature clamps to this range (separable data wants T → 0, random data T → ∞)
STATS_FILE = "reward_stats.json"
DEFAULTS = {"mean": 0.0, "std": 1.0, "temperature": 1.0}  # the identity calibration, when no file was saved


def as_vector(x, name: str) -> torch.Tensor:
    """A finite, non-empty float64 vector [N] from a list or tensor (scores, margins, probs)."""
    t = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has NaN or inf values")
    return t


def _labels(labels, n: int) -> torch.Tensor:
    if labels is None:  # the preference-file convention: chosen won every pair
        return torch.ones(n, dtype=torch.float64)
    y = as_vector(labels, "labels")
    if y.numel() != n or ((y < 0) | (y > 1)).any():
        raise ValueError(f"labels must be {n} values in [0, 1], got {y.numel()} in [{y.min():g}, {y.max():g}]")
    return y


def _scaled(margins, temperature: float) -> torch.Tensor:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    return as_vector(margins, "margins") / temperature


def pairwise_probs(margins, temperature: float = 1.0) -> torch.Tensor:
    """P(chosen ≻ rejected) = σ(Δ / T) for margins Δ = r_c − r_r; float64 [N]."""
    return torch.sigmoid(_scaled(margins, temperature))


def symmetrise(margins, labels=None, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2N (probability, label) points of both orderings: (σ(Δ/T), y) then (σ(−Δ/T), 1 − y)."""
    p = pairwise_probs(margins, temperature)
    y = _labels(labels, p.numel())
    return torch.cat([p, 1 - p]), torch.cat([y, 1 - y])


def _bin_index(probs: torch.Tensor, n_bins: int, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin of every prob and the bin edges; bin i is [e_i, e_{i+1}), the last one closed."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "uniform":
        edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins  # exactly i/n: 0.9 is on an edge, not near it
    elif strategy == "quantile":  # equal-count bins; repeated values can merge edges, leaving fewer bins
        edges = torch.quantile(probs, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)).unique()
        if edges.numel() < 2:  # all probs identical: one bin [p, p]
            edges = edges.repeat(2)
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    return torch.bucketize(probs, edges[1:-1], right=True), edges


def reliability_bins(probs, labels, n_bins: int = 10, strategy: str = "uniform"
                     ) -> list[tuple[float, float, float, float, int]]:
    """(bin_lo, bin_hi, mean_conf, accuracy, count) for each non-empty bin, in order.

    ``probs`` are predicted P(label = 1), ``labels`` the outcomes (0/1, or soft in [0, 1]); for pairs pass
    ``symmetrise(margins)``. Empty bins are left out: they weigh nothing in the ECE.
    """
    p = as_vector(probs, "probs")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probs must lie in [0, 1]")
    y = _labels(labels, p.numel())
    idx, edges = _bin_index(p, n_bins, strategy)
    out = []
    for b in range(edges.numel() - 1):
        m = idx == b
        c = int(m.sum())
        if c:
            out.append((float(edges[b]), float(edges[b + 1]), float(p[m].mean()), float(y[m].mean()), c))
    return out


def ece(probs, labels, n_bins: int = 10, strategy: str = "uniform") -> float:
    """Expected calibration error Σ_b (n_b / N)·|accuracy_b − mean_conf_b| over the bins of ``reliability_bins``."""
    bins = reliability_bins(probs, labels, n_bins, strategy)
    n = sum(b[4] for b in bins)
    return sum(b[4] / n * abs(b[3] - b[2]) for b in bins)


def pairwise_ece(margins, labels=None, temperature: float = 1.0, n_bins: int = 10, strategy: str = "uniform") -> float:
    """ECE of σ(Δ/T) on the symmetrised pairs (see the module docstring)."""
    return ece(*symmetrise(margins, labels, temperature), n_bins=n_bins, strategy=strategy)


def pairwise_nll(margins, labels=None, temperature: float = 1.0) -> float:
    """Mean −[y·log σ(Δ/T) + (1 − y)·log σ(−Δ/T)] in nats; the same on both orderings, so no symmetrising."""
    z = _scaled(margins, temperature)
    y = _labels(labels, z.numel())
    return float((y * torch.nn.functional.softplus(-z) + (1 - y) * torch.nn.functional.softplus(z)).mean())


def fit_temperature(margins, labels=None) -> float:
    """T minimising the NLL of σ(Δ/T) on held-out pairs (labels default to 1: chosen won), clamped to [T_MIN, T_MAX].

    The NLL is convex in β = 1/T (a one-feature logistic regression without intercept), hence unimodal in log T,
    so a golden-section search on log T over the clamp range finds its minimum without step sizes or restarts;
    the two ends are compared at the finish so that a clamped answer is exactly T_MIN or T_MAX. Edge cases:
    all margins 0 → 1.0 (the NLL is ln 2 for every T: no information); perfectly separable pairs → T_MIN
    (the NLL keeps falling as T → 0); a model no better than chance → T_MAX (p ≈ 0.5 everywhere — T cannot flip
    a sign). Callers can detect a clamp with ``T in (T_MIN, T_MAX)``.
    """
    d = as_vector(margins, "margins")
    y = _labels(labels, d.numel())
    if not d.abs().max() > 0:
        return 1.0
    nll = lambda s: pairwise_nll(d, y, math.exp(s))  # noqa: E731
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > 1e-7:  # ~50 steps over a 13.8-wide interval
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    ends = [(pairwise_nll(d, y, t), t) for t in (T_MIN, T_MAX)]
    return min([(fa, min(max(math.exp(a), T_MIN), T_MAX))] + ends)[1]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then os.replace it in: a reader sees the old file or the
    new one, never half of one; on failure the temp file is removed and the old file is left as it was."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_calibration(folder: str | Path, temperature: float, mean: float, std: float,
                     extra: dict | None = None) -> Path:
    """Write ``folder/reward_stats.json`` = {"mean", "std", "temperature", **extra} atomically; returns its path.

    ``mean``/``std`` are the reward statistics over the scored sequences (for normalising r → (r − mean)/std),
    ``temperature`` the fitted T. ``extra`` (e.g. {"n_pairs": 512, "ece_before": ..., "ece_after": ...}) must be
    JSON-serialisable and may not reuse the three core keys.
    """
    core = {"mean": mean, "std": std, "temperature": temperature}
    for k, v in core.items():
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ValueError(f"{k} must be a finite number, got {v!r}")
    if not (temperature > 0 and std >= 0):
        raise ValueError(f"need temperature > 0 and std >= 0, got temperature={temperature}, std={std}")
    clash = set(extra or {}) & set(core)
    if clash:
        raise ValueError(f"extra may not set {sorted(clash)}; pass them as arguments")
    text = json.dumps({**{k: float(v) for k, v in core.items()}, **(extra or {})}, indent=1, allow_nan=False)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write(folder / STATS_FILE, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def load_calibration(folder: str | Path) -> dict | None:
    """The dict in ``folder/reward_stats.json``, or None if there is none (then ``DEFAULTS`` is the identity).

    "mean" and "std" are required; "temperature" defaults to 1.0 (a file written only for normalisation).
    A file that is not valid JSON, or whose values are not finite numbers, is a one-line ``UserError``.
    """
    path = Path(folder) / STATS_FILE
    if not path.is_file():
        return None
    fix = "re-run reward calibration or delete the file"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(str(path), f"not valid JSON ({' '.join(str(e).split())})", fix) from None
    if not isinstance(data, dict):
        raise UserError(str(path), f"expected a JSON object, got {type(data).__name__}", fix)
    data = {"temperature": 1.0, **data}
    for k in DEFAULTS:
        v = data.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(str(path), f'"{k}" must be a finite number, got {v!r}', fix)
    if data["temperature"] <= 0 or data["std"] < 0:
        raise UserError(str(path), f"need temperature > 0 and std >= 0, got {data['temperature']}, {data['std']}", fix)
    return data
