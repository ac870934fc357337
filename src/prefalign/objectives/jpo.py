"""JPO / DOVE: joint preference optimisation over pairs that may have different prompts (Bansal et al. 2024,
"Comparing Bad Apples to Good Oranges", arXiv 2404.00530).

For a joint preference (x₁, y₁) ≻ (x₂, y₂):

    h₁ = log π_θ(y₁|x₁) − log π_ref(y₁|x₁),  h₂ = log π_θ(y₂|x₂) − log π_ref(y₂|x₂)   (summed, conditional log-probs)
    loss = −log σ(β·(h₁ − h₂))

Here "chosen" is (x₁, y₁) and "rejected" is (x₂, y₂); each log-prob is conditional on its *own* prompt. On
same-prompt pairs it is DPO exactly (tests/objectives/test_catalogue_closed_form.py::test_jpo_is_dpo_on_same_prompt).

Cross-prompt bias (derived from the formula, not stated by the authors): under Bradley–Terry on r(x, y) the
KL-regularised optimum has βh(x, y) = r(x, y) − β·log Z(x), so on a cross-prompt pair the model's logit is
r₁ − r₂ − β(log Z(x₁) − log Z(x₂)): the loss drops β(log Z(x₁) − log Z(x₂)), and fitting it moves the policy away
from π* (measured in tests/theory/test_jpo_cross_prompt.py; table in docs/objectives.md).

Needs a reference model; summed log-probs. Defaults: β = 0.1 (as DPO). Value at policy = reference: ln 2.
Data: ``cross_prompt = True``: paired files may hold cross-prompt rows (``chosen_prompt``, ``chosen``,
``rejected_prompt``, ``rejected``) mixed with ordinary same-prompt rows (data/validate.py); each side is split and
truncated after its own prompt (data/encode.py) and laid out as its own sequence in every layout (data/batch.py).
f_divergence: reverse_kl only (the log Z term does not cancel across prompts). Modifiers: use_weighting, ld_alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefalign.objectives.base import PairLogps
from prefalign.objectives.pairwise import PairScores, PairwiseObjective
from prefalign.objectives.registry import register


@register
@dataclass
class JPO(PairwiseObjective):
    name = "jpo"
    summary = "JPO/DOVE: −log σ(β(h(y₁|x₁) − h(y₂|x₂))), pairs may span prompts (DPO on same-prompt pairs)"
    supports_f_divergence = False
    cross_prompt = True

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        return -F.logsigmoid(self.beta * (sc.chosen_logratio - sc.rejected_logratio))
