"""CUT: Contrastive Unlikelihood Training (Xu et al., "Reasons to Reject? Aligning Language Models with
Judgments", arXiv 2312.14591; methods.md #15, checked against the reference code wwxu21/CUT,
modeling_llama_unlikelihood.py ``forward``/``unlikelihood`` and fine-tuning-unlike.sh).

Rows: a prompt x, a completion y and a text judgment j of y (``row_kind = "judgment"``). Every row is scored twice
in one forward pass: y after x, and y after x ⊕ j (the judgment in context; data/encode.py ``with_judgment``), with
the same completion tokens, so token t of both is the same token. With p_t = π_θ(y_t | x, y_<t) and
p^j_t = π_θ(y_t | x ⊕ j, y_<t):

    flagged_t = p^j_t / p_t > λ                  (compared without gradient: the judgment makes y_t *more* likely,
                                                  i.e. the judgment points at y_t as a mistake)
    ℓ_t = −α·log(1 − p_t)   if flagged_t         (unlikelihood: push the flagged token down, without the judgment)
    ℓ_t = −log p_t          otherwise            (likelihood: keep the rest)
    loss = ½·[ mean_t(−log p^j_t) + mean_t(ℓ_t) ]   (both token means over all completion tokens of the batch)

So the model learns y *given* the judgment (it is consistent with it) and, without the judgment, unlearns only the
tokens the judgment singles out. ``per_example`` is B times each row's share of the two token sums, so its mean is
the loss. 1 − p_t is clamped at 1e-5, as the reference does. No reference model.

Defaults from the reference's launch script: λ = ``threshold`` = 1.1, α = ``weight_unlike`` = 1.
Differences from the reference, kept on purpose:
- the reference applies the unlikelihood term only to rows marked negative (``weight_unlike`` ≠ −1) and plain NLL to
  the others; here every row gets both terms (the catalogue's rule); give only rows with negative judgments, or
  train positive rows with ``sft``;
- the reference's unlikelihood mean counts only the tokens of its negative rows; here all tokens;
- the paper's template (checked in the paper and the reference code) is Instruction, Judgment, Response; for chat
  rows the judgment follows the instruction in the last user turn ("…\n\nJudgment: j"), which keeps that order;
  for plain-text rows it goes in front of the prompt, whose end is the completion's cue (data/encode.py);
- the paper's Eq. 6 also has a dynamic weight p^j_t^γ on the unlikelihood term; the reference code (and this) use
  the α-only form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prefalign.objectives.base import JudgedLogps, Objective, ObjectiveOutput
from prefalign.objectives.registry import register


def cut_flags(policy_token_logps: torch.Tensor, judged_token_logps: torch.Tensor, mask: torch.Tensor,
              threshold: float) -> torch.Tensor:
    """[B, T] bool: completion tokens whose probability rises more than ``threshold``-fold with the judgment."""
    log_ratio = (judged_token_logps - policy_token_logps).detach()  # [B, T] log p^j_t − log p_t
    return (log_ratio > torch.log(torch.tensor(threshold, dtype=log_ratio.dtype))) & mask.bool()


@register
@dataclass
class CUT(Objective):
    name = "cut"
    summary = "CUT: ½[NLL of y given x+judgment + per-token (unlikelihood if the judgment flags it, else NLL) given x]"
    needs_reference = False
    row_kind: ClassVar[str] = "judgment"

    threshold: float = 1.1  # λ: flag y_t when p(y_t|x,j)/p(y_t|x) > λ (reference `threshold`)
    alpha: float = 1.0  # weight of the unlikelihood term −log(1 − p) on flagged tokens (reference `weight_unlike`)

    def validate(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")

    def __call__(self, lp: JudgedLogps) -> ObjectiveOutput:
        if not isinstance(lp, JudgedLogps):
            raise ValueError("objective 'cut' needs JudgedLogps (rows with 'prompt', 'completion', 'judgment')")
        return self.compute(lp)

    def compute(self, lp: JudgedLogps) -> ObjectiveOutput:
        mask = lp.mask.to(lp.policy_token_logps.dtype)  # [B, T]
        flags = cut_flags(lp.policy_token_logps, lp.judged_token_logps, mask, self.threshold)  # [B, T]
        nll_judged = -lp.judged_token_logps * mask  # [B, T] −log p^j_t
        p = lp.policy_token_logps.exp()  # [B, T]
        unlike = -self.alpha * torch.log((1 - p).clamp(min=1e-5))  # [B, T] −α·log(1 − p_t)
        ell = torch.where(flags, unlike, -lp.policy_token_logps) * mask  # [B, T]
        n = mask.sum().clamp(min=1)  # completion tokens in the batch
        per_example = 0.5 * (nll_judged.sum(1) + ell.sum(1)) * lp.batch_size / n  # [B]
        metrics = {
            "cut/nll_judged": (nll_judged.detach().sum() / n).item(),
            "cut/nll": ((-lp.policy_token_logps.detach() * mask).sum() / n).item(),
            "cut/flagged": (flags.sum() / n).item(),
        }
        return ObjectiveOutput(per_example.mean(), per_example, metrics)
