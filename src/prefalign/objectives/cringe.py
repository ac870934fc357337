"""Pairwise Cringe (Xu, Lee, Sukhbaatar & Weston, "Some things are more CRINGE than others", arXiv 2312.16682;
methods.md #6), built on the binary Cringe loss (Adolphs et al. 2022, arXiv 2211.05826).

    L = NLL(y_w) + g · L_cringe(y_l)
    g = σ((b − [log π_θ(y_w|x) − log π_θ(y_l|x)]) / τ)                    (summed log-probs; no gradient, see below)
    L_cringe(y_l) = mean_t softplus(log π(s_t) − log π(s⁺_t))
                  = mean_t −log( e^{z(s⁺)} / (e^{z(s⁺)} + e^{z(s_t)}) )      (same normaliser, so z − z' = log p − log p')

where s_t is token t of y_l and s⁺_t is sampled from the model's k most likely tokens *other than* s_t at that
position, with probability ∝ π(v) over those k candidates (the sampling weights carry no gradient; the sampled
token's log-prob does, on both sides of the contrast). NLL(y_w) = −log π_θ(y_w|x) / |y_w| (token mean, as the binary
Cringe loss's cross-entropy). So the gate opens (g → 1) while the chosen response does not beat the rejected one by
the margin b, and closes (g → 0) once it does by much more than b: rejected responses already well below the chosen
ones are left alone.

Candidate set (checked in the binary Cringe reference code, ParlAI projects/cringe/cringe_loss.py, read but not
copied): take the top k + 1 tokens; if s_t is among them drop it, else drop the (k + 1)-th, so there are always
exactly k candidates. The objective therefore asks the log-prob layer for the feature ``topk`` with k + 1 (and
``target_ids``): ``features["rejected_topk_logps"]``, ``["rejected_topk_ids"]``, ``["rejected_target_ids"]``.
The sampling draws uniforms from torch's global CPU RNG, which the trainer seeds and checkpoints, so runs and resumes
are reproducible (on any device).

Checked / not checked (the paper itself was not reachable from here; only its abstract and secondary summaries):
- k = 5 is the value the task's catalogue gives for binary Cringe; ParlAI's command-line default
  (``--ct-num-pos-predictions``) is 1. Unverified for the pairwise paper.
- b = 1.0 (nats of summed log-prob) and τ = 1.0 are chosen here, **unverified** against the paper.
- The gate carries no gradient (``detach_gate=True``) and the gate's log-probs are summed over tokens: both
  **unverified**; ``detach_gate=False`` lets the gate's gradient through.
No reference model. One training pass; the paper's iterative PCO (regenerate pairs, retrain) is outside this loss.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from prefalign.logps import feature
from prefalign.objectives.base import Needs, Objective, ObjectiveOutput, PairLogps, require, reward_metrics
from prefalign.objectives.registry import register


def cringe_candidates(topk_ids: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, k+1] bool: the k candidate positives s⁺ among the top k + 1 tokens at each position — all but s_t when
    s_t is among them, else all but the (k+1)-th. Padding positions (``mask`` False) keep every column (unused)."""
    is_tok = topk_ids == token_ids[..., None]  # [B, T, k+1]
    drop_last = ~is_tok.any(-1)  # [B, T]: s_t not in the top k + 1
    cand = ~is_tok
    cand[..., -1] &= ~drop_last
    return cand | ~mask[..., None].bool()


def sample_positive(topk_logps: torch.Tensor, cand: torch.Tensor, generator: torch.Generator | None = None):
    """Index [B, T] of s⁺ among the top-k columns, drawn ∝ π(v) over the candidates (no gradient).

    Inverse-CDF sampling from uniforms drawn on the CPU (torch's global CPU RNG unless ``generator`` is given): the
    trainer checkpoints that RNG, and the draws do not depend on the device the log-probs live on."""
    w = topk_logps.detach().double().masked_fill(~cand, float("-inf")).softmax(-1)  # [B, T, k+1]; 0 off-candidate
    cdf = w.cumsum(-1)  # [B, T, k+1]
    u = torch.rand(w.shape[:-1], generator=generator, dtype=torch.float64).to(w.device)  # [B, T] in [0, 1)
    idx = (cdf <= (u * cdf[..., -1])[..., None]).sum(-1)  # [B, T]: first column whose cdf exceeds u
    cols = torch.arange(w.shape[-1], device=w.device)  # [k+1]
    last = (cand.long() * cols).amax(-1)  # [B, T] last candidate column (guards rounding at u → 1)
    return torch.minimum(idx, last)


def cringe_token_loss(token_logps: torch.Tensor, topk_logps: torch.Tensor, pos_idx: torch.Tensor) -> torch.Tensor:
    """[B, T] softplus(log π(s_t) − log π(s⁺)): binary Cringe's two-way cross-entropy with s⁺ as the right answer."""
    pos = topk_logps.gather(-1, pos_idx[..., None]).squeeze(-1)  # [B, T] log π(s⁺), with gradient
    return F.softplus(token_logps - pos)


@register
@dataclass
class PairwiseCringe(Objective):
    name = "cringe"
    summary = "Pairwise Cringe: NLL(y_w) + σ((b − margin)/τ)·Cringe(y_l) (top-k token contrast); reference-free"
    needs_reference = False

    k: int = 5  # candidate positives per rejected token (binary Cringe's; unverified for the pairwise paper)
    margin: float = 1.0  # b, in nats of summed log-prob (unverified: chosen here)
    tau: float = 1.0  # τ, the gate's temperature (unverified: chosen here)
    detach_gate: bool = True  # no gradient through g (unverified)

    def needs(self) -> Needs:
        # the top k + 1 of the log-prob layer (one of them may be s_t itself), and s_t
        return replace(super().needs(), policy_features=(feature("topk", k=self.k + 1), "target_ids"))

    def validate(self) -> None:
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"k must be an integer >= 1, got {self.k}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")

    def __call__(self, lp: PairLogps) -> ObjectiveOutput:
        _, topk, _, _ = require(lp, "objective 'cringe' (per-token log-probs and the rejected tokens' top-k)",
                                "policy_rejected_token_logps", "rejected_topk_logps", "rejected_topk_ids",
                                "rejected_target_ids")
        if topk.shape[-1] < self.k + 1:
            raise ValueError(f"objective 'cringe' with k={self.k} needs the top {self.k + 1} log-probs, "
                             f"got {topk.shape[-1]}")
        return self.compute(lp)

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        n, f = self.k + 1, lp.features
        topk, ids = f["rejected_topk_logps"][..., :n], f["rejected_topk_ids"][..., :n]  # [B, Tr, k+1]
        tok = lp.policy_rejected_token_logps  # [B, Tr] log π(s_t)
        mask = (lp.rejected_mask if lp.rejected_mask is not None else torch.ones_like(tok)).to(tok.dtype)  # [B, Tr]
        cand = cringe_candidates(ids, f["rejected_target_ids"], mask.bool())  # [B, Tr, k+1]
        pos_idx = sample_positive(topk, cand)  # [B, Tr]
        per_tok = cringe_token_loss(tok, topk, pos_idx) * mask  # [B, Tr]
        cringe = per_tok.sum(-1) / mask.sum(-1).clamp(min=1)  # [B] token mean over y_l
        seq_margin = lp.policy_chosen - lp.policy_rejected  # [B] summed log-probs
        gate = torch.sigmoid((self.margin - seq_margin) / self.tau)  # [B]
        if self.detach_gate:
            gate = gate.detach()
        nll = -lp.policy_chosen / lp.chosen_tokens.clamp(min=1)  # [B] token mean over y_w
        per_example = nll + gate * cringe  # [B]
        metrics = {
            "nll": nll.detach().mean().item(),
            "cringe/loss": cringe.detach().mean().item(),
            "cringe/gate": gate.detach().mean().item(),
            **reward_metrics(lp.policy_chosen, lp.policy_rejected),
        }
        return ObjectiveOutput(per_example.mean(), per_example, metrics)
