"""Batches of token ids: chosen and rejected of B pairs stacked into one [2B, L] forward.

Rows 0..B−1 are prompt+chosen, rows B..2B−1 prompt+rejected (TRL's layout), right-padded.
``completion_mask`` marks the tokens whose log-probs count (the completion); ``labels`` are the inputs
shifted left so position t predicts token t+1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefalign.data.types import PairExample


@dataclass
class SeqBatch:
    input_ids: torch.Tensor  # [N, L]
    attention_mask: torch.Tensor  # [N, L] 1 on real tokens
    completion_mask: torch.Tensor  # [N, L] 1 on completion tokens (the ones scored)
    rows: list[int] = field(default_factory=list)  # source row of each pair (length B)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # [B] per declared field
    ref_logps: torch.Tensor | None = None  # [N] cached reference log-probs, when precomputed

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def to(self, device) -> "SeqBatch":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return SeqBatch(move(self.input_ids), move(self.attention_mask), move(self.completion_mask), self.rows,
                        {k: move(v) for k, v in self.extras.items()}, move(self.ref_logps))


def _pad(seqs: list[list[int]], value: int, length: int) -> torch.Tensor:
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate_pairs(examples: list[PairExample], pad_id: int, pad_to_multiple_of: int | None = None) -> SeqBatch:
    seqs = [e.prompt_ids + e.chosen_ids for e in examples] + [e.prompt_ids + e.rejected_ids for e in examples]
    comp = [[0] * len(e.prompt_ids) + [1] * len(e.chosen_ids) for e in examples] + [
        [0] * len(e.prompt_ids) + [1] * len(e.rejected_ids) for e in examples
    ]
    length = max(len(s) for s in seqs)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    extras = {}
    for key in examples[0].extras if examples else ():
        extras[key] = torch.tensor([float(e.extras[key]) for e in examples], dtype=torch.float32)
    return SeqBatch(
        input_ids=_pad(seqs, pad_id, length),
        attention_mask=_pad([[1] * len(s) for s in seqs], 0, length),
        completion_mask=_pad(comp, 0, length),
        rows=[e.row for e in examples],
        extras=extras,
    )
