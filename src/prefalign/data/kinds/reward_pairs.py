"""Reward-model pair rows: TRL's preference formats, unchanged (``paired``'s validation: plain or chat, implicit
prompt, n-sample rows as best vs worst, cross-prompt pairs), each side scored whole by a reward model.

Each side is rendered as ``reward.model.reward_ids`` renders a (prompt, completion) for scoring — a user turn and
an assistant turn with a chat template — so a model is trained on exactly the sequences ``ModelReward`` scores.
The example's ``prompt_ids`` is the longest common token prefix of the two sequences (at least one token of each
completion left after it): the ``shared_prefix`` layout runs it once, and every layout scores each sequence at its
own last token.

Optional columns (the one-line problems name row and field):

- ``margin``: a finite number, subtracted from r_c − r_r by the ``bt`` loss (TRL's column);
- ``source`` (or ``dataset``): a string or integer naming the row's subset (MORE's per-source weights; per-source
  accuracy in evaluation);
- ``user_id``: a string or integer naming the annotator (PAL);
- ``targets``: a list of K numbers in [0, 1] (or null): per-head probability that the chosen wins (``multihead``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prefalign.data.kinds.base import Encoded, register
from prefalign.data.kinds.paired import Paired
from prefalign.data.types import PairExample

OPTIONAL = ("margin", "source", "dataset", "user_id", "targets")


@dataclass
class RewardPairExample(PairExample):
    """``prompt_ids`` + ``chosen_ids`` and ``prompt_ids`` + ``rejected_ids`` are the two scored sequences."""

    margin: float | None = None
    source: str | None = None
    user: str | None = None
    targets: list[float] | None = None
    source_id: int = -1  # set by the training method from the run's sources / users
    user_id: int = -1


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        x = float(v)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _got(v) -> str:
    return type(v).__name__ if not isinstance(v, (int, float)) or isinstance(v, bool) else repr(v)[:40]


def _name(where: str, field: str, v, problems: list) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)) or (isinstance(v, str) and not v.strip()):
        problems.append(("wrong type", f"{where}: field '{field}': expected a non-empty string or an integer, "
                         f"got {_got(v) if not isinstance(v, str) else 'an empty string'}"))
        return None
    return str(v)


def number_list(where: str, field: str, v, problems: list, low: float | None = None, high: float | None = None,
                nulls: bool = True) -> list[float] | None:
    """A non-empty list of finite numbers (null → NaN when ``nulls``; at least one number), or a problem."""
    if not isinstance(v, list) or not v:
        problems.append(("wrong type", f"{where}: field '{field}': expected a non-empty list of numbers, got "
                         f"{'an empty list' if isinstance(v, list) else type(v).__name__}"))
        return None
    out = []
    for i, x in enumerate(v):
        if x is None and nulls:
            out.append(math.nan)
            continue
        n = _number(x)
        if n is None or (low is not None and n < low) or (high is not None and n > high):
            rng = f" in [{low:g}, {high:g}]" if low is not None else ""
            problems.append(("wrong type", f"{where}: field '{field}[{i}]': expected a finite number{rng}"
                             f"{' or null' if nulls else ''}, got {_got(x)}"))
            return None
        out.append(n)
    if all(math.isnan(x) for x in out):
        problems.append(("empty", f"{where}: field '{field}': every value is null"))
        return None
    return out


def reward_fields(where: str, row: dict, margin: bool = True) -> tuple[dict, list]:
    """The optional reward columns of a row, normalised to private keys (``_margin``, ``_source``, ``_user``),
    and their problems."""
    problems: list = []
    out = {}
    if margin and row.get("margin") is not None:
        m = _number(row["margin"])
        if m is None:
            problems.append(("wrong type", f"{where}: field 'margin': expected a finite number, "
                             f"got {_got(row['margin'])}"))
        out["_margin"] = m
    if row.get("source") is not None and row.get("dataset") is not None and row["source"] != row["dataset"]:
        problems.append(("mixed forms", f"{where}: field 'source': differs from 'dataset'; give one of them"))
    field = "source" if row.get("source") is not None else "dataset"
    out["_source"] = _name(where, field, row.get(field), problems)
    out["_user"] = _name(where, "user_id", row.get("user_id"), problems)
    return out, problems


def shared_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix, leaving at least one token of each."""
    k, n = 0, min(len(a), len(b)) - 1
    while k < n and a[k] == b[k]:
        k += 1
    return k


@register
class RewardPairs(Paired):
    name = "reward_pairs"
    summary = ("prompt, chosen, rejected (TRL's preference formats) scored whole by a reward model; optional "
               "margin, source/dataset, user_id, targets")
    standard_keys = Paired.standard_keys + OPTIONAL
    precomputable = False

    def accept(self, where: str, row: dict, options: dict) -> None:
        """Cross-prompt pairs are fine: each side is scored on its own."""

    def check(self, where: str, row: dict):
        norm, problems = super().check(where, row)
        extra, more = reward_fields(where, row)
        if row.get("targets") is not None:
            extra["_targets"] = number_list(where, "targets", row["targets"], more, 0.0, 1.0)
        return {**norm, **extra}, problems + more

    def encode(self, split, where, row, max_length, truncation):
        from prefalign.reward.model import fit_sequence, reward_ids

        pad = split.tok.pad_token_id
        seqs, cut = [], False
        for side, prompt in (("chosen", row["prompt"]), ("rejected", row.get("rejected_prompt", row["prompt"]))):
            out = fit_sequence(reward_ids(split, f"{where}: field '{side}'", prompt, row[side]), pad, max_length,
                               truncation)
            if isinstance(out, str):
                return out
            seqs.append(out[0])
            cut = cut or out[1]
        c, r = seqs
        k = shared_prefix(c, r)
        ex = RewardPairExample(row["_row"], c[:k], c[k:], r[k:], {}, margin=row.get("_margin"),
                               source=row.get("_source"), user=row.get("_user"), targets=row.get("_targets"))
        return Encoded(ex, [k], [len(c) - k, len(r) - k], [len(c), len(r)], cut)

    def collate(self, examples, pad_id, layout, pack, **options):
        from prefalign.reward.scoring import collate_pair_sequences

        return collate_pair_sequences(examples, pad_id, layout, pack)

    def view(self, policy, ref, batch):  # pragma: no cover - reward losses read scores, not log-probs
        raise NotImplementedError("reward_pairs rows are scored by a reward model (prefalign.reward.scoring)")
