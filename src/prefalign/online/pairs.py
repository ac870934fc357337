"""Online methods that train a *pairwise* objective on pairs chosen from each rollout (online DPO; the pairs an
exploration rule picks): the pairs become ordinary ``PairExample`` rows and go through the offline path unchanged —
the paired row kind's batch layout (prompt shared by both completions), the reference, the objective's own view and
loss (``train/forward.py``). One unit per pair: each micro-batch is weighted by its share of the global batch's
pairs, so accumulation and processes leave the gradient unchanged."""

from __future__ import annotations

import dataclasses

import torch

from prefalign.data import kinds
from prefalign.data.types import PairExample


class PairTrainer:
    def __init__(self, cfg, algo):
        from prefalign.train.setup import build_objective

        pcfg = dataclasses.replace(cfg, method="preference", objective=algo.loss, objective_args=dict(algo.loss_args),
                                   beta=algo.beta)
        self.objective = build_objective(pcfg)
        self.needs = self.objective.needs()
        self.kind = kinds.get("paired")
        if self.objective.row_kind != "paired":
            from prefalign.errors import UserError

            raise UserError("config", f"online pairs train pairwise objectives; '{algo.loss}' reads "
                            f"{self.objective.row_kind} rows", "use dpo, ipo, simpo, … (paired objectives)")

    def examples(self, buf: dict, prompts: list[list[int]], rows: list[int]) -> list[PairExample]:
        """The rollout's valid pairs as rows (prompt = the group's prompt ids; completions = the sampled ids)."""
        ids, lengths = buf["ids"].tolist(), buf["mask"].sum(-1).tolist()
        out = []
        for g, (c, r, ok) in enumerate(zip(buf["extra/pair_chosen"].tolist(), buf["extra/pair_rejected"].tolist(),
                                           buf["extra/pair_valid"].tolist())):
            if ok:
                out.append(PairExample(rows[g], prompts[g], ids[c][: lengths[c]], ids[r][: lengths[r]]))
        return out

    def batch(self, examples: list[PairExample], pad: int, layout: str, pack: bool, device):
        return self.kind.collate(examples, pad, layout, pack, **self.needs.row_options).to(device)

    def loss(self, batch, model, reference, chunk_size: int, score):
        from prefalign.train.forward import forward

        out, pol, _ = forward(self.objective, self.needs, model, reference, batch, self.kind.view, chunk_size,
                              True, score=score)
        return out.loss, {**out.metrics, **self.kind.logp_metrics(pol, batch)}


def pair_counts(buf: dict, reduce) -> tuple[int, float]:
    """(this process's valid pairs, the global count)."""
    local = int(buf["extra/pair_valid"].sum())
    return local, float(reduce(torch.tensor([float(local)], dtype=torch.float64))[0])
