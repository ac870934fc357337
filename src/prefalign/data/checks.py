"""Validating rows of TRL's formats and normalising them; every problem is one line naming row and field.

Paired rows: ``prompt``, ``chosen``, ``rejected`` — all plain strings, or all lists of chat messages
(``{role, content}``); or the implicit-prompt form: ``chosen`` and ``rejected`` conversations that share their
leading turns and differ only in the last (assistant) turn. Unpaired rows: ``prompt``, ``completion``, ``label``
(a boolean). Extra columns are ignored, as in TRL; extra *declared* numeric fields must be finite numbers.
"""

from __future__ import annotations

import math

ROLES = ("system", "user", "assistant", "tool")
Problem = tuple[str, str]  # (kind, message) — kind counts skipped rows in the report


def _is_messages(v) -> bool:
    return isinstance(v, list)


def _check_messages(where: str, name: str, msgs: list, completion: bool) -> list[Problem]:
    out: list[Problem] = []
    if not msgs:
        return [("empty", f"{where}: field '{name}': empty list of messages")]
    for i, m in enumerate(msgs, start=1):
        if not isinstance(m, dict):
            out.append(("bad message", f"{where}: field '{name}': message {i} is not an object with role/content"))
            continue
        for key in ("role", "content"):
            if key not in m or m[key] is None:
                out.append(("bad message", f"{where}: field '{name}': message {i} has no '{key}'"))
        role, content = m.get("role"), m.get("content")
        if role is not None and role not in ROLES:
            out.append(("unknown role", f"{where}: field '{name}': message {i} has unknown role {role!r} "
                        f"(known: {', '.join(ROLES)})"))
        if content is not None and not isinstance(content, str):
            out.append(("wrong type", f"{where}: field '{name}': message {i} content must be a string, "
                        f"got {type(content).__name__}"))
    if completion and not out:
        if not any(m["role"] == "assistant" for m in msgs):
            out.append(("no assistant turn", f"{where}: field '{name}': has no assistant turn"))
        elif not any(m["content"].strip() for m in msgs if m["role"] == "assistant"):
            out.append(("empty", f"{where}: field '{name}': empty or whitespace-only completion"))
    return out


def _field(where: str, row: dict, name: str) -> tuple[object, list[Problem]]:
    if name not in row or row[name] is None:
        return None, [("missing field", f"{where}: field '{name}': missing")]
    v = row[name]
    if not isinstance(v, (str, list)):
        return None, [("wrong type", f"{where}: field '{name}': expected a string or a list of messages, "
                       f"got {type(v).__name__}")]
    return v, []


def _completion(where: str, name: str, v, conversational: bool) -> list[Problem]:
    if conversational != _is_messages(v):
        want = "a list of messages" if conversational else "a string"
        return [("wrong type", f"{where}: field '{name}': expected {want} like the other fields, got "
                 f"{'a list' if _is_messages(v) else 'a string'}")]
    if conversational:
        return _check_messages(where, name, v, completion=True)
    if not v.strip():
        return [("empty", f"{where}: field '{name}': empty or whitespace-only completion")]
    return []


def check_paired(where: str, row: dict) -> tuple[dict | None, list[Problem]]:
    """Normalised ``{prompt, chosen, rejected}`` or None, and the problems."""
    chosen, p1 = _field(where, row, "chosen")
    rejected, p2 = _field(where, row, "rejected")
    problems = p1 + p2
    if "prompt" not in row or row["prompt"] is None:  # implicit prompt: shared leading turns
        if problems:
            return None, problems
        if not (_is_messages(chosen) and _is_messages(rejected)):
            return None, [("missing field", f"{where}: field 'prompt': missing (only conversations may leave "
                           "the prompt implicit)")]
        problems = _check_messages(where, "chosen", chosen, False) + _check_messages(where, "rejected", rejected,
                                                                                      False)
        if problems:
            return None, problems
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        if chosen == rejected:
            return None, [("identical", f"{where}: field 'chosen': identical to 'rejected'")]
        if len(chosen) - k != 1 or len(rejected) - k != 1 or k == 0:
            return None, [("differ before last turn", f"{where}: field 'chosen': 'chosen' and 'rejected' differ "
                           f"before their last turn (turn {k + 1}); an implicit prompt needs identical leading "
                           "turns")]
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
    else:
        prompt = row["prompt"]
        if not isinstance(prompt, (str, list)):
            problems.append(("wrong type", f"{where}: field 'prompt': expected a string or a list of messages, "
                             f"got {type(prompt).__name__}"))
        if problems:
            return None, problems
    conversational = _is_messages(prompt)
    if conversational:
        problems += _check_messages(where, "prompt", prompt, completion=False)
    problems += _completion(where, "chosen", chosen, conversational)
    problems += _completion(where, "rejected", rejected, conversational)
    if not problems and chosen == rejected:
        problems.append(("identical", f"{where}: field 'chosen': identical to 'rejected'"))
    return (None if problems else {"prompt": prompt, "chosen": chosen, "rejected": rejected}), problems


def check_unpaired(where: str, row: dict) -> tuple[dict | None, list[Problem]]:
    prompt, p1 = _field(where, row, "prompt")
    completion, p2 = _field(where, row, "completion")
    problems = p1 + p2
    label = row.get("label")
    if "label" not in row or label is None:
        problems.append(("missing field", f"{where}: field 'label': missing"))
    elif not isinstance(label, bool):
        problems.append(("wrong type", f"{where}: field 'label': expected a boolean (true/false), got "
                         f"{type(label).__name__}"))
    if problems:
        return None, problems
    conversational = _is_messages(prompt)
    if conversational:
        problems += _check_messages(where, "prompt", prompt, completion=False)
    problems += _completion(where, "completion", completion, conversational)
    return (None if problems else {"prompt": prompt, "completion": completion, "label": label}), problems


def check_extras(where: str, row: dict, names: tuple[str, ...]) -> tuple[dict, list[Problem]]:
    vals, problems = {}, []
    for name in names:
        v = row.get(name)
        if v is None:
            problems.append(("missing field", f"{where}: field '{name}': missing"))
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            problems.append(("wrong type", f"{where}: field '{name}': expected a finite number, got {v!r}"[:200]))
        else:
            vals[name] = float(v)
    return vals, problems
