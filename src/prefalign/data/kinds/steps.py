"""Step rows, for process reward models (PRM): ``prompt``, ``steps`` (a list of non-blank strings, the reasoning
steps of one solution) and ``labels`` (one per step: true/false, or a probability in [0, 1] that the step is right).

The sequence is the prompt as a generation prompt (a user turn with a chat template, else the plain text) followed
by each step's ``step + "\\n"`` tokens (``reward.model.step_ids``); step j's score is read at its last token, the
separator (TRL's PRM layout). Truncation drops the steps whose end is cut off; a row left with no step is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefalign.data.kinds.base import Encoded, RowKind, register
from prefalign.data.kinds.reward_pairs import _got, _number, reward_fields

SEPARATOR = "\n"


@dataclass
class StepsExample:
    row: int
    ids: list[int]  # prompt + steps
    ends: list[int]  # index of each kept step's last token
    labels: list[float]  # per kept step, in [0, 1]
    source: str | None = None
    user: str | None = None
    extras: dict = field(default_factory=dict)
    source_id: int = -1
    user_id: int = -1


@register
class Steps(RowKind):
    name = "steps"
    summary = "prompt, steps (a list of strings) and labels (one per step): a process reward model"
    standard_keys = ("prompt", "steps", "labels", "source", "dataset", "user_id")

    def check(self, where: str, row: dict):
        from prefalign.data import validate as v

        prompt, steps, labels = row.get("prompt"), row.get("steps"), row.get("labels")
        problems = v._present(where, "prompt", prompt)
        if not problems:
            problems = v._prompt(where, prompt)
        out_labels = []
        if steps is None:
            problems.append(("missing field", f"{where}: field 'steps': missing"))
        elif not isinstance(steps, list) or not steps:
            problems.append(("wrong type", f"{where}: field 'steps': expected a non-empty list of strings, got "
                             f"{'an empty list' if isinstance(steps, list) else type(steps).__name__}"))
        else:
            for i, s in enumerate(steps):
                if not isinstance(s, str) or not s.strip():
                    what = "an empty string" if isinstance(s, str) else type(s).__name__
                    problems.append(("wrong type", f"{where}: field 'steps[{i}]': expected a non-blank string, "
                                     f"got {what}"))
                    break
                problems += v._unicode(where, f"steps[{i}]", s)
        if labels is None:
            problems.append(("missing field", f"{where}: field 'labels': missing (one per step)"))
        elif not isinstance(labels, list):
            problems.append(("wrong type", f"{where}: field 'labels': expected a list, got {type(labels).__name__}"))
        else:
            for i, y in enumerate(labels):
                n = float(y) if isinstance(y, bool) else _number(y)
                if n is None or not 0 <= n <= 1:
                    problems.append(("wrong type", f"{where}: field 'labels[{i}]': expected true/false or a number "
                                     f"in [0, 1], got {_got(y)}"))
                    break
                out_labels.append(n)
            if isinstance(steps, list) and len(labels) != len(steps) and not problems:
                problems.append(("length mismatch", f"{where}: field 'labels': {len(labels)} labels for "
                                 f"{len(steps)} steps"))
        extra, more = reward_fields(where, row, margin=False)
        return {"prompt": prompt, "steps": steps, "_labels": out_labels, **extra}, problems + more

    def encode(self, split, where, row, max_length, truncation):
        from prefalign.reward.model import step_ids

        ids, ends = step_ids(split, f"{where}: field 'steps'", row["prompt"], row["steps"], SEPARATOR)
        labels, cut = list(row["_labels"]), False
        if max_length is not None and len(ids) > max_length:
            cut = True
            if truncation == "keep_start":
                keep = [j for j, e in enumerate(ends) if e < max_length]
                ids = ids[:max_length]
            else:
                shift = len(ids) - max_length
                keep = [j for j, e in enumerate(ends) if e >= shift]
                ids, ends = ids[shift:], [e - shift for e in ends]
            if not keep:
                return "prompt fills max_length"
            ends, labels = [ends[j] for j in keep], [labels[j] for j in keep]
        ex = StepsExample(row["_row"], ids, ends, labels, row.get("_source"), row.get("_user"))
        return Encoded(ex, total_lengths=[len(ids)], truncated=cut)

    def collate(self, examples, pad_id, layout, pack, **options):
        from prefalign.reward.scoring import collate_single_sequences

        return collate_single_sequences(examples, pad_id, pack, rows_kind="steps")

    def view(self, policy, ref, batch):  # pragma: no cover - reward losses read scores, not log-probs
        raise NotImplementedError("step rows are scored by a reward model (prefalign.reward.scoring)")

    def size(self, example) -> int:
        return len(example.ids)

    def token_ids(self, example) -> list:
        return [example.ids]
