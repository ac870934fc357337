"""Verifiable rewards: rule-based checks of a completion, against a row's ``answer`` column where there is one.

- ``math`` (``MathReward``): the final answer of the completion compared numerically with the row's ``answer``:
  1.0 equal, 0.0 not (or no number at all), None when the row's answer is empty or None.
- ``exact`` (``ExactReward``): normalised string equality of the final answer with the row's ``answer``.
- ``regex:PATTERN`` (``RegexReward``): 1.0 if ``re.search(PATTERN, completion)`` finds a match, else 0.0.
- ``format:think`` / ``format:answer`` (``FormatReward``): the R1-style ``<think>…</think>`` layout.
- ``length:TARGET`` (``LengthReward``): −|len − TARGET| / TARGET, lengths in *characters* (a reward sees text,
  not a tokenizer, and characters are the same for every model).

The final answer of a text (``extract_answer``) is, first found wins: the content of the last ``\\boxed{…}`` (or
``\\fbox{…}``, braces balanced); the rest of the line after the last ``####`` (GSM8K); the rest of the line after the
last "answer:" / "answer is" / "answer =" (any case, so "Final Answer:" too). Without any of them, ``math`` uses the
last number in the text. A number (``parse_number``) is an optionally signed integer or decimal with optional
thousands separators (``1,234``) and exponent, a fraction ``a/b`` or ``\\frac{a}{b}``; LaTeX spacing (``\\,``,
``{,}``), ``$`` and a Unicode minus are ignored. In an extracted answer the first number counts ("answer: 12,
since 3·4 = 12"). The gold answer (a number, or a string such as ``"3/4"``, ``"1,234"`` or a GSM8K solution ending in
``#### 72``) must be a number as a whole; when it is not (``"x^2 + 1"``), ``math`` compares strings like
``exact``, spaces removed.
Numbers are equal within ``math.isclose(rel_tol, abs_tol=1e-9)``; ``rel_tol`` is 1e-6 unless ``math:REL_TOL``.
"""

from __future__ import annotations

import math
import numbers
import re

from prefalign.errors import UserError
from prefalign.reward.base import RewardFn

_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"  # thousands separators only in groups of three
_DEC = rf"(?:{_INT}(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUM = rf"[-+]?{_DEC}"
_NUMBER = re.compile(rf"(?P<sign>[-+]?)\\[dt]?frac\s*\{{\s*(?P<tn>{_NUM})\s*\}}\s*\{{\s*(?P<td>{_NUM})\s*\}}"
                     rf"|(?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER = re.compile(r"answer\s*(?:is\b\s*:?|:|=)\s*", re.IGNORECASE)
_TEX_NOISE = re.compile(r"\\[,!;: ]|\\left|\\right|\$")


def extract_answer(text: str) -> str | None:
    """The explicit final answer of ``text`` (see the module docstring), or None when it states none."""
    boxes = list(_BOX.finditer(text))
    for m in reversed(boxes):  # the last balanced \boxed{...}
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0:
            return text[m.end() : j - 1]
    for marker in (re.compile(r"####\s*"), _ANSWER):
        found = list(marker.finditer(text))
        if found:
            return text[found[-1].end() :].split("\n", 1)[0]
    return None


def _clean(text: str) -> str:
    return _TEX_NOISE.sub("", text.replace("{,}", ",").replace("\\%", "%").replace("\u2212", "-"))


def _value(m: re.Match) -> float | None:
    def num(s: str) -> float:
        return float(s.replace(",", ""))

    try:
        if m.group("tn") is not None:
            v = num(m.group("tn")) / num(m.group("td"))
            return -v if m.group("sign") == "-" else v
        v = num(m.group("num"))
        return v / num(m.group("den")) if m.group("den") is not None else v
    except (ZeroDivisionError, OverflowError, ValueError):
        return None


def parse_number(text: str, last: bool = False, whole: bool = False) -> float | None:
    """The first (``last``: the last) number in ``text``; ``whole``: only if the text is one number (a trailing
    ``.``, ``%`` or unit-free spacing aside). None when there is none."""
    text = _clean(text).strip()
    if whole:
        m = _NUMBER.fullmatch(text.rstrip(".%").strip())
        return _value(m) if m else None
    found = list(_NUMBER.finditer(text))
    if not found:
        return None
    return _value(found[-1] if last else found[0])


def normalise_text(text: str) -> str:
    """Case-folded, LaTeX ``\\text{}`` / ``$`` / surrounding quotes and a final period removed, spaces collapsed."""
    text = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", text)
    text = " ".join(_clean(text).split()).casefold()
    return text.strip(" .\"'`")


def _gold(value) -> tuple[float | None, str] | None:
    """(number or None, normalised string) of a row's answer; None when the row has no answer."""
    if value is None or isinstance(value, bool):
        return None if value is None else (None, normalise_text(str(value)))
    if isinstance(value, numbers.Real):
        return (float(value), normalise_text(str(value))) if math.isfinite(value) else None
    text = str(value)
    if not text.strip():
        return None
    explicit = extract_answer(text)
    text = explicit if explicit is not None else text
    return parse_number(text, whole=True), normalise_text(text)


class _ColumnReward(RewardFn):
    """A check against one column (``answer``): None for rows whose value is missing."""

    def __init__(self, column: str = "answer", batch_size: int = 1024):
        super().__init__(batch_size)
        self.column = column
        self.requires = self.accepts = (column,)
        self.none_why = f"the row has no '{column}' value"

    def _score(self, prompts, completions, **columns):
        return [None if (g := _gold(a)) is None else self._check(c, g)
                for c, a in zip(completions, columns[self.column])]

    def _check(self, completion: str, gold: tuple[float | None, str]) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class ExactReward(_ColumnReward):
    name = "exact"

    def _check(self, completion, gold):
        explicit = extract_answer(completion)
        return float(normalise_text(explicit if explicit is not None else completion) == gold[1])


class MathReward(_ColumnReward):
    def __init__(self, rel_tol: float = 1e-6, column: str = "answer", batch_size: int = 1024):
        super().__init__(column, batch_size)
        if not (rel_tol >= 0 and math.isfinite(rel_tol)):
            raise UserError("reward math", f"tolerance {rel_tol} is not a number >= 0", "e.g. math:1e-4")
        self.rel_tol = rel_tol
        self.name = "math" if rel_tol == 1e-6 else f"math:{rel_tol:g}"

    def _check(self, completion, gold):
        number, text = gold
        explicit = extract_answer(completion)
        if number is None:  # a symbolic gold answer: compare the normalised strings, spaces removed
            return float(explicit is not None and "".join(normalise_text(explicit).split()) == "".join(text.split()))
        got = parse_number(explicit) if explicit is not None else parse_number(completion, last=True)
        return float(got is not None and math.isclose(got, number, rel_tol=self.rel_tol, abs_tol=1e-9))


class RegexReward(RewardFn):
    """1.0 where ``re.search(pattern, completion)`` matches (a format reward), else 0.0."""

    def __init__(self, pattern: str, batch_size: int = 1024):
        super().__init__(batch_size)
        self.name = f"regex:{pattern}"
        try:
            self.pattern = re.compile(pattern)
        except re.error as e:
            raise UserError(f"reward {self.name}", f"is not a valid regular expression ({e})",
                            "fix the pattern (quote it in a spec when it holds + * ( ) , or spaces)") from None

    def _score(self, prompts, completions):
        return [float(self.pattern.search(c) is not None) for c in completions]


_LAYOUTS = {  # DOTALL; no nested or repeated tags inside a block
    "think": r"\s*<think>(?:(?!</?think>).)*</think>\s*\S.*",  # a reasoning block, then something
    "answer": r"\s*<think>(?:(?!</?think>).)*</think>\s*<answer>(?:(?!</?answer>).)*</answer>\s*",
}


class FormatReward(RewardFn):
    """``format:think``: 1.0 for ``<think>…</think>`` then an answer; ``format:answer``: 1.0 for exactly
    ``<think>…</think><answer>…</answer>`` (whitespace around the blocks allowed); else 0.0."""

    def __init__(self, layout: str = "think", batch_size: int = 1024):
        super().__init__(batch_size)
        self.name = f"format:{layout}"
        if layout not in _LAYOUTS:
            raise UserError(f"reward {self.name}", f"unknown layout '{layout}'",
                            f"use one of: {', '.join('format:' + k for k in _LAYOUTS)}")
        self.pattern = re.compile(_LAYOUTS[layout], re.DOTALL)

    def _score(self, prompts, completions):
        return [float(self.pattern.fullmatch(c) is not None) for c in completions]


class LengthReward(RewardFn):
    """−|len(completion) − target| / target, in characters: 0 at the target, −1 at 0 or twice the target."""

    def __init__(self, target: int, batch_size: int = 1024):
        super().__init__(batch_size)
        self.name = f"length:{target}"
        if isinstance(target, bool) or not isinstance(target, int) or target < 1:
            raise UserError(f"reward {self.name}", "the target length is not a whole number of characters >= 1",
                            "e.g. length:400")
        self.target = target

    def _score(self, prompts, completions):
        return [-abs(len(c) - self.target) / self.target for c in completions]
