"""SFT / NLL term on the chosen responses (used alone, or combined with a preference loss, e.g. MPO or RPO).

    nll  = −Σ_b log π_θ(y_w,b|x_b) / Σ_b |y_w,b|      (a token mean over ALL chosen completion tokens of the batch)
    loss_b = nll  for every pair b                      (times w₊·w₋ with use_weighting)

Reference-free; uses the summed log-probs and the token counts (``chosen_tokens`` must be real counts).
A batch-level token mean, so ``per_example`` repeats one value: ``loss`` equals it, as in TRL 1.16
``loss_type="sft"``. Defaults: use_weighting = False. f_divergence and ld_alpha do not apply (TRL: no effect on sft).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from prefalign.objectives.base import Needs, Objective, ObjectiveOutput, PairLogps
from prefalign.objectives.pairwise import WPO_FEATURES, chosen_nll, wpo_weights
from prefalign.objectives.registry import register


@register
@dataclass
class SFT(Objective):
    name = "sft"
    summary = "NLL of the chosen responses (token mean over the batch)"
    needs_reference = False

    use_weighting: bool = False  # WPO: multiply by w₊·w₋ (TRL applies its weights to every loss type)

    def needs(self) -> Needs:
        return replace(super().needs(), policy_features=WPO_FEATURES if self.use_weighting else ())

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        nll = chosen_nll(lp)
        per_example = nll.expand(lp.batch_size)  # [B]
        metrics = {"nll": nll.item()}
        if self.use_weighting:
            w_w, w_l = wpo_weights(lp)
            per_example = per_example * (w_w * w_l)
        return ObjectiveOutput(loss=per_example.mean(), per_example=per_example, metrics=metrics)
