"""The reward contract: ``reward(prompts, completions) -> torch.Tensor [N] float``.

Every scorer (a VADER sentiment score, a user's Python function, a reward-model folder) is a ``RewardFn``:
it takes N prompts and N completions (strings, aligned by index) and returns one float per pair. Batching is
done here, once, so a scorer only implements ``_score`` on one chunk.
"""

from __future__ import annotations

import math
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
            scores = torch.as_tensor(self._score(p, c), dtype=torch.float32).detach().cpu().reshape(-1)
            if scores.numel() != len(p):
                raise UserError(f"reward {self.name}", f"returned {scores.numel()} scores for {len(p)} completions",
                                "return one float per (prompt, completion) pair")
            out.append(scores)
        return torch.cat(out) if out else torch.zeros(0)  # [N]

    def _score(self, prompts: list[str], completions: list[str]):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class CallableReward(RewardFn):
    """Wraps ``f(prompts, completions) -> list[float]`` (or a tensor/array of N floats)."""

    def __init__(self, fn: Callable, name: str | None = None, batch_size: int = 16):
        super().__init__(batch_size)
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")

    def _score(self, prompts, completions):
        scores = self.fn(prompts, completions)
        if isinstance(scores, torch.Tensor):
            return scores.float()
        scores = [float(s) for s in scores]
        bad = [s for s in scores if not math.isfinite(s)]
        if bad:
            raise UserError(f"reward {self.name}", f"returned a non-finite score ({bad[0]})",
                            "return finite floats")
        return scores


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
