"""The reward contract: ``reward(prompts, completions) -> torch.Tensor [N] float``.

Every scorer (a VADER sentiment score, a user's Python function, a reward-model folder) is a ``RewardFn``:
it takes N prompts and N completions (strings, aligned by index) and returns one float per pair. Batching is
done here, once, so a scorer only implements ``_score`` on one chunk, and what every chunk returns is checked
here: one finite number per pair (a string, ``None``, ``NaN`` or ``inf`` is a one-line ``UserError`` naming the
reward and the item). A user's callable is checked for the ``f(prompts, completions)`` signature when it is
wrapped, before any model is loaded, and an exception it raises becomes ``reward X raised E: message: fix the
function`` (exit 2), not a traceback.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence

import torch

from prefalign.errors import UserError


class RewardFn:
    """Base class: chunks the inputs, calls ``_score`` per chunk and checks what comes back."""

    name: str = "reward"

    def __init__(self, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        out = []
        for i in range(0, len(prompts), self.batch_size):
            p, c = prompts[i : i + self.batch_size], completions[i : i + self.batch_size]
            scores = self._as_scores(self._score(p, c), len(p), i)
            out.append(scores)
        return torch.cat(out) if out else torch.zeros(0)  # [N]

    def _score(self, prompts: list[str], completions: list[str]):  # pragma: no cover - abstract
        raise NotImplementedError

    def _as_scores(self, raw, n: int, offset: int) -> torch.Tensor:
        """``raw`` (a tensor, an array, or a sequence of numbers) as a float32 tensor [n], or a ``UserError``."""
        where, todo = f"reward {self.name}", "return one finite float per (prompt, completion) pair"
        if isinstance(raw, (str, bytes)) or raw is None or isinstance(raw, numbers.Number):
            raise UserError(where, f"returned {_kind(raw)} instead of a list of {n} scores", todo)
        if not isinstance(raw, torch.Tensor) and not hasattr(raw, "__array__"):
            try:
                raw = list(raw)
            except TypeError:
                raise UserError(where, f"returned {_kind(raw)} instead of a list of {n} scores", todo) from None
            for j, v in enumerate(raw):
                if not isinstance(v, numbers.Real) and not (isinstance(v, torch.Tensor) and v.numel() == 1):
                    raise UserError(where, f"returned {_kind(v)} for item {offset + j + 1}, not a number", todo)
            try:
                raw = [float(v) for v in raw]  # numbers and one-element tensors alike
            except OverflowError:
                raise UserError(where, "returned an integer too large for a float", "return finite floats") from None
        try:
            scores = torch.as_tensor(raw, dtype=torch.float32).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError) as e:
            raise UserError(where, f"returned scores that are not numbers ({_first_line(e)})", todo) from None
        if scores.numel() != n:
            raise UserError(where, f"returned {scores.numel()} scores for {n} completions", todo)
        bad = (~torch.isfinite(scores)).nonzero().flatten()
        if bad.numel():
            j = int(bad[0])
            raise UserError(where, f"returned a non-finite score ({float(scores[j])}) for item {offset + j + 1}",
                            "return finite floats")
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class CallableReward(RewardFn):
    """Wraps ``f(prompts, completions) -> list[float]`` (or a tensor/array of N floats)."""

    def __init__(self, fn: Callable, name: str | None = None, batch_size: int = 16):
        super().__init__(batch_size)
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        check_signature(fn, self.name)

    def _score(self, prompts, completions):
        try:
            return self.fn(prompts, completions)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 — the user's code: whatever it raises, it is theirs to fix
            raise UserError(f"reward {self.name}", f"raised {type(e).__name__}: {_first_line(e)}",
                            "fix the function") from e


def check_signature(fn: Callable, name: str) -> None:
    """A ``UserError`` unless ``fn`` can be called as ``fn(prompts, completions)`` (skipped when Python cannot
    tell, e.g. for some builtins)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind([], [])
    except TypeError as e:
        raise UserError(f"reward {name}", f"cannot be called as f(prompts, completions): its signature is "
                        f"{name.split(':')[-1]}{sig} ({e})", "take two lists: prompts and completions") from None


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
