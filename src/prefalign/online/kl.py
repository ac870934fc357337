"""Per-token estimators of KL(π ‖ π_ref) from the log-probs of tokens sampled from π (Schulman 2020,
"Approximating KL divergence", http://joschu.net/blog/kl-approx.html).

With x = log π(y) − log π_ref(y) at a sampled token y ~ π and r = π_ref(y)/π(y) = e^{−x}:

    k1 = x                      E_π[k1] = KL(π‖π_ref)      unbiased; negative on some samples; high variance
    k2 = ½ x²                   E_π[k2] ≠ KL (biased; ≈ KL to second order near π = π_ref); always ≥ 0
    k3 = r − 1 − log r          E_π[k3] = KL(π‖π_ref)      unbiased, since E_π[r] = 1; always ≥ 0; low variance
       = exp(ref − logp) − (ref − logp) − 1

Value and gradient are different questions. Used as a *loss* term, the estimator's gradient at θ is what matters,
and for samples drawn from π_old (= π on-policy) with exact ∇KL = E_π[x ∇log π]:

- ∇k1 = ∇log π, whose expectation is 0: a k1 loss term does nothing on average; k1 belongs in the reward
  (RLOO, REINFORCE++, PPO put it there).
- ∇k2 = x ∇log π: on-policy its expectation is exactly ∇KL(π‖π_ref), even though its value is biased.
- ∇k3 = (1 − r) ∇log π: its expectation is −E_{π_ref}[∇log π] = ∇KL(π_ref‖π), the *forward* KL's gradient, not
  the reverse KL it estimates (trl#3104, #6503).
- The importance-weight fix (TRL ``use_bias_correction_kl``, the GRPO default since trl#6503): multiply the term by
  ρ = π/π_old, *with* gradient through ρ. Then E_{π_old}[ρ k] = E_π[k] for every θ, so its gradient is
  ∇E_π[k] = ∇KL for any value-unbiased k (k1, k3) — but not for k2, whose corrected gradient is ∇E_π[k2] ≠ ∇KL.

The caller masks: these are elementwise and leave padded positions to the mask (at padding logp = ref = 0 all
three are 0 anyway). ``tests/online/test_algos_closed_form.py`` checks every claim above by exact expectation on a
tabular softmax policy.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate ``k1`` | ``k2`` | ``k3`` (see the module docstring); [N, T] → [N, T]."""
    log_ratio = logp - ref_logp  # [N, T] x = log π/π_ref
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        # exp(−x) − 1 + x; expm1 keeps it accurate (and ≥ 0) when x ≈ 0, the usual case near the reference
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator '{estimator}'; known: {', '.join(KL_ESTIMATORS)}")
