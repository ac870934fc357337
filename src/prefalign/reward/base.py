"""The reward contract: ``reward(prompts, completions, columns=None, allow_none=False) -> torch.Tensor [N] float``.

Every scorer (a VADER sentiment score, a user's Python function, a reward-model folder, a verifiable checker, a
transform of other rewards) is a ``RewardFn``: it takes N prompts and N completions (strings, aligned by index) and
returns one float per pair. Batching is done here, once, so a scorer only implements ``_score`` on one chunk, and
what every chunk returns is checked here: one finite number per pair (a string, ``NaN`` or ``inf`` is a one-line
``UserError`` naming the reward and the item).

``columns`` are per-row data fields aligned with the prompts (``{"answer": [...], "solution": [...]}``), the way TRL
passes dataset columns to reward functions as keyword arguments. A scorer declares the columns it ``requires``
(missing → ``UserError`` naming the reward and the column) and the ones it ``accepts`` (passed to ``_score`` as
keyword arguments; ``True``: all of them). A scorer that accepts none is called ``_score(prompts, completions)``, as
before.

``None`` means "cannot judge this completion" (a maths row without an answer). With ``allow_none=True`` it becomes
``NaN`` in the returned tensor (callers that can skip unjudged completions, e.g. online RL, ask for that); with the
default ``allow_none=False`` it stays a ``UserError``, so no caller meets a NaN it did not ask for.

A user's callable is checked for the ``f(prompts, completions, [column params or **kwargs])`` signature when it is
wrapped, before any model is loaded, and an exception it raises becomes ``reward X raised E: message: fix the
function`` (exit 2), not a traceback.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import torch

from prefalign.errors import UserError

Columns = dict[str, list]
_POSITIONAL = ("prompts", "completions")  # never passed as columns: they are the first two arguments


class RewardFn:
    """Base class: checks the inputs, chunks them, calls ``_score`` per chunk and checks what comes back."""

    name: str = "reward"
    requires: tuple[str, ...] = ()  # columns that must be present
    accepts: tuple[str, ...] | bool = ()  # columns passed to ``_score`` as keywords (besides requires); True: all
    none_why: str = ""  # why this scorer returns None, for the error when the caller does not allow it

    def __init__(self, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 columns: Mapping[str, Sequence] | None = None, allow_none: bool = False) -> torch.Tensor:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        columns = self.check_columns(columns, len(prompts))
        out = self._call(prompts, completions, columns, allow_none)  # [N], NaN where not judged
        if not allow_none:
            self._refuse_none(out, 0)
        return out

    def _call(self, prompts: list[str], completions: list[str], columns: Columns, allow_none: bool) -> torch.Tensor:
        """Scores [N] with NaN for None; composites (transforms, weighted sums) override this, not ``__call__``."""
        passed = {k: v for k, v in columns.items() if self.accepts is True or k in self.accepts or k in self.requires}
        out = []
        for i in range(0, len(prompts), self.batch_size):
            p, c = prompts[i : i + self.batch_size], completions[i : i + self.batch_size]
            raw = self._score(p, c, **{k: v[i : i + self.batch_size] for k, v in passed.items()}) if passed \
                else self._score(p, c)
            scores = self._as_scores(raw, len(p), i)
            if not allow_none:  # fail at the first chunk, before scoring the rest
                self._refuse_none(scores, i)
            out.append(scores)
        return torch.cat(out) if out else torch.zeros(0)  # [N]

    def check_columns(self, columns: Mapping[str, Sequence] | None, n: int) -> Columns:
        """``columns`` as a dict of lists of length ``n``; a ``UserError`` if a required one is missing."""
        columns = {str(k): list(v) for k, v in (columns or {}).items() if k not in _POSITIONAL}
        for k, v in columns.items():
            if len(v) != n:
                raise ValueError(f"column '{k}' has {len(v)} values for {n} completions")
        for k in self.requires:
            if k not in columns:
                have = ", ".join(sorted(columns)) or "none"
                raise UserError(f"reward {self.owner(k)}", f"needs the column '{k}' (columns given: {have})",
                                f"give every row the field '{k}'")
        return columns

    def owner(self, column: str) -> str:
        """The name of the (inner) reward that requires ``column``; composites name their component."""
        return self.name

    def components(self, prompts: Sequence[str], completions: Sequence[str],
                   columns: Mapping[str, Sequence] | None = None) -> dict[str, torch.Tensor]:
        """Each reward function's values (NaN where it could not judge), by name; one entry for a plain reward.
        ``combine(components(...))`` is ``self(..., allow_none=True)`` without scoring twice (diagnostics)."""
        return {self.name: self(prompts, completions, columns, allow_none=True)}

    def combine(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return components[self.name]

    def _score(self, prompts: list[str], completions: list[str], **columns):  # pragma: no cover - abstract
        raise NotImplementedError

    def _refuse_none(self, scores: torch.Tensor, offset: int) -> None:
        bad = torch.isnan(scores).nonzero().flatten()
        if bad.numel():
            why = f" ({self.none_why})" if self.none_why else ""
            raise UserError(f"reward {self.name}", f"returned None for item {offset + int(bad[0]) + 1}, not a "
                            f"number{why}", "return one finite float per (prompt, completion) pair")

    def _as_scores(self, raw, n: int, offset: int) -> torch.Tensor:
        """``raw`` (a tensor, an array, or a sequence of numbers or None) as a float32 tensor [n] (None → NaN),
        or a ``UserError``."""
        where, todo = f"reward {self.name}", "return one finite float per (prompt, completion) pair"
        if isinstance(raw, (str, bytes)) or raw is None or isinstance(raw, numbers.Number):
            raise UserError(where, f"returned {_kind(raw)} instead of a list of {n} scores", todo)
        judged = None
        if not isinstance(raw, torch.Tensor) and not hasattr(raw, "__array__"):
            try:
                raw = list(raw)
            except TypeError:
                raise UserError(where, f"returned {_kind(raw)} instead of a list of {n} scores", todo) from None
            for j, v in enumerate(raw):
                if v is not None and not isinstance(v, numbers.Real) and \
                        not (isinstance(v, torch.Tensor) and v.numel() == 1):
                    raise UserError(where, f"returned {_kind(v)} for item {offset + j + 1}, not a number", todo)
            judged = torch.tensor([v is not None for v in raw], dtype=torch.bool)
            try:
                raw = [0.0 if v is None else float(v) for v in raw]  # numbers and one-element tensors alike
            except OverflowError:
                raise UserError(where, "returned an integer too large for a float", "return finite floats") from None
        try:
            scores = torch.as_tensor(raw, dtype=torch.float32).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError) as e:
            raise UserError(where, f"returned scores that are not numbers ({_first_line(e)})", todo) from None
        if scores.numel() != n:
            raise UserError(where, f"returned {scores.numel()} scores for {n} completions", todo)
        bad = (~torch.isfinite(scores)).nonzero().flatten()
        if bad.numel():  # a NaN the scorer computed is a bug, not "cannot judge" (that is None)
            j = int(bad[0])
            raise UserError(where, f"returned a non-finite score ({float(scores[j])}) for item {offset + j + 1}",
                            "return finite floats (None for a completion it cannot judge)")
        return scores if judged is None else scores.masked_fill(~judged, float("nan"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class CallableReward(RewardFn):
    """Wraps ``f(prompts, completions, **columns) -> list[float | None]`` (or a tensor/array of N floats).

    The columns passed are the ones ``f`` names as parameters after the first two (a parameter without a default
    is a required column), or all of them when it takes ``**kwargs``; ``f(prompts, completions)`` gets none."""

    def __init__(self, fn: Callable, name: str | None = None, batch_size: int = 16):
        super().__init__(batch_size)
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        self.requires, self.accepts = check_signature(fn, self.name)

    def _score(self, prompts, completions, **columns):
        try:
            return self.fn(prompts, completions, **columns)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 — the user's code: whatever it raises, it is theirs to fix
            raise UserError(f"reward {self.name}", f"raised {type(e).__name__}: {_first_line(e)}",
                            "fix the function") from e


def check_signature(fn: Callable, name: str) -> tuple[tuple[str, ...], tuple[str, ...] | bool]:
    """(required columns, accepted columns) of ``fn``, or a ``UserError`` unless it can be called as
    ``fn(prompts, completions, **columns)``. Unknown signatures (some builtins) are taken as two lists only."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return (), ()
    params = list(sig.parameters.values())
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    lists = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY, keyword[0])][:2]  # the two lists
    extra = [p for p in params if p not in lists and p.kind in keyword]  # column parameters
    required = tuple(p.name for p in extra if p.default is inspect.Parameter.empty)
    try:
        sig.bind([], [], **{k: [] for k in required})
    except TypeError as e:
        raise UserError(f"reward {name}", f"cannot be called as f(prompts, completions): its signature is "
                        f"{name.split(':')[-1]}{sig} ({e})", "take two lists: prompts and completions") from None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return required, True
    return required, tuple(p.name for p in extra)


def expand_columns(rows: Sequence[Mapping], counts: Sequence[int] | None = None,
                   exclude: Sequence[str] = ("prompt", "completions", "rewards", "chat", "system")) -> Columns:
    """Per-completion columns from per-prompt rows: row i's fields repeated ``counts[i]`` times (1 each by default),
    in the order ``reward(prompts, completions, columns)`` expects; a field some rows lack is None there."""
    counts = [1] * len(rows) if counts is None else list(counts)
    names = sorted({k for row in rows for k in row if k not in exclude and not str(k).startswith("_")})
    return {k: [row.get(k) for row, n in zip(rows, counts) for _ in range(n)] for k in names}


def _kind(v) -> str:
    if v is None:
        return "None"
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, (str, bytes)):
        return f"a {type(v).__name__} ({str(v)[:20]!r})"
    return f"a {type(v).__name__}"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


class VaderReward(RewardFn):
    """VADER compound sentiment of the completion text, in [-1, 1] (rule-based, offline, no model download)."""

    name = "vader"

    def __init__(self, batch_size: int = 256):
        super().__init__(batch_size)
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:
            raise UserError("reward vader", "the vaderSentiment package is not installed",
                            "pip install vaderSentiment") from e
        self.analyzer = SentimentIntensityAnalyzer()

    def _score(self, prompts, completions):
        # The prompt is ignored on purpose: the score is the sentiment of what the model wrote.
        return [self.analyzer.polarity_scores(c)["compound"] for c in completions]
