"""D2O rows: ``prompt``, a human negative ``rejected`` and K self-generated ``samples`` → ``SampleExample`` →
``collate_samples`` → ``SampleLogps``. The negative and all samples are truncated together, like a pair."""

from __future__ import annotations

from prefalign.data.kinds.base import Encoded, RowKind, extras_of, register
from prefalign.data.kinds.paired import lengths


@register
class Samples(RowKind):
    name = "samples"
    summary = "prompt, rejected, samples (K completions from the reference)"
    standard_keys = ("prompt", "rejected", "samples")

    def check(self, where, row):
        from prefalign.data.validate import check_samples

        return check_samples(where, row)

    def encode(self, split, where, row, max_length, truncation):
        from prefalign.data.encode import truncate
        from prefalign.data.types import SampleExample

        named = {"rejected": row["rejected"], **{f"samples[{i}]": c for i, c in enumerate(row["samples"])}}
        prompt, comps = split(where, row["prompt"], named)
        out = truncate(prompt, comps, max_length, truncation)
        if isinstance(out, str):
            return out
        prompt, comps, cut = out
        return Encoded(SampleExample(row["_row"], prompt, comps[0], comps[1:], extras_of(row, self.standard_keys)),
                       **lengths(prompt, comps), truncated=cut)

    def collate(self, examples, pad_id, layout, pack, **options):
        from prefalign.data.batch import collate_samples

        return collate_samples(examples, pad_id, layout, pack)

    def view(self, policy, ref, batch):
        from prefalign.train.views import to_sample_logps

        return to_sample_logps(policy, ref, batch)

    def token_ids(self, example) -> list:
        return [example.prompt_ids, example.rejected_ids, *example.sample_ids]

    def logp_metrics(self, policy, batch) -> dict[str, float]:
        """The self-generated samples count as "chosen", the negatives as "rejected"."""
        b = batch.num_rows
        avg = policy.seq_logps.detach() / policy.n_tokens.clamp(min=1)
        return {"logps/chosen": avg[b:].mean().item(), "logps/rejected": avg[:b].mean().item()}
