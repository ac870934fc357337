"""Point-wise DPO and ULMA (Cai et al. 2023, "ULMA: Unified Language Model Alignment with Human Demonstration and
Point-wise Preference"; reference code Unified-Language-Model-Alignment/src ``ulma/trainer.py`` ``ulma_loss``).

    h = log π_θ(y|x) − log π_ref(y|x)     (summed), z = label (1 desirable, 0 undesirable)
    pointwise_dpo:  loss = −[z·log σ(βh + c) + (1 − z)·log σ(−βh − c)]
    ulma:           loss = z·(−log π_θ(y|x)) + (1 − z)·(−log σ(−βh − c))   (positive term replaced by SFT)

Population optimum of pointwise_dpo for labels z ~ Bernoulli(P(z=1|y)): βh(y) = logit P(z=1|y) − c
(tests/theory/test_pointwise_optimum.py). The SFT term is the summed sequence NLL of the completion.
The continuous-label form (s − βh − c)² is not here (labels are booleans in the unpaired row format).

Needs a reference model; summed log-probs; unpaired rows (prompt, completion, label). Defaults: β = 0.1, c = 0.
Value at policy = reference: −log σ(c) on desirable and −log σ(−c) on undesirable rows (ln 2 at c = 0) for
pointwise_dpo; ulma's desirable rows give −log π_θ(y|x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefalign.objectives.base import ObjectiveOutput, PointLogps
from prefalign.objectives.pointwise import PointObjective, check_beta, point_metrics
from prefalign.objectives.registry import register


@dataclass
class _PointwiseBase(PointObjective):
    beta: float = 0.1
    c: float = 0.0

    def validate(self) -> None:
        check_beta(self.beta)

    def positive(self, lp: PointLogps, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self, lp: PointLogps) -> ObjectiveOutput:
        h = lp.policy - lp.ref  # [B]
        z = self.beta * h + self.c
        per_example = torch.where(lp.label, self.positive(lp, z), -F.logsigmoid(-z))
        return ObjectiveOutput(per_example.mean(), per_example, point_metrics(z, lp.label))


@register
@dataclass
class PointwiseDPO(_PointwiseBase):
    name = "pointwise_dpo"
    summary = "Point-wise DPO: −[z log σ(βh + c) + (1 − z) log σ(−βh − c)] on labelled single completions"

    def positive(self, lp: PointLogps, z: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(z)


@register
@dataclass
class ULMA(_PointwiseBase):
    name = "ulma"
    summary = "ULMA: SFT (−log π(y)) on desirable rows, −log σ(−βh − c) on undesirable rows"

    def positive(self, lp: PointLogps, z: torch.Tensor) -> torch.Tensor:
        return -lp.policy
