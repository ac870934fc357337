"""Validated rows → token ids: the prompt/completion split in token space, truncation, and the report.

The boundary is found in token space, never by slicing strings. Conversations: the prompt is rendered with
``add_generation_prompt=True``, prompt+completion without it, and the prompt's ids must be an exact prefix of the
whole; the completion is the rest, including what the template appends after the assistant turn (ChatML's
``<|im_end|>\\n``), which TRL trains on too. Plain strings: the prompt and prompt+completion are tokenized as whole
strings (special tokens off; BOS in front when the tokenizer adds one by default) with the same prefix check, and
EOS is appended to the completion as TRL does. A failed check stops with an error naming the row: a shifted
boundary would silently train on prompt tokens or skip completion tokens.

Truncation to ``max_length`` tokens per sequence (prompt + one completion):
``keep_start`` keeps the first tokens, cutting completions' ends; rows whose prompt alone fills the budget are
dropped. ``keep_end`` keeps the last tokens, cutting the prompt's start by what the longer completion needs (the
same cut for both, so the pair still shares one prompt); rows whose longer completion alone fills the budget
(no prompt token would be left) are dropped.

Cross-prompt pairs (a ``rejected_prompt`` x₂ besides the chosen's prompt x₁): each side is split on its own —
x₁ with the chosen, x₂ with the rejected, by the same functions — and truncated on its own by the same rules (a
sequence is one prompt + its completion, so nothing needs the same cut); the row is dropped if either side is.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefalign.data.render import Renderer as _Splitter  # the token-space prompt split, shared with sampling
from prefalign.data.render import _ids  # noqa: F401 — still importable from here
from prefalign.data.validate import Rows

TRUNCATION = ("keep_start", "keep_end")


def encode_rows(rows: Rows, tokenizer, max_length: int | None = None, truncation: str = "keep_start",
                **options):
    """(examples, report): each row encoded by its kind (``data.kinds``: PairExample for paired and revision rows,
    PointExample for unpaired, SampleExample for sample rows, JudgedExample for judgment rows, SFTExample for SFT
    rows); rows too long for ``max_length`` are dropped and counted. ``options`` go to the kind's ``encode`` (e.g.
    the SFT kind's ``completion_only_loss``)."""
    from prefalign.data import kinds

    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {TRUNCATION}, got {truncation!r}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
    kind = kinds.get(rows.kind)
    split = _Splitter(tokenizer)
    report = PreprocessReport(rows.path, rows_read=rows.read, invalid_skipped=dict(rows.skipped), ties=rows.ties)
    examples, lengths = [], {"prompt": [], "completion": [], "total": []}
    for row in rows.rows:
        out = kind.encode(split, f"{rows.path}:row {row['_row']}", row, max_length, truncation, **options)
        if isinstance(out, str):
            report.dropped[out] = report.dropped.get(out, 0) + 1
            continue
        report.truncated += out.truncated
        examples.append(out.example)
        lengths["prompt"] += out.prompt_lengths
        lengths["completion"] += out.completion_lengths
        lengths["total"] += out.total_lengths
    report.rows_kept = len(examples)
    report.tokens = {k: percentiles(v) for k, v in lengths.items()}
    return examples, report


def truncate(prompt: list[int], comps: list[list[int]], max_length: int | None, mode: str):
    """(prompt, completions, was truncated) or the reason the row is dropped."""
    if max_length is None or all(len(prompt) + len(c) <= max_length for c in comps):
        return prompt, comps, False
    if mode == "keep_start":
        if len(prompt) >= max_length:
            return "prompt fills max_length"
        return prompt, [c[: max_length - len(prompt)] for c in comps], True
    cut = len(prompt) + max(len(c) for c in comps) - max_length
    if cut >= len(prompt):
        return "completion fills max_length"
    return prompt[cut:], comps, True


def _cross_pair(split, where: str, row: dict, max_length: int | None, mode: str):
    """(x₁ ids, chosen ids, x₂ ids, rejected ids, was truncated) or the reason the row is dropped."""
    sides = []
    for prompt, name in ((row["prompt"], "chosen"), (row["rejected_prompt"], "rejected")):
        p, comps = split(where, prompt, {name: row[name]})
        out = truncate(p, comps, max_length, mode)
        if isinstance(out, str):
            return out
        sides.append(out)
    (x1, (c,), cut1), (x2, (r,), cut2) = sides
    return x1, c, x2, r, cut1 or cut2


def with_judgment(prompt, judgment: str):
    """The CUT context x ⊕ j. A conversation: the judgment follows the instruction inside the last user message
    ("…\n\nJudgment: j"), so it sits between instruction and response as in the paper's template (Instruction,
    Judgment, Response) and the assistant turn still starts where it did. Plain text: the judgment, a blank line,
    then the prompt — in front, because a plain prompt's end (e.g. "A:") is the response cue the completion follows."""
    if isinstance(prompt, list):
        last = max((i for i, m in enumerate(prompt) if m.get("role") == "user"), default=len(prompt) - 1)
        out = [dict(m) for m in prompt]
        out[last]["content"] = f"{out[last]['content']}\n\nJudgment: {judgment}"
        return out
    return f"{judgment}\n\n{prompt}"


def truncate_judged(prompt: list[int], judged: list[int], comp: list[int], max_length: int | None, mode: str):
    """(prompt, judged prompt, completion, was truncated) or the reason the row is dropped: both sequences keep the
    same completion tokens. ``keep_start`` cuts the completion to fit after the longer prompt; ``keep_end`` cuts each
    prompt's start as much as it needs (the completion is never cut, and each prompt keeps ≥ 1 token)."""
    longest = max(len(prompt), len(judged))
    if max_length is None or longest + len(comp) <= max_length:
        return prompt, judged, comp, False
    if mode == "keep_start":
        if longest >= max_length:
            return "prompt fills max_length"
        return prompt, judged, comp[: max_length - longest], True
    room = max_length - len(comp)
    if room < 1:
        return "completion fills max_length"
    return prompt[-room:], judged[-room:], comp, True


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles (always an observed length)."""
    if not values:
        return {}
    s = sorted(values)
    rank = lambda q: s[max(0, math.ceil(q * len(s)) - 1)]
    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": s[-1]}


@dataclass
class PreprocessReport:
    path: str
    rows_read: int = 0
    rows_kept: int = 0
    invalid_skipped: dict[str, int] = field(default_factory=dict)  # problem kind → rows (with --skip-invalid)
    dropped: dict[str, int] = field(default_factory=dict)  # too long for max_length: reason → rows
    ties: int = 0  # n-sample rows dropped: best and worst scores tie (no preference)
    truncated: int = 0  # rows kept but shortened
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)  # prompt/completion/total → percentiles, kept rows

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [f"data {self.path}: {self.rows_read} rows read, {self.rows_kept} kept, {self.truncated} truncated"]
        if self.ties:
            lines.append(f"  dropped as tied: {self.ties} (n-sample rows whose best and worst scores tie)")
        for title, counts in (("skipped as invalid", self.invalid_skipped), ("dropped by max_length", self.dropped)):
            if counts:
                lines.append(f"  {title}: " + ", ".join(f"{n} ({reason})" for reason, n in sorted(counts.items())))
        if any(self.tokens.values()):
            lines.append(f"  {'tokens':<10}{'p50':>7}{'p90':>7}{'p99':>7}{'max':>7}")
            for name, p in self.tokens.items():
                if p:
                    lines.append(f"  {name:<10}" + "".join(f"{p[k]:>7}" for k in ("p50", "p90", "p99", "max")))
        return "\n".join(lines)

    def save(self, folder: str | Path) -> Path:
        """Write ``preprocess_report.json`` atomically: a reader never sees half a file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".preprocess_report.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
            path = folder / "preprocess_report.json"
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
