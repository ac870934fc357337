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

Needs: log-probs of the M aligned models (``PairLogps.extras["aligned_chosen"]``, [B, M] summed over the
completion) and token counts; no reference model. In ``prefalign train`` the aligned models are folders given as
``objective_args: {poft: {aligned_models: [folder, …]}}``; ``prepare`` computes their log-probs once before training
and caches them on disk like ``reference: precompute`` (train/precompute.py). They must share the policy's
tokenizer, so T_j = T₀ here (the paper allows other tokenizers; not supported). Defaults: aligned_models = []
(pure-function use passes ``extras["aligned_chosen"]`` directly). No temperature/scale hyperparameter (none in the catalogue's formula).
Value when every p_j = p_θ: ln 2, and τ = ½ (half the SFT gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from prefalign.objectives.base import Objective, ObjectiveOutput, PairLogps, PrepareContext
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

    aligned_models: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not isinstance(self.aligned_models, (list, tuple)) or not all(isinstance(m, str)
                                                                         for m in self.aligned_models):
            raise ValueError(f"aligned_models must be a list of model folders, got {self.aligned_models!r}")

    def prepare(self, ctx: PrepareContext) -> dict[str, torch.Tensor]:
        """``aligned_chosen`` [N, M]: each aligned model's summed log-prob of every example's chosen completion,
        cached on disk (train/precompute.py)."""
        from prefalign.errors import UserError
        from prefalign.train.precompute import aligned_logps

        if not self.aligned_models:
            raise UserError("config", f"objective '{self.name}' needs frozen aligned models",
                            f"set objective_args: {{{self.name}: {{aligned_models: [folder, ...]}}}}")
        return {"aligned_chosen": aligned_logps(ctx.accelerator, list(self.aligned_models), ctx.tokenizer,
                                                ctx.examples, ctx.config, ctx.cache_dir, ctx.log)}

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        aligned = lp.extras.get("aligned_chosen")  # [B, M]
        if aligned is None:
            raise ValueError("objective 'poft' needs PairLogps.extras['aligned_chosen'] (log-probs of the aligned "
                             "models)")
        tokens = lp.chosen_tokens.to(lp.policy_chosen.dtype).clamp(min=1)  # [B]
        a = lp.policy_chosen / tokens  # [B]
        b = (aligned.to(a.dtype) / tokens[:, None]).mean(1)  # [B]
        per_example = -F.logsigmoid(a - b)
        tau = poft_tau(lp.policy_chosen.detach(), tokens, aligned.detach().to(a.dtype))
        metrics = {"nll": (-a).detach().mean().item(), "poft/tau": tau.mean().item(),
                   "poft/margin": (a - b).detach().mean().item()}
        return ObjectiveOutput(per_example.mean(), per_example, metrics)
