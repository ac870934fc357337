"""Reward transforms: rewards built from other rewards, usable wherever a reward is (label, decode, evaluate, RL).

- ``CombinedReward``: Σ_i w_i·r_i. A completion one function cannot judge (None) is left out of the sum, as TRL's
  GRPO does (``nansum`` over functions); it is None (NaN) only when *every* function returned None.
  ``components(...)`` gives each function's values for diagnostics (mean/std per reward function).
- ``NormalizedReward``: (r − mean) / std, the statistics given or read from a reward-model folder's
  ``reward_stats.json`` (``{"mean": …, "std": …}``, written by the reward-model trainer).
- ``LSCReward`` (catalogue #29, "Transforming and Combining Rewards", arXiv 2402.00742): u = log σ(r − r_ref(x)); a
  weighted sum of LSC terms, ``lsc(a) + lsc(b)``, is the paper's AND-like aggregation Σ_i log σ(r_i − r_ref,i).
  Verified (secondary summaries only): the log-sigmoid form and the prompt-specific reference r_ref(x). *Our choice*,
  since the paper's exact r_ref was not verified: r_ref is either given per row (a column) or the *mean* of r over
  the reference samples of the prompt (``stat`` = a quantile q ∈ [0, 1] instead, e.g. 0.5 for the median).
- ``CalibratedReward`` (catalogue #30, InfAlign, arXiv 2412.19792): c(x, y) = P_{y′∼π_ref}[r(x, y′) ≤ r(x, y)], the
  empirical CDF over the prompt's reference samples, ties counted as ≤ (from the paper's abstract); then Φ(c).
  *Our choice*, since the paper's Φ and its parameter are unverified: ``identity`` c; ``exp`` e^{t·c} (best-of-N
  sampling); ``power`` c^t (t = N: the chance of beating N reference samples); ``negexp`` −e^{−t·c} (worst-of-N,
  e.g. best-of-N jailbreaking). ``t`` has no default: the best t grows with N (tests/reward/test_transforms.py).

Reference samples come from a file of TRL n-samples rows ``{"prompt": str, "completions": [str, …]}`` (what
``prefalign sample`` writes; rows of the same prompt are pooled). Their rewards are computed with the transform's
own reward, with the columns of the first row of that prompt in the call, once per prompt (cached); None rewards
are left out. A prompt without reference samples is a ``UserError``.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from prefalign.errors import UserError
from prefalign.reward.base import Columns, RewardFn

STATS_FILE = "reward_stats.json"
PHIS = ("identity", "exp", "power", "negexp")


# ---- pure functions (hand-checkable) ----------------------------------------------------------------------------
def lsc_utility(r: torch.Tensor, r_ref: torch.Tensor) -> torch.Tensor:
    """log σ(r − r_ref) (catalogue #29), NaN where either is NaN."""
    return F.logsigmoid(r - r_ref)


def empirical_cdf(ref: torch.Tensor, r: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """c_n = Σ_j w_j·1[ref_j ≤ r_n] / Σ_j w_j over the finite ref_j (ties count as ≤): ref [m], r [N] -> [N].
    NaN where r_n is NaN or no ref_j is finite."""
    ok = torch.isfinite(ref)
    w = (torch.ones_like(ref) if weights is None else weights.to(ref.dtype)) * ok
    below = (ref[None, :] <= r[:, None]) & ok[None, :]  # [N, m]
    c = (below * w[None, :]).sum(-1) / w.sum()
    return c.masked_fill(torch.isnan(r), float("nan"))


def phi(c: torch.Tensor, kind: str = "identity", t: float | None = None) -> torch.Tensor:
    """Φ(c) (our choice of forms, see the module docstring)."""
    if kind == "identity":
        return c
    if t is None:
        raise ValueError(f"phi={kind} needs t")
    return {"exp": lambda: torch.exp(t * c), "power": lambda: c ** t, "negexp": lambda: -torch.exp(-t * c)}[kind]()


def folder_stats(folder: str | Path) -> tuple[float, float]:
    """(mean, std) from ``folder/reward_stats.json``, or a ``UserError``."""
    path = Path(folder) / STATS_FILE
    where, todo = f"normalize({folder})", "pass normalize(SPEC, mean=M, std=S), or train the reward model again"
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
        mean, std = stats["mean"], stats["std"]
    except FileNotFoundError:
        raise UserError(where, f"the folder has no {STATS_FILE}", todo) from None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(where, f"{STATS_FILE} is not {{'mean': number, 'std': number}} ({type(e).__name__})",
                        todo) from None
    return _number(mean, where, "mean"), _number(std, where, "std")


def _number(v, where: str, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise UserError(where, f"{what} {v!r} is not a finite number", f"give a number for {what}")
    return float(v)


# ---- transforms -------------------------------------------------------------------------------------------------
class CombinedReward(RewardFn):
    """Σ_i w_i·r_i over ``terms`` [(reward, weight)]; see the module docstring for None."""

    accepts = True
    none_why = "no reward function could judge it"

    def __init__(self, terms: Sequence[tuple[RewardFn, float]], names: Sequence[str] | None = None,
                 name: str | None = None):
        super().__init__()
        if not terms:
            raise UserError("reward", "a weighted sum with no terms", "name at least one reward")
        self.rewards = [r for r, _ in terms]
        self.weights = [_number(w, "reward weights", "weight") for _, w in terms]
        self.names = _unique(list(names) if names is not None else [r.name for r in self.rewards])
        self.name = name or " + ".join(f"{w:g}*{n}" for n, w in zip(self.names, self.weights))
        self.requires = tuple(dict.fromkeys(c for r in self.rewards for c in r.requires))

    def owner(self, column: str) -> str:
        return next(r.owner(column) for r in self.rewards if column in r.requires)

    def components(self, prompts, completions, columns=None) -> dict[str, torch.Tensor]:
        return {n: r(prompts, completions, columns, allow_none=True) for n, r in zip(self.names, self.rewards)}

    def combine(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        values = torch.stack([components[n] for n in self.names], -1)  # [N, k]
        total = (values * torch.tensor(self.weights, dtype=values.dtype)).nansum(-1)
        return total.masked_fill(torch.isnan(values).all(-1), float("nan"))  # [N]

    def _call(self, prompts, completions, columns, allow_none):
        return self.combine(self.components(prompts, completions, columns))


class _Wrapped(RewardFn):
    """A transform of one reward: passes every column through to it."""

    accepts = True
    none_why = "the reward, or the reference it is compared with, is None there"

    def __init__(self, base: RewardFn, name: str):
        super().__init__()
        self.base, self.name = base, name
        self.requires = base.requires

    def owner(self, column: str) -> str:
        return self.base.owner(column) if column in self.base.requires else self.name


class NormalizedReward(_Wrapped):
    """(r − mean) / std; ``mean``/``std`` None: read from the base reward-model folder's ``reward_stats.json``."""

    def __init__(self, base: RewardFn, mean: float | None = None, std: float | None = None, name: str | None = None):
        super().__init__(base, name or f"normalize({base.name})")
        if mean is None or std is None:
            folder = Path(base.name)
            if not folder.is_dir():
                raise UserError(self.name, f"'{base.name}' is not a reward-model folder with {STATS_FILE}",
                                "pass normalize(SPEC, mean=M, std=S)")
            stored = folder_stats(folder)
            mean, std = stored[0] if mean is None else mean, stored[1] if std is None else std
        self.mean, self.std = _number(mean, self.name, "mean"), _number(std, self.name, "std")
        if self.std <= 0:
            raise UserError(self.name, f"std {self.std} is not > 0", "give a positive std")

    def _call(self, prompts, completions, columns, allow_none):
        return (self.base(prompts, completions, columns, allow_none=True) - self.mean) / self.std


class ReferenceSamples:
    """Reference completions by prompt, from a file of ``{"prompt", "completions"}`` rows."""

    def __init__(self, path: str | Path):
        from prefalign.data.io import read_table

        self.path = str(path)
        rows, problems = read_table(self.path)
        if problems:
            raise UserError(problems[0][2], "", "fix or remove the row")
        self.completions: dict[str, list[str]] = {}
        for n, row in rows:
            p, cs = row.get("prompt"), row.get("completions")
            if not isinstance(p, str) or not isinstance(cs, list) or not cs or \
                    not all(isinstance(c, str) for c in cs):
                raise UserError(f"{self.path}:row {n}", "is not {'prompt': str, 'completions': [str, ...]}",
                                "give reference samples as `prefalign sample` writes them")
            self.completions.setdefault(p, []).extend(cs)

    def of(self, prompt: str) -> list[str]:
        if prompt not in self.completions:
            raise UserError(f"reference samples {self.path}", f"have no row for the prompt {prompt[:60]!r}",
                            "sample the reference for every prompt you score")
        return self.completions[prompt]


class _Referenced(_Wrapped):
    """A transform that compares r(x, y) with the rewards of the prompt's reference samples."""

    def __init__(self, base: RewardFn, name: str, ref: ReferenceSamples | str | Path | None, ref_column: str):
        super().__init__(base, name)
        self.ref = ReferenceSamples(ref) if isinstance(ref, (str, Path)) else ref
        self.ref_column = ref_column
        if self.ref is None:
            self.requires = tuple(dict.fromkeys((*base.requires, ref_column)))
        self._cache: dict[str, torch.Tensor] = {}  # prompt -> rewards of its reference samples [m] (NaN: None)

    def reference_rewards(self, prompts: list[str], columns: Columns) -> list[torch.Tensor]:
        """Per row, the base rewards of its prompt's reference samples (scored once per prompt)."""
        first = {}
        for i, p in enumerate(prompts):
            if p not in self._cache:
                first.setdefault(p, i)
        if first:
            todo = [(p, self.ref.of(p)) for p in first]
            flat_p = [p for p, cs in todo for _ in cs]
            flat_c = [c for _, cs in todo for c in cs]
            cols = {k: [v[first[p]] for p, cs in todo for _ in cs] for k, v in columns.items()}
            scores = self.base(flat_p, flat_c, cols, allow_none=True).double()
            for (p, _), s in zip(todo, scores.split([len(cs) for _, cs in todo])):
                self._cache[p] = s
        return [self._cache[p] for p in prompts]


class LSCReward(_Referenced):
    """u = log σ(r − r_ref(x)) (catalogue #29); r_ref from ``ref`` samples (``stat``) or the ``ref_column``."""

    def __init__(self, base: RewardFn, ref: ReferenceSamples | str | Path | None = None,
                 ref_column: str = "ref_reward", stat: str | float = "mean", name: str | None = None):
        super().__init__(base, name or f"lsc({base.name})", ref, ref_column)
        q = 0.5 if stat == "median" else stat
        if q != "mean" and not (isinstance(q, numbers.Real) and 0 <= q <= 1):
            raise UserError(self.name, f"stat {stat!r} is not 'mean', 'median' or a quantile in [0, 1]",
                            "e.g. stat=mean or stat=0.5")
        self.stat = q

    def _call(self, prompts, completions, columns, allow_none):
        r = self.base(prompts, completions, columns, allow_none=True).double()
        if self.ref is None:
            r_ref = torch.tensor([_ref_value(v, self.name, self.ref_column, i)
                                  for i, v in enumerate(columns[self.ref_column])], dtype=torch.float64)
        else:
            r_ref = torch.stack([_stat(s, self.stat) for s in self.reference_rewards(prompts, columns)]) \
                if prompts else torch.zeros(0, dtype=torch.float64)
        return lsc_utility(r, r_ref).float()


class CalibratedReward(_Referenced):
    """Φ(c(x, y)) with c the empirical CDF of r under the prompt's reference rewards (catalogue #30)."""

    def __init__(self, base: RewardFn, ref: ReferenceSamples | str | Path | None = None,
                 ref_column: str = "ref_rewards", phi: str = "identity", t: float | None = None,
                 name: str | None = None):
        super().__init__(base, name or f"infalign({base.name})", ref, ref_column)
        if phi not in PHIS:
            raise UserError(self.name, f"unknown phi '{phi}'", f"use one of: {', '.join(PHIS)}")
        if phi != "identity" and t is None:
            raise UserError(self.name, f"phi={phi} needs its parameter t (no default: the paper's is unverified)",
                            "e.g. t=4; larger t for larger N")
        self.phi, self.t = phi, None if t is None else _number(t, self.name, "t")

    def _call(self, prompts, completions, columns, allow_none):
        r = self.base(prompts, completions, columns, allow_none=True).double()
        if self.ref is None:
            refs = [torch.tensor(_ref_list(v, self.name, self.ref_column, i), dtype=torch.float64)
                    for i, v in enumerate(columns[self.ref_column])]
        else:
            refs = self.reference_rewards(prompts, columns)
        c = torch.cat([empirical_cdf(ref, r[i : i + 1]) for i, ref in enumerate(refs)]) if refs else r
        return phi(c, self.phi, self.t).float()


def _stat(s: torch.Tensor, stat) -> torch.Tensor:
    if stat == "mean":
        return s.nanmean()
    return torch.nanquantile(s, float(stat))  # linear interpolation; NaN when no reference reward is finite


def _ref_value(v, where: str, column: str, i: int) -> float:
    if v is None:
        return float("nan")  # no reference for this row: the row is not judged
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise UserError(where, f"column '{column}' item {i + 1} is {v!r}, not a finite number",
                        "give r_ref(x) as a number per row")
    return float(v)


def _ref_list(v, where: str, column: str, i: int) -> list[float]:
    if v is None:
        return []
    if not isinstance(v, (list, tuple)):
        raise UserError(where, f"column '{column}' item {i + 1} is not a list of reference rewards",
                        "give the rewards of the prompt's reference samples as a list per row")
    return [_ref_value(x, where, column, i) for x in v]


def _unique(names: list[str]) -> list[str]:
    """Names made distinct with #2, #3 … (component names key the diagnostics)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out
