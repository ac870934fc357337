"""Config field metadata: the --help groups and ``_m``, which declares a field's help, group, choices and range
(checked in one place, ``train/config.py::check``). Kept apart so method-specific field groups (``online/config.py``)
declare their fields the same way without importing the whole config module."""

from __future__ import annotations

import math

# Help-screen headers, in the order `prefalign train --help` prints them.
GROUPS = {
    "model": "model",
    "data": "data",
    "objective": "objective",
    "sft": "SFT (method: sft)",
    "online": "online RL (method: online)",
    "reference": "reference",
    "lora": "LoRA",
    "optimisation": "optimisation",
    "distributed": "distributed (several processes)",
    "output": "output, logging, checkpoints",
}


def _m(group: str, help: str, choices: tuple | None = None, range: str | None = None,
       items: tuple | None = None) -> dict:
    """A field's metadata: its one-line help, its --help group and (optionally) its allowed values (``choices``),
    its numeric range (``range``: ``">= 0"``, ``"> 0"``, ``"[0, 1)"``, …; for a list, of every item) and the
    allowed values of a list's items (``items``). ``check`` enforces all of them, in one place."""
    assert group in GROUPS, group
    assert range is None or _parse_range(range), range
    extra = {"choices": choices, "range": range, "items": items}
    return {"help": help, "group": group, **{k: v for k, v in extra.items() if v}}


def _parse_range(rule: str) -> tuple[float, float, bool, bool]:
    """``">= a"`` / ``"> a"`` / ``"<= b"`` / ``"[a, b)"`` … → (low, high, low included, high included)."""
    rule = rule.strip()
    for op in (">=", ">", "<=", "<"):
        if rule.startswith(op):
            x = float(rule[len(op):])
            return (x, math.inf, op == ">=", False) if op[0] == ">" else (-math.inf, x, False, op == "<=")
    lo, hi = rule[1:-1].split(",")
    return float(lo), float(hi), rule[0] == "[", rule[-1] == "]"


def in_range(value: float, rule: str) -> bool:
    lo, hi, lo_in, hi_in = _parse_range(rule)
    return (lo < value or (lo_in and value == lo)) and (value < hi or (hi_in and value == hi))
