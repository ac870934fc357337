"""Token-level examples: what the data layer hands to batching (ids only; no strings past this point)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PairExample:
    """One preference pair, split into prompt and completions in token space."""

    row: int  # 1-based row number in the source file (for error messages and health reports)
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    extras: dict[str, float] = field(default_factory=dict)  # declared numeric row fields (e.g. pref_prob)
    # Revision rows (FIGA): chosen = the revised answer, rejected = the initial one; 0/1 per completion token:
    # chosen tokens the revision added or changed, rejected tokens it removed (data/revision.py).
    chosen_marks: list[int] | None = None
    rejected_marks: list[int] | None = None
    # Cross-prompt pairs (JPO): the rejected completion's own prompt x₂ (``prompt_ids`` is then the chosen's x₁);
    # None for a same-prompt pair, whose completions share ``prompt_ids``.
    rejected_prompt_ids: list[int] | None = None

    @property
    def cross_prompt(self) -> bool:
        return self.rejected_prompt_ids is not None


@dataclass
class PointExample:
    """One unpaired (point-wise) example: a completion with a desirable/undesirable label."""

    row: int
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class SampleExample:
    """One D2O row: a human negative and K ≥ 1 self-generated samples of the same prompt."""

    row: int
    prompt_ids: list[int]
    rejected_ids: list[int]
    sample_ids: list[list[int]]  # K completions
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class JudgedExample:
    """One CUT row: a completion, scored after the prompt alone and after the prompt with the judgment in context.

    Both sequences end in the same ``completion_ids``, so their per-token log-probs line up position by position."""

    row: int
    prompt_ids: list[int]  # x
    judged_prompt_ids: list[int]  # x with the judgment j in context
    completion_ids: list[int]  # y
    extras: dict[str, float] = field(default_factory=dict)
