"""Supervised fine-tuning as a method of the engine, on TRL's SFT rows (``data/kinds/sft.py``).

    loss = − Σ_{trained tokens t of the global batch} log π_θ(y_t | y_<t)  /  #trained tokens of the global batch

A token mean over the whole global batch (as TRL's SFTTrainer with ``num_items_in_batch``), so micro-batching,
gradient accumulation, the number of processes and packing leave the loss and its gradient unchanged: each
micro-batch's token mean is weighted by its share of the global batch's trained tokens. No reference model.
"""

from __future__ import annotations

import torch

from prefalign.data import kinds
from prefalign.data.io import read_table
from prefalign.data.kinds.sft import sft_row_format
from prefalign.errors import UserError
from prefalign.train.method import Method, MicroBatch, register


def looks_like_sft(path: str) -> bool:
    """Whether the data file's first readable row is an SFT row (text, messages, prompt+completion w/o label)."""
    try:
        rows, _ = read_table(path)
    except UserError:
        return False  # the method's own loading reports the file's problem
    return bool(rows) and sft_row_format(rows[0][1]) is not None


@register
class SFT(Method):
    name = "sft"
    progress_keys = ()

    def __init__(self, cfg):
        if cfg.objective != "sft":
            raise UserError("config", f"method 'sft' trains the SFT loss, not objective {cfg.objective!r}",
                            "set objective: sft, or method: preference for preference objectives")
        self.cfg, self.kind = cfg, kinds.get("sft")

    def setup(self, engine) -> None:
        self.engine = engine
        self.load_examples("sft", {}, {"completion_only_loss": self.cfg.completion_only_loss})
        self.model = self.build_policy()

    def _tokens(self, i: int, examples=None) -> int:
        return sum((examples or self.examples)[i].completion_mask)

    def batch(self, idx: list[int], examples):
        b = self.kind.collate([examples[i] for i in idx], self.tokenizer.pad_token_id, "separate", self.cfg.pack)
        return b.to(self.engine.acc.device)

    def micro_batches(self, step, idx, rank, world):
        return [MicroBatch(self.batch(c, self.examples), [self.examples[i].row for i in c], w, s)
                for c, w, s in self.split(idx, rank, world, sizes=self._tokens)]

    def longest_micro_batch(self) -> MicroBatch:
        order = sorted(range(len(self.examples)), key=lambda i: -self.kind.size(self.examples[i]))
        return MicroBatch(self.batch(order[: self.cfg.batch_size], self.examples))

    def loss(self, mb: MicroBatch, step: int):
        pol = self.engine.score(mb.data, chunk_size=self.cfg.log_prob_chunk_size)
        n = pol.n_tokens.sum().clamp(min=1)
        nll = -pol.seq_logps.sum() / n  # this micro-batch's token mean
        return nll, {"nll": nll.item(), "logps/chosen": -nll.item(), "tokens": float(n)}

    @torch.no_grad()
    def evaluate(self) -> dict:
        total, tokens = 0.0, 0
        for s in range(0, len(self.eval_examples), self.cfg.batch_size):
            idx = list(range(s, min(len(self.eval_examples), s + self.cfg.batch_size)))
            pol = self.engine.score(self.batch(idx, self.eval_examples), chunk_size=self.cfg.log_prob_chunk_size)
            total -= pol.seq_logps.sum().item()
            tokens += int(pol.n_tokens.sum())
        nll = total / max(tokens, 1)
        return {"loss": nll, "nll": nll, "perplexity": float(torch.tensor(nll).exp())}
