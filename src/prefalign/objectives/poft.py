"""PoFT: Preference-Oriented supervised Fine-Tuning (Fan et al., "Preference-Oriented Supervised Fine-Tuning:
Favoring Target Model Over Aligned Large Language Models"; methods.md #12, formula *from the paper*, Sec. 3.2,
Eq. 6–8, as summarised by the catalogue — the paper itself was not re-read here).

An SFT loss on (x, y) = the chosen response of each row, written as a Bradley–Terry preference of the trained
model θ over M frozen "aligned" models p_1..p_M:

    a   = (1/T₀)·log p_θ(y|x)                 (token-mean log-likelihood; T₀ = |y| in θ's tokens)
    b_j = (1/T_j)·log p_j(y|x)                (the same for aligned model j)
    u   = a − (1/M)·Σ_j b_j
    loss = −log σ(u)

Gradient (derived in tests/objectives/test_poft.py): ∂loss/∂θ = τ·∇_θ[−(1/T₀) log p_θ(y|x)], the token-mean
cross-entropy gradient times τ = σ(−u) = ḡ/(ḡ + p_θ^{1/T₀}), with ḡ = exp((1/M)Σ_j b_j) the geometric mean of the
p_j^{1/T_j}. A target the aligned models find unlikely (small ḡ) gets a small τ: noisy targets are down-weighted.

Needs: log-probs of the M aligned models (``PairLogps.aligned_chosen``, [B, M] summed over the completion) and
token counts; no reference model. In ``prefalign train`` the aligned models are folders given as
``objective_args: {poft: {aligned_models: [folder, …]}}``; their log-probs are computed once before training and
cached on disk like ``reference: precompute`` (train/precompute.py). They must share the policy's tokenizer, so
T_j = T₀ here (the paper allows other tokenizers; not supported). Defaults: aligned_models = [] (pure-function use
passes ``aligned_chosen`` directly). No temperature/scale hyperparameter (none in the catalogue's formula).
Value when every p_j = p_θ: ln 2, and τ = ½ (half the SFT gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from prefalign.objectives.base import Objective, ObjectiveOutput, PairLogps
from prefalign.objectives.registry import register


def poft_tau(policy_logp: torch.Tensor, tokens: torch.Tensor, aligned_logp: torch.Tensor,
             aligned_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """τ = ḡ/(ḡ + p_θ^{1/T₀}) [B]; policy_logp/tokens [B], aligned_logp [B, M] (aligned_tokens [B, M], default T₀)."""
    t_j = tokens[:, None].expand_as(aligned_logp) if aligned_tokens is None else aligned_tokens
    log_g = (aligned_logp / t_j).mean(1)  # [B] log ḡ
    log_p = policy_logp / tokens  # [B] log p_θ^{1/T₀}
    return torch.exp(log_g - torch.logaddexp(log_g, log_p))


@register
@dataclass
class PoFT(Objective):
    name = "poft"
    summary = "PoFT: −log σ(log p_θ(y)/T − mean_j log p_j(y)/T), p_j frozen aligned models; = SFT gradient × τ"
    needs_reference: ClassVar[bool] = False
    needs_aligned_logps: ClassVar[bool] = True

    aligned_models: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not isinstance(self.aligned_models, (list, tuple)) or not all(isinstance(m, str)
                                                                         for m in self.aligned_models):
            raise ValueError(f"aligned_models must be a list of model folders, got {self.aligned_models!r}")

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        if lp.aligned_chosen is None:
            raise ValueError("objective 'poft' needs PairLogps.aligned_chosen (log-probs of the aligned models)")
        tokens = lp.chosen_tokens.to(lp.policy_chosen.dtype).clamp(min=1)  # [B]
        a = lp.policy_chosen / tokens  # [B]
        b = (lp.aligned_chosen.to(a.dtype) / tokens[:, None]).mean(1)  # [B]
        per_example = -F.logsigmoid(a - b)
        tau = poft_tau(lp.policy_chosen.detach(), tokens, lp.aligned_chosen.detach().to(a.dtype))
        metrics = {"nll": (-a).detach().mean().item(), "poft/tau": tau.mean().item(),
                   "poft/margin": (a - b).detach().mean().item()}
        return ObjectiveOutput(per_example.mean(), per_example, metrics)
