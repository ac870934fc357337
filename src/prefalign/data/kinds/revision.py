"""FIGA rows: ``prompt``, an ``initial`` answer and its ``revised`` version → a ``PairExample`` (chosen = revised,
rejected = initial) whose 0/1 token marks come from diffing the two completions' ids *after* truncation, so marks
and tokens always line up → ``collate_pairs`` (marks in sequence order) → ``PairLogps`` with the marks."""

from __future__ import annotations

from prefalign.data.kinds.base import Encoded, extras_of, register
from prefalign.data.kinds.paired import Paired, encode_completions, lengths


@register
class Revision(Paired):
    name = "revision"
    summary = "prompt, initial, revised"
    standard_keys = ("prompt", "initial", "revised")

    def accept(self, where, row, options) -> None:
        """Revision rows have no cross-prompt form."""

    def check(self, where, row):
        from prefalign.data.validate import check_revision

        return check_revision(where, row)

    def encode(self, split, where, row, max_length, truncation):
        from prefalign.data.revision import revision_marks
        from prefalign.data.types import PairExample

        out = encode_completions(split, where, row, ("revised", "initial"), max_length, truncation)
        if isinstance(out, str):
            return out
        prompt, comps, cut = out
        added, removed = revision_marks(initial=comps[1], revised=comps[0])
        ex = PairExample(row["_row"], prompt, comps[0], comps[1], extras_of(row, self.standard_keys), added, removed)
        return Encoded(ex, **lengths(prompt, comps), truncated=cut)
