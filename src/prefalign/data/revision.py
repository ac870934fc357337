"""FIGA's revision rows: an initial answer ŷ and its revision y, aligned token by token.

The alignment is ``difflib.SequenceMatcher`` on the two completions' token ids (autojunk off, so frequent tokens
are never ignored). Its opcodes mark:

- in y (revised): tokens that ``insert`` or ``replace`` produced — what the revision added or changed;
- in ŷ (initial): tokens that ``delete`` or ``replace`` removed — what the revision took out.

Replaced tokens of ŷ count as removed, as in the reference code (RUCAIBox/FIGA train.py: its negative mask takes
every Levenshtein edit op except ``insert`` on the initial side, its positive mask every op except ``delete`` on the
revised side). SequenceMatcher is not Levenshtein: on the same pair the two may align differently (it finds longest
matching blocks, not a minimum edit script), so the marked sets can differ from the reference's on some pairs.
The reference also always gives the revised answer's EOS a positive weight; here EOS is marked only when the diff
marks it (an unchanged ending is not an edit).
"""

from __future__ import annotations

from difflib import SequenceMatcher


def revision_marks(initial: list[int], revised: list[int]) -> tuple[list[int], list[int]]:
    """(added, removed): 0/1 per token of ``revised`` (inserted or replaced) and of ``initial`` (deleted or
    replaced)."""
    added, removed = [0] * len(revised), [0] * len(initial)
    for op, i1, i2, j1, j2 in SequenceMatcher(None, initial, revised, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            removed[i1:i2] = [1] * (i2 - i1)
        if op in ("replace", "insert"):
            added[j1:j2] = [1] * (j2 - j1)
    return added, removed
