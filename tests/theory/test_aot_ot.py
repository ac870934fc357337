"""AOT's sort is 1-D optimal transport (Melnyk et al. 2024, arXiv 2406.05882).

For a cost c(a, b) = ℓ(a − b) with ℓ convex, the monotone (sorted) matching of two equal-size samples minimises
Σ_i ℓ(a_i − b_σ(i)) over permutations σ. AOT's loss ℓ(z) = −(1−ε)log σ(βz) − ε log σ(−βz) is convex, so the sum
of AOT's per-quantile losses must equal the brute-force minimum over all 6! = 720 matchings.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from prefalign import objectives as O
from prefalign.objectives import PairLogps


def _brute_force(a, b, loss):
    perms = torch.tensor(list(itertools.permutations(range(len(b)))))  # [720, 6]
    return loss(a - b[perms]).sum(-1).min().item()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_sorted_matching_is_optimal_transport(seed, eps):
    g = torch.Generator().manual_seed(seed)
    a, b = 4 * torch.randn(6, generator=g, dtype=torch.float64), 4 * torch.randn(6, generator=g, dtype=torch.float64)
    zero = torch.zeros(6, dtype=torch.float64)
    beta = 0.7
    obj = O.get("aot_unpaired", beta=beta, label_smoothing=eps)

    def ell(z):  # the same per-pair loss, written out
        return -(1 - eps) * torch.nn.functional.logsigmoid(beta * z) - eps * torch.nn.functional.logsigmoid(-beta * z)

    # aot_unpaired on h₊ = a, h₋ = b (reference 0)
    ours = obj(PairLogps(a, b, zero, zero)).per_example.sum().item()
    assert ours == pytest.approx(_brute_force(a, b, ell), rel=1e-12, abs=1e-12)
    # the row-wise (DPO-style) matching is one of the 720, never better
    assert ell(a - b).sum().item() >= ours - 1e-12
    # paired aot: policy margins a, reference margins b (policy_rejected = ref_rejected = 0)
    paired = O.get("aot", beta=beta, label_smoothing=eps)(PairLogps(a, zero, b, zero)).per_example.sum().item()
    assert paired == pytest.approx(_brute_force(a, b, ell), rel=1e-12, abs=1e-12)
