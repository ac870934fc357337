"""Prompt rows for online RL: ``prompt`` (a string or a conversation), plus any other fields as *columns* handed
to the reward functions (``answer`` for a maths checker, …) → ``PromptExample``. Nothing is batched from these
rows directly: the online method samples completions for them and batches the (prompt, completion) groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefalign.data.kinds.base import Encoded, RowKind, register


@dataclass
class PromptExample:
    row: int
    prompt_ids: list[int]
    prompt: Any  # the row's prompt as given (a string or a list of messages): what reward functions see
    columns: dict[str, Any] = field(default_factory=dict)  # the row's other fields, for reward functions


def prompt_text(prompt) -> str:
    """The text a reward function reads for a prompt: the string itself, or a conversation's last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


@register
class Prompts(RowKind):
    name = "prompts"
    summary = "prompt (string or messages); other fields are columns for the reward functions"
    standard_keys = ("prompt",)

    def check(self, where, row):
        from prefalign.data.validate import _present, _prompt

        prompt = row.get("prompt")
        problems = _present(where, "prompt", prompt)
        if not problems:
            problems = _prompt(where, prompt)
        if not problems and isinstance(prompt, list) and prompt and prompt[-1].get("role") == "assistant":
            problems = [("turn order", f"{where}: field 'prompt': ends with an assistant turn; the policy answers "
                         "after a user turn")]
        columns = {k: v for k, v in row.items() if k != "prompt" and not k.startswith("_")}
        return {"prompt": prompt, **columns}, problems

    def encode(self, split, where, row, max_length, truncation, max_new_tokens: int = 0):
        ids = split.sampling_prompt(row["prompt"], where=where)  # the ids a sampler continues (data/render.py)
        if not ids:
            return "empty prompt"
        if max_length is not None and len(ids) + max_new_tokens > max_length:
            return "prompt + max_new_tokens exceed max_length"
        columns = {k: v for k, v in row.items() if k != "prompt" and not k.startswith("_")}
        return Encoded(PromptExample(row["_row"], ids, row["prompt"], columns), prompt_lengths=[len(ids)],
                       total_lengths=[len(ids) + max_new_tokens])

    def size(self, example) -> int:
        return len(example.prompt_ids)

    def token_ids(self, example) -> list:
        return [example.prompt_ids]
