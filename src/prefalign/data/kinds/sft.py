"""Supervised fine-tuning rows, TRL's SFT formats unchanged: ``text`` (plain language modelling), ``messages`` (a
conversation; the loss is on assistant turns), or ``prompt``/``completion`` without a label (plain or chat).
A conversation's turns must be in order (no two user or two assistant turns in a row: each assistant turn is
trained after the generation prompt that follows the turns before it, which inference renders only after a user
or tool turn).

Every row becomes one sequence ``prompt | completion`` plus a 0/1 mark per completion token saying whether the loss
counts it. The split is in token space: for ``messages`` each assistant turn's span is where the rendering of the
turns before it (with the generation prompt) ends and the rendering through that turn ends, and both renderings
must be token prefixes of the whole conversation — the same rule as the preference rows' split. With
``completion_only_loss: false`` every token after the first counts (the first has nothing to predict it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefalign.data.batch import Scoring, SeqBatch, _build, _pack
from prefalign.data.kinds.base import Encoded, RowKind, extras_of, register


@dataclass
class SFTExample:
    row: int
    prompt_ids: list[int]  # not trained on (may be empty)
    completion_ids: list[int]
    completion_mask: list[int]  # 1 where the loss counts the token
    extras: dict[str, float] = field(default_factory=dict)


def sft_row_format(row: dict) -> str | None:
    """'text' | 'messages' | 'prompt-completion' for a row in one of TRL's SFT formats, else None."""
    if "label" in row or "chosen" in row or "rejected" in row:
        return None
    if "messages" in row:
        return "messages"
    if "text" in row:
        return "text"
    if "prompt" in row and "completion" in row:
        return "prompt-completion"
    return None


@dataclass
class SFTBatch(SeqBatch):
    """B SFT sequences (sequence i = example i); only marked completion tokens are in the scoring plan."""

    num_rows: int = 0

    @property
    def num_pairs(self) -> int:  # rows of the batch, as pair-oriented code reads them
        return self.num_rows

    def to(self, device) -> SFTBatch:
        base = SeqBatch.to(self, device)
        return SFTBatch(**{f: getattr(base, f) for f in SeqBatch.__dataclass_fields__}, num_rows=self.num_rows)


@register
class SFT(RowKind):
    name = "sft"
    summary = "text, or messages, or prompt + completion (no label)"
    standard_keys = ("text", "messages", "prompt", "completion")

    def check(self, where, row):
        from prefalign.data import validate as v

        fmt = sft_row_format(row)
        if fmt is None:
            got = ", ".join(sorted(k for k in row if not k.startswith("_"))[:6]) or "no fields"
            return {}, [("missing field", f"{where}: field 'text': missing (an SFT row has 'text', 'messages', or "
                         f"'prompt' and 'completion' without 'label'; got {got})")]
        if fmt == "text":
            text = row["text"]
            if not isinstance(text, str):
                return {}, [("wrong type", f"{where}: field 'text': expected a string, got {type(text).__name__}")]
            if not text.strip():
                return {}, [("empty", f"{where}: field 'text': empty or whitespace-only text")]
            return {"text": text}, v._unicode(where, "text", text)
        if fmt == "messages":
            msgs = row["messages"]
            if not isinstance(msgs, list):
                return {}, [("wrong type", f"{where}: field 'messages': expected a list of messages, got "
                             f"{type(msgs).__name__}")]
            problems = v._messages(where, "messages", msgs)
            if not problems:  # each assistant turn is trained after the turns before it, as inference renders them
                problems = v.turn_order(where, "messages", msgs, assistant_runs=False)
            if not problems and not any(m["role"] == "assistant" for m in msgs):
                problems = [("no assistant turn", f"{where}: field 'messages': has no assistant turn to train on")]
            return {"messages": msgs}, problems
        prompt, completion = row["prompt"], row["completion"]
        problems = v._present(where, "prompt", prompt) + v._present(where, "completion", completion)
        if not problems:
            problems = v._prompt(where, prompt) + v._completion(where, "completion", completion, prompt)
        return {"prompt": prompt, "completion": completion}, problems

    def encode(self, split, where, row, max_length, truncation, completion_only_loss: bool = True, **options):
        from prefalign.data.encode import truncate

        if "messages" in row:
            prompt, comp, mask = _messages(split, where, row["messages"])
        elif "text" in row:
            ids = split.prompt(where, row["text"])  # BOS (when the tokenizer adds one) + text
            if split.eos is not None:
                ids = ids + [split.eos]
            prompt, comp, mask = ids[:1], ids[1:], [1] * (len(ids) - 1)
        else:
            prompt, (comp,) = split(where, row["prompt"], {"completion": row["completion"]})
            mask = [1] * len(comp)
        if not completion_only_loss:  # every token counts, from the second on
            ids = prompt + comp
            prompt, comp, mask = ids[:1], ids[1:], [1] * (len(ids) - 1)
        if not comp:
            return "no completion tokens"
        out = truncate(prompt, [comp], max_length, truncation)
        if isinstance(out, str):
            return out
        prompt, (comp,), cut = out
        mask = mask[: len(comp)]
        if not any(mask):
            return "no trained tokens left after truncation"
        ex = SFTExample(row["_row"], prompt, comp, mask, extras_of(row, self.standard_keys))
        return Encoded(ex, [len(prompt)], [sum(mask)], [len(prompt) + len(comp)], cut)

    def collate(self, examples, pad_id, layout, pack, **options):
        """One sequence per example (``layout`` has nothing to share); ``pack`` puts them all in one row. Only the
        marked completion tokens are scored, so log-probs and token counts cover exactly what the loss counts."""
        rows = [[(e.prompt_ids, -1, -1), (e.completion_ids, 0, i)] for i, e in enumerate(examples)]
        if pack:
            rows = _pack(rows)
        ids, mask, pos, sc, real = _build(rows, len(examples), pad_id, pack, None)
        marks = torch.zeros(len(examples), max(len(e.completion_mask) for e in examples), dtype=torch.bool)
        for i, e in enumerate(examples):
            marks[i, : len(e.completion_mask)] = torch.tensor(e.completion_mask, dtype=torch.bool)
        keep = marks[sc.seq, sc.slot]  # [M]
        sc = Scoring(sc.row[keep], sc.pos[keep], sc.target[keep], sc.seq[keep], sc.slot[keep], sc.num_seqs, sc.width)
        return SFTBatch(ids, mask, pos, sc, real, [e.row for e in examples], {}, num_rows=len(examples))

    def view(self, policy, ref, batch):
        return policy  # the SFT method reads the policy's log-probs directly

    def size(self, example) -> int:
        return len(example.prompt_ids) + len(example.completion_ids)

    def token_ids(self, example) -> list:
        return [example.prompt_ids, example.completion_ids, example.completion_mask]

    def logp_metrics(self, policy, batch) -> dict[str, float]:
        n = policy.n_tokens.sum().clamp(min=1)
        return {"logps/chosen": (policy.seq_logps.detach().sum() / n).item()}


def _messages(split, where: str, msgs: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids: the turns before the first assistant turn, with the generation prompt; the rest; 1 on tokens of
    assistant turns), every boundary checked as a token prefix of the whole rendering."""
    from prefalign.errors import UserError

    full = split._chat(where, msgs, add_generation_prompt=False)
    marks = [0] * len(full)
    first = None
    for j, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = split._chat(where, msgs[:j], add_generation_prompt=True) if j else []
        end = split._chat(where, msgs[: j + 1], add_generation_prompt=False)
        if full[: len(start)] != start or full[: len(end)] != end or len(end) <= len(start):
            raise UserError(f"{where}: field 'messages'", f"the chat template does not render turn {j + 1} as a "
                            "token prefix of the whole conversation: cannot find the assistant turn's tokens safely",
                            "use a chat template that renders a conversation's turns as prefixes of it")
        first = len(start) if first is None else first
        marks[len(start) : len(end)] = [1] * (len(end) - len(start))
    return full[:first], full[first:], marks[first:]
