"""FIGA (Guo et al., "Beyond Imitation: Leveraging Fine-grained Quality Signals for Alignment", ICLR 2024;
methods.md #16, checked against the reference code RUCAIBox/FIGA, train.py and modeling_llama.py).

Rows: a prompt x, an initial answer ŷ and its revision y (``row_kind = "revision"``). The data layer aligns ŷ and y
token by token (data/revision.py) and marks the tokens of y the revision added or changed, and the tokens of ŷ it
deleted or *replaced*. With CE_t = −log π_θ(token t | x, prefix) over the completion tokens of both sequences:

    w_t = α                     on added/changed tokens of y
    w_t = −β                    on removed tokens of ŷ whose current CE_t < threshold   (CE compared without gradient)
    w_t = 0                     elsewhere
    loss = Σ_t w_t·CE_t / #{t : w_t ≠ 0}          (one token count over the whole batch, as the reference does)

So added tokens of y are learned (their CE falls), and removed tokens of ŷ the model still finds likely (CE below the
threshold) are unlearned (−β·CE: gradient ascent on their CE); removed tokens already unlikely are left alone.
Unchanged tokens carry no signal. ``per_example`` is B times each row's share of the batch sum, so its mean is the
loss (under gradient accumulation the count is per micro-batch, like ``sft``'s token mean).

Defaults: α = 1, β = 0.5, threshold = 0.6. No reference model. Needs per-token log-probs and the token marks (row
data of revision rows, split like features: ``features["chosen_marks"]``, ``["rejected_marks"]``).

Checked in the reference code: replaced tokens of ŷ are penalised like deleted ones (its negative mask keeps every
edit op but ``insert``); the normaliser counts tokens with non-zero weight. Differences, kept on purpose:
- the reference's "contra" loss penalises a removed token only when 0.6 ≤ CE ≤ 1 (it zeroes those with CE < 0.6 or
  CE > 1; both bounds hard-coded), the opposite side of 0.6 from the catalogue's rule "CE < 0.6" (methods.md #16),
  which is the default here; ``upper_threshold: 1.0`` gives the reference code's band threshold ≤ CE ≤ upper. Which
  one the paper's text means is not verified (its loss section was not reachable offline).
- the reference aligns with Levenshtein edit ops, here difflib.SequenceMatcher (no new dependency): the marked sets
  can differ on some pairs;
- the reference always gives y's EOS weight α; here EOS is weighted only when the diff marks it.
α and −β are the reference's ``cook_ratio`` / ``cook_ratio2``, defaults 1 and −0.5 there too (its train.py passes
no override).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prefalign.objectives.base import Objective, ObjectiveOutput, PairLogps, require
from prefalign.objectives.registry import register


def figa_weights(ce_initial: torch.Tensor, added: torch.Tensor, removed: torch.Tensor, alpha: float, beta: float,
                 threshold: float, upper: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_revised [B, Tc], w_initial [B, Tr]): α on added tokens of y; −β on removed tokens of ŷ with CE < threshold
    (or, with ``upper``, threshold ≤ CE ≤ upper: the reference code's band). ``added``/``removed`` are 0/1 marks
    already zero on padding; ``ce_initial`` [B, Tr] is only compared."""
    ce = ce_initial.detach()
    keep = ce < threshold if upper is None else (ce >= threshold) & (ce <= upper)  # [B, Tr]
    w_rev = alpha * added  # [B, Tc]
    w_init = -beta * removed * keep.to(removed.dtype)  # [B, Tr]
    return w_rev, w_init


@register
@dataclass
class FIGA(Objective):
    name = "figa"
    summary = "FIGA: α·CE on tokens the revision added, −β·CE on removed tokens still likely (CE < threshold)"
    needs_reference = False
    row_kind: ClassVar[str] = "revision"

    alpha: float = 1.0  # weight of the CE of added/changed tokens of the revision y
    beta: float = 0.5  # the weight of removed tokens of the initial ŷ is −beta
    threshold: float = 0.6  # removed tokens are penalised only while their CE (nats) is below this
    upper_threshold: float | None = None  # set (1.0 in the reference code): penalise threshold ≤ CE ≤ upper instead

    def validate(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if self.upper_threshold is not None and not self.upper_threshold >= self.threshold:
            raise ValueError(f"upper_threshold must be ≥ threshold, got {self.upper_threshold}")

    def __call__(self, lp: PairLogps) -> ObjectiveOutput:
        require(lp, "objective 'figa' (per-token log-probs and revision token marks of rows with 'initial' and "
                "'revised')", "policy_chosen_token_logps", "policy_rejected_token_logps", "chosen_marks",
                "rejected_marks")
        return self.compute(lp)

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        ce_rev = -lp.policy_chosen_token_logps  # [B, Tc] revised y
        ce_init = -lp.policy_rejected_token_logps  # [B, Tr] initial ŷ
        added = lp.features["chosen_marks"].to(ce_rev.dtype)  # [B, Tc]
        removed = lp.features["rejected_marks"].to(ce_init.dtype)  # [B, Tr]
        if lp.chosen_mask is not None:  # marks are zero past each completion already; be safe about padding
            added = added * lp.chosen_mask.to(added.dtype)
            removed = removed * lp.rejected_mask.to(removed.dtype)
        w_rev, w_init = figa_weights(ce_init, added, removed, self.alpha, self.beta, self.threshold,
                                     self.upper_threshold)
        count = (w_rev != 0).sum() + (w_init != 0).sum()  # #{t : w_t ≠ 0} over the batch
        row_sum = (w_rev * ce_rev).sum(1) + (w_init * ce_init).sum(1)  # [B]
        per_example = row_sum * lp.batch_size / count.clamp(min=1)  # [B]; mean = Σ w·CE / count
        n_add, n_rem, n_pen = added.sum(), removed.sum(), (w_init != 0).sum()
        metrics = {
            "figa/nll_added": ((ce_rev.detach() * added).sum() / n_add.clamp(min=1)).item(),
            "figa/nll_removed": ((ce_init.detach() * removed).sum() / n_rem.clamp(min=1)).item(),
            "figa/removed_penalised": (n_pen / n_rem.clamp(min=1)).item(),
            "figa/weighted_tokens": float(count),
        }
        return ObjectiveOutput(per_example.mean(), per_example, metrics)
