"""Scored rows, for regression reward models: ``prompt``, ``completion`` and a ``score`` (one number) or
``scores`` (one number per head; null = this row does not label that head, for ``multihead``).

The sequence is rendered as ``reward.model.reward_ids`` renders a (prompt, completion) for scoring (plain or chat,
as in ``paired`` rows), and scored at its last token. Optional ``source`` / ``dataset`` and ``user_id`` columns as
for reward pairs. Problems are one line each, naming row and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefalign.data.kinds.base import Encoded, RowKind, register
from prefalign.data.kinds.reward_pairs import _got, _number, number_list, reward_fields


@dataclass
class ScoredExample:
    row: int
    ids: list[int]  # the scored sequence
    targets: list[float]  # [K] (NaN = no label for that head)
    source: str | None = None
    user: str | None = None
    extras: dict = field(default_factory=dict)
    source_id: int = -1
    user_id: int = -1


@register
class Scored(RowKind):
    name = "scored"
    summary = "prompt, completion and score (or per-head scores): regression targets for a reward model"
    standard_keys = ("prompt", "completion", "score", "scores", "source", "dataset", "user_id")

    def check(self, where: str, row: dict):
        from prefalign.data import validate as v

        prompt, completion = row.get("prompt"), row.get("completion")
        problems = v._present(where, "prompt", prompt) + v._present(where, "completion", completion)
        if not problems:
            problems = v._prompt(where, prompt) + v._completion(where, "completion", completion, prompt)
        targets = None
        if row.get("score") is not None and row.get("scores") is not None:
            problems.append(("mixed forms", f"{where}: field 'score': give 'score' (one number) or 'scores' (one "
                             "per head), not both"))
        elif row.get("score") is not None:
            targets = [_number(row["score"])]
            if targets[0] is None:
                problems.append(("wrong type", f"{where}: field 'score': expected a finite number, got "
                                 f"{_got(row['score'])}"))
        elif row.get("scores") is not None:
            targets = number_list(where, "scores", row["scores"], problems)
        else:
            problems.append(("missing field", f"{where}: field 'score': missing (or give 'scores', one per head)"))
        extra, more = reward_fields(where, row, margin=False)
        return {"prompt": prompt, "completion": completion, "_targets": targets, **extra}, problems + more

    def encode(self, split, where, row, max_length, truncation):
        from prefalign.reward.model import fit_sequence, reward_ids

        out = fit_sequence(reward_ids(split, f"{where}: field 'completion'", row["prompt"], row["completion"]),
                           split.tok.pad_token_id, max_length, truncation)
        if isinstance(out, str):
            return out
        ids, cut = out
        ex = ScoredExample(row["_row"], ids, row["_targets"], row.get("_source"), row.get("_user"))
        return Encoded(ex, [0], [len(ids)], [len(ids)], cut)

    def collate(self, examples, pad_id, layout, pack, **options):
        from prefalign.reward.scoring import collate_single_sequences

        return collate_single_sequences(examples, pad_id, pack, rows_kind="scored")

    def view(self, policy, ref, batch):  # pragma: no cover - reward losses read scores, not log-probs
        raise NotImplementedError("scored rows are scored by a reward model (prefalign.reward.scoring)")

    def size(self, example) -> int:
        return len(example.ids)

    def token_ids(self, example) -> list:
        return [example.ids]
