"""Prompt/completion split in token space, and truncation.

Conversations are rendered once with the tokenizer's chat template; the prompt, rendered with
``add_generation_prompt=True``, must be an exact token prefix of prompt+completion, and the completion is the rest
(including what the template appends after the assistant turn, e.g. ``<|im_end|>\\n``, as TRL trains on). Plain
strings: the prompt and prompt+completion are tokenized as whole strings with the same check, and EOS is appended
to the completion (as TRL does). A failed prefix check stops with an error naming the row: never train on a
shifted boundary.

Truncation to ``max_length`` tokens per sequence: ``keep_start`` cuts completions' ends (rows whose prompt alone
fills the budget are dropped); ``keep_end`` cuts the prompt's start by what the longer completion needs, the same
for both completions so the pair still shares one prompt (rows whose prompt would vanish are dropped).
"""

from __future__ import annotations

from prefalign.data.types import PairExample, PointExample
from prefalign.errors import UserError


def _ids(enc) -> list[int]:
    ids = enc["input_ids"] if not isinstance(enc, list) else enc
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def _split(tokenizer, where: str, field: str, prompt, completion) -> tuple[list[int], list[int]]:
    if isinstance(prompt, list):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(where, "rows are conversations but the tokenizer has no chat template",
                            "use a chat model's tokenizer, or give prompt/chosen/rejected as plain strings")
        p = _ids(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
        full = _ids(tokenizer.apply_chat_template(prompt + completion, tokenize=True))
        hint = "the chat template renders the prompt differently alone; use a template that keeps it a prefix"
    else:
        p = _ids(tokenizer(prompt))
        full = _ids(tokenizer(prompt + completion))
        hint = "a token spans the prompt/completion boundary; end the prompt on a token boundary (e.g. a space)"
    if full[: len(p)] != p or len(full) == len(p):
        raise UserError(f"{where}: field '{field}'", "the prompt is not an exact token prefix of prompt+"
                        f"{field}, so prompt and completion cannot be split safely", hint)
    comp = full[len(p) :]
    if not isinstance(prompt, list) and tokenizer.eos_token_id is not None and comp[-1] != tokenizer.eos_token_id:
        comp = comp + [tokenizer.eos_token_id]
    return p, comp


def truncate(prompt: list[int], comps: list[list[int]], max_length: int | None, mode: str):
    """(prompt, completions, truncated?) or a drop reason string."""
    if max_length is None or all(len(prompt) + len(c) <= max_length for c in comps):
        return prompt, comps, False
    if mode == "keep_start":
        if len(prompt) >= max_length:
            return "prompt fills max_length"
        return prompt, [c[: max_length - len(prompt)] for c in comps], True
    cut = len(prompt) + max(len(c) for c in comps) - max_length
    if cut >= len(prompt):
        return "completion fills max_length (keep_end would cut the whole prompt)"
    return prompt[cut:], comps, True


def encode_pair(tokenizer, where: str, row: dict, extras: dict, max_length, mode: str, number: int):
    p, c = _split(tokenizer, where, "chosen", row["prompt"], row["chosen"])
    p2, r = _split(tokenizer, where, "rejected", row["prompt"], row["rejected"])
    if p2 != p:  # cannot happen with a deterministic template; guard the boundary anyway
        raise UserError(f"{where}: field 'rejected'", "prompt tokens differ between chosen and rejected",
                        "check the chat template")
    out = truncate(p, [c, r], max_length, mode)
    if isinstance(out, str):
        return out, False
    p, (c, r), cut = out
    return PairExample(number, p, c, r, extras), cut


def encode_point(tokenizer, where: str, row: dict, extras: dict, max_length, mode: str, number: int):
    p, c = _split(tokenizer, where, "completion", row["prompt"], row["completion"])
    out = truncate(p, [c], max_length, mode)
    if isinstance(out, str):
        return out, False
    p, (c,), cut = out
    return PointExample(number, p, c, bool(row["label"]), extras), cut
