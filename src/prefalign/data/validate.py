"""Validating rows of TRL's formats before any model is loaded; every problem is one line naming row and field.

Paired rows: ``prompt``, ``chosen``, ``rejected`` — all plain strings, or all lists of chat messages
(``{role, content}``); or the implicit-prompt form: no ``prompt``, and ``chosen``/``rejected`` conversations that
share their leading turns and differ only in their final assistant turn(s) (the shared turns become the prompt,
like TRL's ``extract_prompt``); or **n-sample** rows: ``prompt``, ``completions`` (a list of ≥ 2 completions) and
``scores`` (one finite number per completion), which become the pair best (first argmax) vs worst (first argmin),
with ``score_chosen``/``score_rejected`` set to those scores; n-sample rows whose best and worst scores tie carry no
preference and are dropped and counted (``Rows.ties``). Unpaired rows: ``prompt``, ``completion``, ``label`` (a JSON
boolean). Sample rows (D2O): ``prompt``, ``rejected`` (a human negative) and ``samples`` (a list of ≥ 1
self-generated completions). Revision rows (FIGA): ``prompt``, ``initial`` (an answer) and ``revised`` (its
revision, which must differ from it). Judgment rows (CUT): ``prompt``, ``completion`` and ``judgment`` (a non-blank
string: what is wrong or right with the completion). Cross-prompt paired rows (JPO; only with ``cross_prompt=True``,
which the trainer sets for objectives that declare it): ``chosen_prompt``, ``chosen``, ``rejected_prompt``,
``rejected`` — each completion of its own prompt's kind (string or messages); they may be mixed with ordinary paired
rows in one file, and a row whose two prompts are equal is read as an ordinary pair. Unknown columns are ignored,
as in TRL; numeric fields the objective declares (e.g. ``pref_prob``, ``score_chosen``) must be finite numbers,
and within the range an objective declares for them (``extra_ranges = {"pref_prob": (0, 1)}`` on the objective
class; ``declared_ranges``); ``score_chosen``/``score_rejected`` may also be spelled ``chosen_score``/``rejected_score``.
Conversations must keep their turns in order: no two user turns in a row (in a prompt, a completion, or across
their boundary), and no assistant completion after a prompt that ends in an assistant turn — the chat template
would render a boundary (an assistant turn, then the generation prompt again) that inference never produces.
Problems read ``path:row N: field 'x': what is wrong``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from prefalign.data.io import read_table
from prefalign.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
# Declared numeric fields that rows may spell either way (TRL/UltraFeedback and `prefalign label` write score_*).
ALIASES = {"score_chosen": "chosen_score", "score_rejected": "rejected_score", "chosen_score": "score_chosen",
           "rejected_score": "score_rejected"}
MAX_SHOWN = 20  # problems listed in the error; the count covers all of them
Problem = tuple[str, str]  # (kind, message): the kind counts rows skipped by --skip-invalid


@dataclass
class Rows:
    path: str
    kind: str  # a registered row kind (``data.kinds``): "paired", "unpaired", "sft", …
    rows: list[dict]  # normalised: prompt/chosen/rejected (or prompt/completion/label), "_row", declared extras
    skipped: dict[str, int] = field(default_factory=dict)  # problem kind → rows dropped by --skip-invalid
    ties: int = 0  # valid n-sample rows dropped because their best and worst scores tie

    @property
    def read(self) -> int:
        """Rows in the source: each skipped row is counted once, under its first problem."""
        return len(self.rows) + sum(self.skipped.values()) + self.ties


def load_rows(path: str, kind: str = "paired", extra_fields: tuple[str, ...] = (), skip_invalid: bool = False,
              cross_prompt: bool = False, cross_prompt_hint: str = "") -> Rows:
    """Read and validate every row; bad rows raise one UserError listing the first 20 problems (or are skipped).
    Without ``cross_prompt`` the first cross-prompt row raises a one-line UserError ending in ``cross_prompt_hint``
    (it is the objective that cannot read the file, so --skip-invalid does not skip it)."""
    from prefalign.data import kinds

    row_kind = kinds.get(kind)  # ValueError for an unknown kind
    ranges = declared_ranges(extra_fields)
    raw, unreadable = read_table(path)
    found: list[tuple[int, str, str]] = list(unreadable)  # (row, kind, message)
    bad_kinds = [kind_ for _, kind_, _ in unreadable]  # one entry per bad row: the kind of its first problem
    rows, ties = [], 0
    options = {"cross_prompt": cross_prompt, "cross_prompt_hint": cross_prompt_hint}
    for number, row in raw:
        row_kind.accept(f"{path}:row {number}", row, options)
        norm, problems = check_row(f"{path}:row {number}", row, kind, extra_fields, ranges)
        if problems:
            found += [(number, *p) for p in problems]
            bad_kinds.append(problems[0][0])
        elif norm.get("_tie"):
            ties += 1
        else:
            rows.append({**norm, "_row": number})
    if found and not skip_invalid:
        found.sort(key=lambda p: p[0])  # stable: a row's problems keep their order
        n = len(bad_kinds)
        more = f" ({len(found)} problems, the first {MAX_SHOWN} listed)" if len(found) > MAX_SHOWN else ""
        raise UserError(path, f"{n} invalid row{'s' if n != 1 else ''}{more}", "fix them or pass --skip-invalid",
                        details=[msg for _, _, msg in found[:MAX_SHOWN]])
    if not rows and ties:
        raise UserError(path, f"no usable rows: the best and worst scores tie in all {ties} n-sample rows",
                        "give completions with different scores")
    if not rows:
        raise UserError(path, "no valid rows", "fix the rows (run without --skip-invalid to list the problems)")
    return Rows(path, kind, rows, dict(Counter(bad_kinds)), ties)


def check_row(where: str, row: dict, kind: str, extra_fields: tuple[str, ...] = (),
              ranges: dict[str, tuple[float, float]] | None = None) -> tuple[dict, list[Problem]]:
    """The normalised row (only meaningful without problems; ``_tie`` marks a tied n-sample row) and its problems.
    ``ranges``: closed intervals for declared fields (default: ``declared_ranges(extra_fields)``)."""
    from prefalign.data import kinds

    norm, problems = kinds.get(kind).check(where, row)
    if "_scores" in norm:  # an n-sample row's best and worst scores are row fields an objective may declare
        row = {**row, **norm.pop("_scores")}
    ranges = declared_ranges(extra_fields) if ranges is None else ranges
    extras, extra_problems = check_extras(where, row, extra_fields, ranges)
    return {**norm, **extras}, problems + extra_problems


def check_paired(where: str, row: dict) -> tuple[dict, list[Problem]]:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    problems = _present(where, "chosen", chosen) + _present(where, "rejected", rejected)
    prompt = row.get("prompt")
    if prompt is None:  # the implicit-prompt form
        if problems:
            return {}, problems
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            return {}, [("missing field", f"{where}: field 'prompt': missing (only conversations may leave the "
                         "prompt implicit)")]
        problems = _messages(where, "chosen", chosen) + _messages(where, "rejected", rejected)
        if problems:
            return {}, problems
        prompt, chosen, rejected, problems = _extract_prompt(where, chosen, rejected)
        if problems:
            return {}, problems
        problems = turn_order(where, "chosen", prompt)  # the shared turns, numbered as in 'chosen'
        if problems:
            return {}, problems
    else:
        problems = _present(where, "prompt", prompt) + problems
        if problems:
            return {}, problems
        problems = _prompt(where, prompt)
    problems += _completion(where, "chosen", chosen, prompt) + _completion(where, "rejected", rejected, prompt)
    if not problems and chosen == rejected:
        problems.append(("identical", f"{where}: field 'chosen': identical to 'rejected'"))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, problems


def check_cross(where: str, row: dict) -> tuple[dict, list[Problem]]:
    """A cross-prompt pair (x₁, y₁) ≻ (x₂, y₂) → prompt = x₁ and ``rejected_prompt`` = x₂ (dropped when x₂ = x₁)."""
    if "prompt" in row:
        return {}, [("mixed forms", f"{where}: field 'chosen_prompt': give either 'prompt' (a same-prompt pair) or "
                     "'chosen_prompt'/'rejected_prompt' (a cross-prompt pair), not both")]
    x1, x2, chosen, rejected = (row.get(k) for k in ("chosen_prompt", "rejected_prompt", "chosen", "rejected"))
    problems = _present(where, "chosen_prompt", x1) + _present(where, "chosen", chosen)
    problems += _present(where, "rejected_prompt", x2) + _present(where, "rejected", rejected)
    if problems:
        return {}, problems
    problems = _prompt(where, x1, "chosen_prompt") + _completion(where, "chosen", chosen, x1, "chosen_prompt")
    problems += _prompt(where, x2, "rejected_prompt") + _completion(where, "rejected", rejected, x2, "rejected_prompt")
    if not problems and x1 == x2 and chosen == rejected:
        problems.append(("identical", f"{where}: field 'chosen': identical to 'rejected', and 'chosen_prompt' to "
                         "'rejected_prompt'"))
    norm = {"prompt": x1, "chosen": chosen, "rejected": rejected}
    return (norm if x1 == x2 else {**norm, "rejected_prompt": x2}), problems


def check_unpaired(where: str, row: dict) -> tuple[dict, list[Problem]]:
    prompt, completion, label = row.get("prompt"), row.get("completion"), row.get("label")
    problems = _present(where, "prompt", prompt) + _present(where, "completion", completion)
    if label is None:
        problems.append(("missing field", f"{where}: field 'label': missing"))
    elif not isinstance(label, bool):  # "true", 1, 0 are refused: a typo must not silently flip a label
        problems.append(("wrong type", f"{where}: field 'label': expected a boolean, got {type(label).__name__}"))
    if not problems:
        problems = _prompt(where, prompt) + _completion(where, "completion", completion, prompt)
    return {"prompt": prompt, "completion": completion, "label": label}, problems


def check_nsample(where: str, row: dict) -> tuple[dict, list[Problem]]:
    """An n-sample row → its best-vs-worst pair (``_best``/``_worst`` = their scores; ``_tie`` when they tie)."""
    if "chosen" in row or "rejected" in row:
        return {}, [("mixed forms", f"{where}: field 'completions': give either 'chosen'/'rejected' or "
                     "'completions'/'scores', not both")]
    prompt, comps, scores = row.get("prompt"), row.get("completions"), row.get("scores")
    problems = _present(where, "prompt", prompt)
    problems += _list_of(where, "completions", comps, 2, "completions") + _list_of(where, "scores", scores, 1, "")
    if problems:
        return {}, problems
    problems = _prompt(where, prompt)
    for i, c in enumerate(comps):
        name = f"completions[{i}]"
        problems += _present(where, name, c) or _completion(where, name, c, prompt)
    if len(scores) != len(comps):
        problems.append(("length mismatch", f"{where}: field 'scores': {len(scores)} scores for {len(comps)} "
                         "completions"))
    for i, v in enumerate(scores):
        if _finite(v) is None:
            got = type(v).__name__ if not isinstance(v, (int, float)) or isinstance(v, bool) else repr(v)[:40]
            problems.append(("wrong type", f"{where}: field 'scores[{i}]': expected a finite number, got {got}"))
    if problems:
        return {}, problems
    values = [_finite(v) for v in scores]
    best, worst = values.index(max(values)), values.index(min(values))  # first of equals: deterministic
    norm = {"prompt": prompt, "chosen": comps[best], "rejected": comps[worst], "_best": values[best],
            "_worst": values[worst]}
    if values[best] == values[worst]:
        return {**norm, "_tie": True}, []
    if comps[best] == comps[worst]:
        return norm, [("identical", f"{where}: field 'completions': the best (item {best}) and the worst (item "
                       f"{worst}) are the same completion with different scores")]
    return norm, []


def check_samples(where: str, row: dict) -> tuple[dict, list[Problem]]:
    """A D2O row: the human negative ``rejected`` and K ≥ 1 self-generated ``samples`` of the prompt."""
    prompt, rejected, samples = row.get("prompt"), row.get("rejected"), row.get("samples")
    problems = _present(where, "prompt", prompt) + _present(where, "rejected", rejected)
    problems += _list_of(where, "samples", samples, 1, "samples")
    if problems:
        return {}, problems
    problems = _prompt(where, prompt) + _completion(where, "rejected", rejected, prompt)
    for i, c in enumerate(samples):
        name = f"samples[{i}]"
        problems += _present(where, name, c) or _completion(where, name, c, prompt)
    return {"prompt": prompt, "rejected": rejected, "samples": samples}, problems


def check_revision(where: str, row: dict) -> tuple[dict, list[Problem]]:
    """A FIGA row: an ``initial`` answer and its ``revised`` version (which must differ) for the prompt."""
    prompt, initial, revised = row.get("prompt"), row.get("initial"), row.get("revised")
    problems = _present(where, "prompt", prompt) + _present(where, "initial", initial)
    problems += _present(where, "revised", revised)
    if problems:
        return {}, problems
    problems = _prompt(where, prompt) + _completion(where, "initial", initial, prompt)
    problems += _completion(where, "revised", revised, prompt)
    if not problems and initial == revised:
        problems.append(("identical", f"{where}: field 'revised': identical to 'initial' (nothing was revised)"))
    return {"prompt": prompt, "initial": initial, "revised": revised}, problems


def check_judgment(where: str, row: dict) -> tuple[dict, list[Problem]]:
    """A CUT row: a ``completion`` of the prompt and a text ``judgment`` of it."""
    prompt, completion, judgment = row.get("prompt"), row.get("completion"), row.get("judgment")
    problems = _present(where, "prompt", prompt) + _present(where, "completion", completion)
    if judgment is None:
        problems.append(("missing field", f"{where}: field 'judgment': missing"))
    elif not isinstance(judgment, str):
        problems.append(("wrong type", f"{where}: field 'judgment': expected a string, got {type(judgment).__name__}"))
    elif not judgment.strip():
        problems.append(("empty", f"{where}: field 'judgment': empty or whitespace-only judgment"))
    else:
        problems += _unicode(where, "judgment", judgment)
    if not problems:
        problems = _prompt(where, prompt) + _completion(where, "completion", completion, prompt)
    return {"prompt": prompt, "completion": completion, "judgment": judgment}, problems


def _list_of(where: str, name: str, v, least: int, what: str) -> list[Problem]:
    if v is None:
        return [("missing field", f"{where}: field '{name}': missing")]
    if not isinstance(v, list):
        return [("wrong type", f"{where}: field '{name}': expected a list, got {type(v).__name__}")]
    if what and len(v) < least:
        return [("too few", f"{where}: field '{name}': needs at least {least} {what}, got {len(v)}")]
    return []


def _finite(v) -> float | None:
    """v as a finite float, or None (bool is an int in Python, but true/false is not a score)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        number = float(v)
    except OverflowError:  # a JSON integer too large for a float
        return None
    return number if math.isfinite(number) else None


def declared_ranges(names: tuple[str, ...] = ()) -> dict[str, tuple[float, float]]:
    """{field: (low, high)}: the closed ranges registered objectives declare for the fields ``names`` (their
    ``extra_ranges`` class attribute, e.g. iregression's ``{"pref_prob": (0, 1)}``); a field declared by several
    objectives gets the intersection. A field's meaning is the same for every objective that reads it."""
    from prefalign import objectives

    out: dict[str, tuple[float, float]] = {}
    if not names:
        return out
    for name in objectives.names():
        for field_, (low, high) in (getattr(objectives.get_class(name), "extra_ranges", None) or {}).items():
            if field_ in names:
                lo, hi = out.get(field_, (-math.inf, math.inf))
                out[field_] = (max(lo, float(low)), min(hi, float(high)))
    return out


def check_extras(where: str, row: dict, names: tuple[str, ...],
                 ranges: dict[str, tuple[float, float]] | None = None) -> tuple[dict[str, float], list[Problem]]:
    values, problems = {}, []
    ranges = ranges or {}
    for name in names:
        v = row.get(name)
        if v is None and name in ALIASES:
            v = row.get(ALIASES[name])
        if v is None:
            problems.append(("missing field", f"{where}: field '{name}': missing"))
            continue
        try:  # bool is an int in Python, but true/false is not a probability or a score
            number = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        except OverflowError:  # a JSON integer too large for a float
            number = math.inf
        if number is None or not math.isfinite(number):
            got = type(v).__name__ if number is None else repr(v)[:40]
            problems.append(("wrong type", f"{where}: field '{name}': expected a finite number, got {got}"))
        elif name in ranges and not ranges[name][0] <= number <= ranges[name][1]:
            low, high = ranges[name]
            problems.append(("out of range", f"{where}: field '{name}': must be in [{low:g}, {high:g}], got "
                             f"{repr(v)[:40]}"))
        else:
            values[name] = number
    return values, problems


# ---------------------------------------------------------------------------------------------------------------
def _present(where: str, name: str, v) -> list[Problem]:
    if v is None:
        return [("missing field", f"{where}: field '{name}': missing")]
    if not isinstance(v, (str, list)):
        return [("wrong type", f"{where}: field '{name}': expected a string or a list of messages, "
                 f"got {type(v).__name__}")]
    return _unicode(where, name, v) if isinstance(v, str) else []


def _unicode(where: str, name: str, text: str, what: str = "") -> list[Problem]:
    """JSON escapes can smuggle in lone surrogates ("\\ud800"), which no tokenizer accepts."""
    try:
        text.encode("utf-8")
        return []
    except UnicodeEncodeError:
        return [("bad text", f"{where}: field '{name}': {what}not valid Unicode (a lone surrogate escape)")]


def _prompt(where: str, prompt, name: str = "prompt") -> list[Problem]:
    if not isinstance(prompt, list):
        return []
    return _messages(where, name, prompt) or turn_order(where, name, prompt)


ORDER_TODO = "the chat template never renders that boundary at inference: merge the turns or add the missing one"


def turn_order(where: str, name: str, msgs: list, before: list | None = None, before_name: str = "prompt",
               assistant_runs: bool = True) -> list[Problem]:
    """Turns out of order in ``msgs`` (checked messages), after the turns ``before`` (the prompt of a completion):
    two user turns in a row anywhere, and an assistant turn right after an assistant turn — at the boundary from
    ``before``, and inside ``msgs`` too unless ``assistant_runs`` (a multi-turn completion: its inner boundaries
    are trained as they are rendered)."""
    prev, prev_at = None, ""
    if before and isinstance(before[-1], dict):
        prev, prev_at = before[-1].get("role"), f"the last turn of '{before_name}'"
    for i, m in enumerate(msgs, start=1):
        role = m.get("role") if isinstance(m, dict) else None
        inner = prev_at.startswith("message")
        if role == prev == "user" or (role == prev == "assistant" and not (inner and assistant_runs)):
            return [("turn order", f"{where}: field '{name}': message {i} is a second {role} turn in a row (after "
                     f"{prev_at}); {ORDER_TODO}")]
        prev, prev_at = role, f"message {i}"
    return []


def _completion(where: str, name: str, v, prompt, prompt_name: str = "prompt") -> list[Problem]:
    """A completion is of the prompt's kind (TRL renders both with one template, or neither) and is not blank."""
    if isinstance(v, list) != isinstance(prompt, list):
        want, got = ("a list of messages", "a string") if isinstance(prompt, list) else ("a string", "a list")
        return [("wrong type", f"{where}: field '{name}': expected {want} like '{prompt_name}', got {got}")]
    if isinstance(v, str):
        return [] if v.strip() else [("empty", f"{where}: field '{name}': empty or whitespace-only completion")]
    problems = _messages(where, name, v)
    if problems:
        return problems
    if isinstance(prompt, list) and prompt and v[: len(prompt)] == prompt:  # a whole conversation given as the completion
        return [("repeats prompt", f"{where}: field '{name}': starts with the prompt's turns, which would appear "
                 "twice; keep only the reply (or drop 'prompt' to use the implicit-prompt form)")]
    assistant = [m["content"] for m in v if m["role"] == "assistant"]
    if not assistant:
        return [("no assistant turn", f"{where}: field '{name}': has no assistant turn")]
    if not any(c.strip() for c in assistant):
        return [("empty", f"{where}: field '{name}': empty or whitespace-only completion")]
    return turn_order(where, name, v, prompt if isinstance(prompt, list) else None, prompt_name)


def _messages(where: str, name: str, msgs: list) -> list[Problem]:
    if not msgs:
        return [("empty", f"{where}: field '{name}': empty list of messages")]
    out: list[Problem] = []
    for i, m in enumerate(msgs, start=1):
        if not isinstance(m, dict):
            out.append(("bad message", f"{where}: field '{name}': message {i} is not an object with role and "
                        f"content, got {type(m).__name__}"))
            continue
        for key in ("role", "content"):
            if m.get(key) is None:
                out.append(("bad message", f"{where}: field '{name}': message {i} has no '{key}'"))
        role, content = m.get("role"), m.get("content")
        if role is not None and role not in ROLES:
            out.append(("unknown role", f"{where}: field '{name}': message {i} has unknown role {role!r} "
                        f"(known: {', '.join(ROLES)})"))
        if content is not None and not isinstance(content, str):
            out.append(("wrong type", f"{where}: field '{name}': message {i} content must be a string, "
                        f"got {type(content).__name__}"))
        elif content is not None:
            out += _unicode(where, name, content, f"message {i} content is ")
    return out


def _extract_prompt(where: str, chosen: list, rejected: list):
    """(prompt, chosen, rejected, problems): the shared leading turns are the prompt, like TRL's extract_prompt."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if chosen == rejected:
        return None, chosen, rejected, [("identical", f"{where}: field 'chosen': identical to 'rejected'")]
    for name, v in (("chosen", chosen), ("rejected", rejected)):
        if k == len(v):
            other = "rejected" if name == "chosen" else "chosen"
            return None, chosen, rejected, [("empty", f"{where}: field '{name}': has no turns after those it "
                                             f"shares with '{other}' (an implicit prompt needs a completion)")]
    if k == 0 or any(m["role"] != "assistant" for m in chosen[k:] + rejected[k:]):
        return None, chosen, rejected, [("differ before last turn", f"{where}: field 'chosen': 'chosen' and "
                                         f"'rejected' differ before their last turn (at turn {k + 1}); without a "
                                         "'prompt' field they must share every turn but the final assistant "
                                         "turn(s)")]
    return chosen[:k], chosen[k:], rejected[k:], []
