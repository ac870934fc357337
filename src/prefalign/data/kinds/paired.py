"""Paired rows: ``prompt``/``chosen``/``rejected`` (plain or chat, implicit prompt), n-sample rows (best vs worst)
and cross-prompt pairs (JPO) → ``PairExample`` → ``collate_pairs`` → ``PairLogps``."""

from __future__ import annotations

from prefalign.data.kinds.base import Encoded, RowKind, extras_of, register

CROSS_FIELDS = {"chosen_prompt", "rejected_prompt"}  # the two prompts of a cross-prompt pair


def encode_completions(split, where: str, row: dict, fields: tuple[str, ...], max_length, truncation):
    """(prompt ids, completion ids per field, truncated) after one shared prompt, or the drop reason."""
    from prefalign.data.encode import truncate

    named = {name: row[name] for name in fields}
    prompt, comps = split(where, row["prompt"], named)
    return truncate(prompt, comps, max_length, truncation)


def lengths(prompt: list[int], comps: list[list[int]]) -> dict:
    return {"prompt_lengths": [len(prompt)], "completion_lengths": [len(c) for c in comps],
            "total_lengths": [len(prompt) + len(c) for c in comps]}


@register
class Paired(RowKind):
    name = "paired"
    summary = "prompt, chosen, rejected (or completions + scores, or chosen_prompt/rejected_prompt pairs)"
    standard_keys = ("prompt", "rejected_prompt", "chosen", "rejected")
    precomputable = True

    def accept(self, where: str, row: dict, options: dict) -> None:
        if options.get("cross_prompt") or not CROSS_FIELDS & row.keys():
            return
        from prefalign.errors import UserError

        name = next(f for f in ("chosen_prompt", "rejected_prompt") if f in row)
        raise UserError(f"{where}: field '{name}'", "a cross-prompt pair, which this objective does not accept",
                        options.get("cross_prompt_hint") or "use an objective that accepts cross-prompt pairs")

    def check(self, where: str, row: dict):
        from prefalign.data import validate as v

        if CROSS_FIELDS & row.keys():
            return v.check_cross(where, row)
        if "completions" in row or "scores" in row:
            norm, problems = v.check_nsample(where, row)
            if not problems:  # the pair's scores are row fields an objective may declare
                norm["_scores"] = {"score_chosen": norm.pop("_best"), "score_rejected": norm.pop("_worst")}
            return norm, problems
        return v.check_paired(where, row)

    def encode(self, split, where, row, max_length, truncation):
        from prefalign.data.types import PairExample

        extras = extras_of(row, self.standard_keys)
        if "rejected_prompt" in row:  # a cross-prompt pair: each side after its own prompt
            from prefalign.data.encode import _cross_pair

            out = _cross_pair(split, where, row, max_length, truncation)
            if isinstance(out, str):
                return out
            x1, chosen, x2, rejected, cut = out
            return Encoded(PairExample(row["_row"], x1, chosen, rejected, extras, rejected_prompt_ids=x2),
                           [len(x1), len(x2)], [len(chosen), len(rejected)],
                           [len(x1) + len(chosen), len(x2) + len(rejected)], cut)
        out = encode_completions(split, where, row, ("chosen", "rejected"), max_length, truncation)
        if isinstance(out, str):
            return out
        prompt, comps, cut = out
        return Encoded(PairExample(row["_row"], prompt, comps[0], comps[1], extras), **lengths(prompt, comps),
                       truncated=cut)

    def collate(self, examples, pad_id, layout, pack, **options):
        from prefalign.data.batch import collate_pairs

        return collate_pairs(examples, pad_id, layout, pack)

    def view(self, policy, ref, batch):
        from prefalign.train.views import to_pair_logps

        return to_pair_logps(policy, ref, batch)

    def token_ids(self, example) -> list:
        ids = [example.prompt_ids, example.chosen_ids, example.rejected_ids]
        if example.rejected_prompt_ids is not None:  # cross-prompt: x₂ too (same-prompt keys unchanged)
            ids.append(example.rejected_prompt_ids)
        return ids
