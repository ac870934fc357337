"""D2O: closed-form values (derivations in the docstrings), the batch of K + 1 sequences per row, the loop's
SampleLogps. Notation: h = log π_θ − log π_ref (summed), L(z) = −log σ(z) = log(1 + e^(−z))."""

from __future__ import annotations

import math

import pytest
import torch
from tests.hand import L, f64, t
from torch.testing import assert_close

from prefalign import objectives as O
from prefalign.data.batch import collate_samples
from prefalign.data.types import SampleExample
from prefalign.logps import sequence_logps
from prefalign.objectives import PairLogps, SampleLogps
from prefalign.testing import tiny_model
from prefalign.train.views import to_sample_logps


def rows(policy_s, ref_s, policy_l, ref_l, mask=None):
    ps = torch.tensor(policy_s, dtype=f64)
    return SampleLogps(t(*policy_l), ps, torch.ones_like(ps, dtype=torch.bool) if mask is None else mask,
                       t(*ref_l), torch.tensor(ref_s, dtype=f64))


def test_d2o_values():
    """One row, K = 2: sample log-ratios h₁ = −1 − (−2) = 1, h₂ = −4 − (−3) = −1 → mean 0; negative h_l = −3 − (−2)
    = −1. β = ½, α = 1: z = ½·0 − 1·(−1) = 1 → L(1). Second row, K = 3 with h = (2, 0, 1) → mean 1, h_l = 1:
    z = ½·1 − 1·1 = −½ → L(−½). At π_θ = π_ref: z = 0 → ln 2."""
    lp = rows([[-1.0, -4.0, 0.0], [0.0, -2.0, -1.0]], [[-2.0, -3.0, 0.0], [-2.0, -2.0, -2.0]], [-3.0, -1.0],
              [-2.0, -2.0], mask=torch.tensor([[True, True, False], [True, True, True]]))
    out = O.get("d2o", beta=0.5, alpha=1.0)(lp)
    assert_close(out.per_example, t(L(1.0), L(-0.5)))
    assert out.metrics["d2o/samples_per_row"] == 2.5
    same = rows([[-1.0, -2.0]], [[-1.0, -2.0]], [-3.0], [-3.0])
    assert_close(O.get("d2o")(same).per_example, t(math.log(2)))


def test_d2o_k1_equal_alpha_beta_is_dpo_and_k_samples_bound_dpo():
    """K = 1, α = β: z = β(h₁ − h_l), DPO on (y₁ ≻ y_l). For K > 1, −log σ is convex, so
    L(mean_k β h_k − α h_l) ≤ mean_k L(β h_k − α h_l) (Jensen), with equality only when the h_k are equal."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: -10 * torch.rand(*s, generator=g, dtype=f64)  # noqa: E731
    ps, rs, pl, rl = r(6, 1), r(6, 1), r(6), r(6)
    d2o = O.get("d2o", beta=0.3, alpha=0.3)(SampleLogps(pl, ps, torch.ones(6, 1, dtype=torch.bool), rl, rs))
    dpo = O.get("dpo", beta=0.3)(PairLogps(ps[:, 0], pl, rs[:, 0], rl))
    assert_close(d2o.per_example, dpo.per_example)
    ps, rs = r(6, 4), r(6, 4)
    d2o = O.get("d2o", beta=0.3, alpha=0.7)(SampleLogps(pl, ps, torch.ones(6, 4, dtype=torch.bool), rl, rs))
    inst = -torch.nn.functional.logsigmoid(0.3 * (ps - rs) - 0.7 * (pl - rl)[:, None])  # [6, 4]
    assert (d2o.per_example < inst.mean(1) - 1e-6).all()


def test_d2o_gradient_signs_and_checks():
    """∂L/∂h_k = −σ(−z)·β/K < 0 (raise the samples), ∂L/∂h_l = σ(−z)·α > 0 (lower the negative). At z = 0:
    σ(0) = ½, so with β = ½, K = 2: ∂/∂h_k = −⅛; α = 1: ∂/∂h_l = ½."""
    ps = torch.tensor([[-1.0, -2.0]], dtype=f64, requires_grad=True)
    pl = t(-3.0).requires_grad_(True)
    lp = SampleLogps(pl, ps, torch.ones(1, 2, dtype=torch.bool), t(-3.0), torch.tensor([[-1.0, -2.0]], dtype=f64))
    O.get("d2o", beta=0.5, alpha=1.0)(lp).loss.backward()
    assert_close(ps.grad, torch.tensor([[-0.125, -0.125]], dtype=f64))
    assert_close(pl.grad, t(0.5))
    with pytest.raises(ValueError, match="needs reference"):
        O.get("d2o")(SampleLogps(t(-1.0), t(-1.0)[None], torch.ones(1, 1, dtype=torch.bool)))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        O.get("d2o", alpha=0)
    assert O.get_class("d2o").row_kind == "samples" and O.get_class("d2o").needs_reference


@pytest.mark.parametrize("layout,pack", [("separate", False), ("shared_prefix", False), ("shared_prefix", True)])
def test_sample_batch_log_probs_match_each_sequence_alone(tiny_tok, layout, pack):
    """Rows with K = 2 and K = 1 samples: every sequence's summed log-prob equals that of prompt + completion run
    alone, and ``to_sample_logps`` puts it in the right [B, K] cell."""
    model = tiny_model(tiny_tok, seed=3).eval()
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(4, len(tiny_tok), (n,), generator=g).tolist()  # noqa: E731
    exs = [SampleExample(1, rand(4), rand(3), [rand(5), rand(2)]), SampleExample(2, rand(6), rand(4), [rand(3)])]

    def alone(prompt, comp):
        ids = torch.tensor([prompt + comp])
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        return logp.gather(1, ids[0, 1:, None]).squeeze(1)[len(prompt) - 1:].sum()

    with torch.no_grad():
        pol = sequence_logps(model, collate_samples(exs, tiny_tok.pad_token_id, layout, pack))
        lp = to_sample_logps(pol, pol.seq_logps, collate_samples(exs, tiny_tok.pad_token_id, layout, pack))
        for i, e in enumerate(exs):
            assert_close(lp.policy_rejected[i], alone(e.prompt_ids, e.rejected_ids), atol=1e-5, rtol=0)
            for k, s in enumerate(e.sample_ids):
                assert_close(lp.policy_samples[i, k], alone(e.prompt_ids, s), atol=1e-5, rtol=0)
                assert int(lp.sample_tokens[i, k]) == len(s)
    assert lp.sample_mask.tolist() == [[True, True], [True, False]]
    assert_close(lp.ref_samples, lp.policy_samples)
