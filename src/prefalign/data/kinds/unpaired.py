"""Unpaired rows: ``prompt``/``completion``/``label`` (KTO, BCO) → ``PointExample`` → ``collate_points`` →
``PointLogps``. An objective that compares with mismatched completions (KTO's KL term) asks for them through its
needs' row options (``mismatched: true``)."""

from __future__ import annotations

from prefalign.data.kinds.base import Encoded, RowKind, extras_of, register
from prefalign.data.kinds.paired import encode_completions, lengths


@register
class Unpaired(RowKind):
    name = "unpaired"
    summary = "prompt, completion, label (boolean)"
    standard_keys = ("prompt", "completion", "label")

    def check(self, where, row):
        from prefalign.data.validate import check_unpaired

        return check_unpaired(where, row)

    def encode(self, split, where, row, max_length, truncation):
        from prefalign.data.types import PointExample

        out = encode_completions(split, where, row, ("completion",), max_length, truncation)
        if isinstance(out, str):
            return out
        prompt, comps, cut = out
        return Encoded(PointExample(row["_row"], prompt, comps[0], row["label"], extras_of(row, self.standard_keys)),
                       **lengths(prompt, comps), truncated=cut)

    def collate(self, examples, pad_id, layout, pack, mismatched: bool = False, **options):
        from prefalign.data.batch import collate_points

        return collate_points(examples, pad_id, layout, pack, mismatched=mismatched)

    def view(self, policy, ref, batch):
        from prefalign.train.views import to_point_logps

        return to_point_logps(policy, ref, batch)

    def token_ids(self, example) -> list:
        return [example.prompt_ids, example.completion_ids]

    def logp_metrics(self, policy, batch) -> dict[str, float]:
        """Desirable rows count as "chosen", undesirable as "rejected"; a side with no rows is left out."""
        b, lab = batch.num_points, batch.labels
        avg = (policy.seq_logps.detach() / policy.n_tokens.clamp(min=1))[:b]
        out = {}
        for key, m in (("logps/chosen", lab), ("logps/rejected", ~lab)):
            if m.any():  # a mean over zero rows is no number: left out, not logged as 0
                out[key] = (avg[m].sum() / m.sum()).item()
        return out
