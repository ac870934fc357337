"""CUT rows: ``prompt``, ``completion`` and a text ``judgment`` → a ``JudgedExample`` whose completion ids are split
off after the plain prompt once and reused after the judged prompt (x ⊕ j), so both sequences score the very same
tokens → ``collate_judged`` → ``JudgedLogps``."""

from __future__ import annotations

from prefalign.data.kinds.base import Encoded, RowKind, extras_of, register


@register
class Judgment(RowKind):
    name = "judgment"
    summary = "prompt, completion, judgment"
    standard_keys = ("prompt", "completion", "judgment")

    def check(self, where, row):
        from prefalign.data.validate import check_judgment

        return check_judgment(where, row)

    def encode(self, split, where, row, max_length, truncation):
        from prefalign.data.encode import truncate_judged, with_judgment
        from prefalign.data.types import JudgedExample

        prompt, comps = split(where, row["prompt"], {"completion": row["completion"]})
        judged = split.prompt(where, with_judgment(row["prompt"], row["judgment"]))
        out = truncate_judged(prompt, judged, comps[0], max_length, truncation)
        if isinstance(out, str):
            return out
        prompt, judged, comp, cut = out
        return Encoded(JudgedExample(row["_row"], prompt, judged, comp, extras_of(row, self.standard_keys)),
                       [len(prompt)], [len(comp)], [len(prompt) + len(comp)], cut)

    def collate(self, examples, pad_id, layout, pack, **options):
        from prefalign.data.batch import collate_judged

        return collate_judged(examples, pad_id, layout, pack)

    def view(self, policy, ref, batch):
        from prefalign.train.views import to_judged_logps

        return to_judged_logps(policy, ref, batch)

    def size(self, example) -> int:  # the completion twice: after the prompt and after the judged prompt
        return len(example.prompt_ids) + len(example.judged_prompt_ids) + 2 * len(example.completion_ids)

    def token_ids(self, example) -> list:
        return [example.prompt_ids, example.judged_prompt_ids, example.completion_ids]
