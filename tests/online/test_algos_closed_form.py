"""Closed-form checks of the online-RL pieces: advantages, GAE, clipping, KL estimators, on hand-computed numbers.

Expectations are exact sums over a small support (a tabular softmax policy), never Monte-Carlo estimates.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.online.advantages import gae, group_advantages, rloo_advantages, token_rewards, whiten
from prefalign.online.algos.base import PolicyBatch, Rollout, get, names
from prefalign.online.kl import kl_per_token

D = torch.float64
NAN = float("nan")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is many times faster than two contending ones on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def t(*rows):
    return torch.tensor(rows, dtype=D)


# ---------------------------------------------------------------- advantages


def test_rloo_is_k_over_k_minus_1_times_centred_reward():
    r, g = t(1.0, 2.0, 6.0), torch.tensor([0, 0, 0])
    # leave-one-out by hand: 1 − (2+6)/2, 2 − (1+6)/2, 6 − (1+2)/2
    torch.testing.assert_close(rloo_advantages(r, g), t(-3.0, -1.5, 4.5))
    torch.testing.assert_close(rloo_advantages(r, g), 3 / 2 * (r - r.mean()))


def test_rloo_skips_unjudged_and_lone_members():
    r = t(4.0, NAN, 0.0, 2.0, 5.0, NAN, 7.0)
    g = torch.tensor([9, 9, 9, 9, 3, 3, 1])  # ids need not be contiguous; group 1 has a single member
    # group 9: scorable {4, 0, 2}, k = 3, mean 2 → 3/2·(r − 2); group 3: one scorable; group 1: alone
    torch.testing.assert_close(rloo_advantages(r, g), t(3.0, 0.0, -3.0, 0.0, 0.0, 0.0, 0.0))
    assert torch.isnan(rloo_advantages(r, g, fill=NAN)[[1, 4, 5, 6]]).all()


def test_group_scaling_uses_bessel_std_and_handles_nan_and_zero_std():
    r = t(1.0, 2.0, 3.0, 0.0, NAN, 4.0, 5.0, 5.0, 5.0)
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    eps = 1e-4
    s1 = math.sqrt(((-2) ** 2 + 2**2) / 1)  # group 1: scorable {0, 4}, mean 2, std ÷ (n − 1)
    expected = t(-1 / (1 + eps), 0.0, 1 / (1 + eps), -2 / (s1 + eps), 0.0, 2 / (s1 + eps), 0.0, 0.0, 0.0)
    out = group_advantages(r, g, "group")
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[6:], torch.zeros(3, dtype=D))  # a zero-std group is exactly 0, not 0/eps noise


def test_batch_and_none_scaling():
    r, g = t(0.0, 2.0, 4.0, 6.0, NAN), torch.tensor([0, 0, 1, 1, 1])
    centred = t(-1.0, 1.0, -1.0, 1.0, 0.0)  # group means 1 and 5 (the NaN left out)
    torch.testing.assert_close(group_advantages(r, g, "none"), centred)
    batch_std = math.sqrt((9 + 1 + 1 + 9) / 3)  # std of the rewards {0, 2, 4, 6}, mean 3, ÷ (n − 1)
    torch.testing.assert_close(group_advantages(r, g, "batch"), centred / (batch_std + 1e-4))
    with pytest.raises(ValueError, match="unknown reward scale"):
        group_advantages(r, g, "global")


def test_whiten_is_global_masked_standardisation():
    x = t([1.0, 2.0, 3.0], [4.0, 99.0, -99.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    var = ((1.5) ** 2 + 0.5**2 + 0.5**2 + 1.5**2) / 4  # values 1..4, mean 2.5, ÷ n as OpenRLHF
    expected = t([-1.5, -0.5, 0.5], [1.5, 0.0, 0.0]) / math.sqrt(var)
    expected[1, 1:] = 0
    torch.testing.assert_close(whiten(x, mask), expected)
    torch.testing.assert_close(whiten(x, mask, std=False), (x - 2.5) * mask)


def test_gae_on_a_hand_trajectory():
    gamma, lam = 0.9, 0.8
    rewards = t([0.0, 0.0, 1.0], [0.0, 2.0, 99.0])
    values = t([0.5, 0.6, 0.7], [1.0, 0.5, 99.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    # row 0: δ2 = 1 − .7 = .3; δ1 = .9·.7 − .6 = .03; δ0 = .9·.6 − .5 = .04; A_t = δ_t + .72·A_{t+1}
    a0 = [0.04 + 0.72 * (0.03 + 0.72 * 0.3), 0.03 + 0.72 * 0.3, 0.3]
    # row 1 ends after 2 tokens (the 99s are padding): δ1 = 2 − .5 = 1.5; δ0 = .9·.5 − 1 = −.55
    a1 = [-0.55 + 0.72 * 1.5, 1.5, 0.0]
    adv, ret = gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, t(a0, a1))
    torch.testing.assert_close(ret, t([a0[0] + 0.5, a0[1] + 0.6, 1.0], [a1[0] + 1.0, 2.0, 0.0]))
    # λ = γ = 1: A_t is the Monte-Carlo return minus the value
    adv1, ret1 = gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(ret1, t([1.0, 1.0, 1.0], [2.0, 2.0, 0.0]))
    torch.testing.assert_close(adv1, (ret1 - values) * mask)


def test_token_rewards_put_the_score_on_the_last_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    kl = torch.full((3, 4), 0.5, dtype=D)
    out = token_rewards(t(2.0, NAN, 3.0), mask, kl, beta=0.2)
    torch.testing.assert_close(out, t([-0.1, -0.1, 1.9, 0.0], [-0.1, 0, 0, 0], [0, 0, 0, 0]))


def test_reinforce_pp_advantages_by_hand():
    """β·k1 per token in the reward, score on the last token, return to go, global whitening."""
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    ref = torch.zeros(2, 2, dtype=D)
    old = t([0.2, 0.4], [0.6, 0.0])  # k1 = old − ref
    ro = Rollout(rewards=t(1.0, 0.0), group=torch.tensor([0, 0]), mask=mask, old_logp=old, ref_logp=ref)
    adv = get("reinforce_pp", beta=0.5).advantages(ro)["advantages"]
    # rewards [−.1, −.2 + 1], [−.3] → returns [.7, .8], [−.3]; mean .4, var (.09 + .16 + .49)/3
    sd = math.sqrt(0.74 / 3)
    torch.testing.assert_close(adv, t([0.3 / sd, 0.4 / sd], [-0.7 / sd, 0.0]))


# ---------------------------------------------------------------- clipping


def _batch(log_ratio, adv, **kw):
    logp = log_ratio.clone().requires_grad_(True)
    mask = torch.ones_like(logp, dtype=torch.bool)
    return PolicyBatch(logp=logp, old_logp=torch.zeros_like(logp), mask=mask, advantages=adv,
                       group=torch.zeros(len(adv), dtype=torch.long), rewards=adv.clone(), **kw)


def test_clipped_surrogate_values_gradients_and_clip_fractions():
    rho = t(0.7, 0.9, 1.1, 1.3)
    b = _batch(rho.log().repeat(2, 1), t(1.0, -2.0))
    per_token, m = get("grpo").loss(b)  # ε = 0.2
    # A = +1: −min(ρ, clip ρ) → the 1.3 is capped at 1.2; A = −2: max(2ρ, 2 clip ρ) → the 0.7 is raised to 0.8
    torch.testing.assert_close(per_token, t([-0.7, -0.9, -1.1, -1.2], [1.6, 1.8, 2.2, 2.6]))
    per_token.sum().backward()
    # ∂ℓ/∂logπ = −ρA where the clip is inactive, 0 where it is active (ρ > 1+ε with A > 0, ρ < 1−ε with A < 0)
    torch.testing.assert_close(b.logp.grad, t([-0.7, -0.9, -1.1, 0.0], [0.0, 1.8, 2.2, 2.6]))
    assert (m["clip_ratio/low"], m["clip_ratio/high"], m["clip_ratio/region"]) == (1 / 8, 1 / 8, 2 / 8)
    assert m["ratio/min"] == pytest.approx(0.7) and m["ratio/max"] == pytest.approx(1.3)
    # 1 − ε < 0.7 is not clipped for a positive advantage: the clip is pessimistic, one-sided per sign
    _, m_hi = get("grpo", epsilon_high=0.35).loss(_batch(rho.log()[None], t(1.0)))
    assert m_hi["clip_ratio/high"] == 0 and m_hi["clip_ratio/low"] == 0


def test_gspo_ratio_is_the_exp_of_the_mean_log_ratio():
    b = _batch(t([0.1, 0.3]), t(1.0))
    per_token, m = get("grpo", importance_sampling_level="sequence").loss(b)
    assert math.exp(0.2) > 1.2  # one ratio e^{0.2} for both tokens: clipped at 1.2
    torch.testing.assert_close(per_token, t([-1.2, -1.2]))
    assert m["clip_ratio/high"] == 1 and m["ratio/mean"] == pytest.approx(math.exp(0.2))


def test_rloo_loss_is_a_sequence_level_clip():
    lr = t([0.1, 0.1, 0.0], [0.05, -0.05, 0.02])  # Σ log-ratio: 0.2 (ρ = 1.221, clipped), 0.02
    b = _batch(lr, t(1.0, -1.0))
    b.mask[0, 2] = False
    per_token, m = get("rloo").loss(b)
    torch.testing.assert_close(per_token[0], t(-1.2, -1.2, 0.0))  # broadcast over the sequence's tokens
    torch.testing.assert_close(per_token[1], torch.full((3,), math.exp(0.02), dtype=D))
    assert m["clip_ratio/region"] == 0.5


def test_ppo_value_loss_clip_by_hand():
    v = torch.tensor([[1.5, 0.9]], dtype=D, requires_grad=True)
    b = _batch(t([0.0, 0.0]), t(0.0), values=v, old_values=t([1.0, 1.0]), returns=t([2.0, 0.0]))
    b.advantages = torch.zeros(1, 2, dtype=D)
    per_token, m = get("ppo").loss(b)  # vf_coef 0.1, cliprange_value 0.2
    # token 0: clip(1.5) = 1.2; max((1.5−2)², (1.2−2)²) = .64 → ½·.64; token 1: inside the clip, ½·.81
    torch.testing.assert_close(per_token, 0.1 * t([0.32, 0.405]))
    per_token.sum().backward()
    torch.testing.assert_close(v.grad, 0.1 * t([0.0, 0.9]))  # the clipped branch carries no gradient
    assert m["value_clipfrac"] == 0.5 and m["value_loss"] == pytest.approx((0.32 + 0.405) / 2)


def test_ppo_advantages_are_whitened_gae_and_nan_rewards_are_masked():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    values = t([0.1, 0.2, 0.0], [0.3, -0.1, 0.4], [0.5, 0.0, 0.0])
    zeros = torch.zeros(3, 3, dtype=D)
    ro = Rollout(rewards=t(1.0, -1.0, NAN), group=torch.tensor([0, 0, 0]), mask=mask, old_logp=zeros,
                 ref_logp=zeros, values=values)
    out = get("ppo").advantages(ro)
    valid = mask.clone()
    valid[2] = False
    adv, ret = gae(token_rewards(ro.rewards, valid), values, valid, 1.0, 0.95)
    torch.testing.assert_close(out["advantages"], whiten(adv, valid))
    torch.testing.assert_close(out["returns"], ret)
    assert torch.equal(out["loss_mask"], valid)


# ---------------------------------------------------------------- KL estimators on a tabular policy

PI_LOGITS = t(0.3, -1.2, 0.8, 0.0, -0.4)
REF_LOGITS = t(-0.5, 0.4, 0.1, 0.9, -1.0)


def _kl(logp, ref):  # exact KL(π‖π_ref) over the support
    return (logp.exp() * (logp - ref)).sum()


def test_k1_and_k3_are_unbiased_and_k2_is_not():
    logp, ref = PI_LOGITS.log_softmax(0), REF_LOGITS.log_softmax(0)
    pi, kl = logp.exp(), _kl(logp, ref)
    for est in ("k1", "k3"):
        torch.testing.assert_close((pi * kl_per_token(logp, ref, est)).sum(), kl)  # E_{y~π}[k(y)] = KL
    e_k2 = (pi * kl_per_token(logp, ref, "k2")).sum()
    torch.testing.assert_close(e_k2, 0.5 * (pi * (logp - ref) ** 2).sum())
    assert abs(e_k2 - kl) > 0.01  # biased: 0.369 vs KL 0.383 here (exact sums, so no noise to hide in)
    assert (kl_per_token(logp, ref, "k3") >= 0).all() and (kl_per_token(logp, ref, "k1") < 0).any()


def _expected_kl_gradient(estimator, corrected):
    """Exact E_{y~π_old}[∇θ β·KL-term(y)] of GRPO's loss at π_old = π: Σ_y π_old(y)·∇ℓ(y), each y a 1-token row."""
    theta = PI_LOGITS.clone().requires_grad_(True)
    logp = theta.log_softmax(0)  # [V]
    ref = REF_LOGITS.log_softmax(0)
    algo = get("grpo", beta=1.0, kl_estimator=estimator, kl_bias_correction=corrected)
    b = PolicyBatch(logp=logp[:, None], old_logp=logp.detach()[:, None], ref_logp=ref[:, None],
                    mask=torch.ones(5, 1, dtype=torch.bool), advantages=torch.zeros(5, dtype=D),
                    group=torch.zeros(5, dtype=torch.long), rewards=torch.zeros(5, dtype=D))
    per_token, _ = algo.loss(b)  # [V, 1]: with A = 0 only the KL term is left
    surrogate = (logp.detach().exp() * per_token[:, 0]).sum()  # expectation under the sampler π_old
    (grad,) = torch.autograd.grad(surrogate, theta)
    return grad


def _exact_gradients():
    theta = PI_LOGITS.clone().requires_grad_(True)
    logp, ref = theta.log_softmax(0), REF_LOGITS.log_softmax(0)
    reverse = torch.autograd.grad(_kl(logp, ref), theta, retain_graph=True)[0]  # ∇KL(π‖π_ref): the target
    forward = torch.autograd.grad((ref.exp() * (ref - logp)).sum(), theta)[0]  # ∇KL(π_ref‖π)
    return reverse, forward


def test_k3_gradient_is_biased_without_the_ratio_and_exact_with_it():
    reverse, forward = _exact_gradients()
    torch.testing.assert_close(_expected_kl_gradient("k3", corrected=True), reverse)
    uncorrected = _expected_kl_gradient("k3", corrected=False)
    torch.testing.assert_close(uncorrected, forward)  # it follows the *forward* KL
    assert (uncorrected - reverse).abs().max() > 0.05


def test_k1_and_k2_gradients():
    reverse, _ = _exact_gradients()
    torch.testing.assert_close(_expected_kl_gradient("k1", corrected=False), torch.zeros(5, dtype=D))
    torch.testing.assert_close(_expected_kl_gradient("k1", corrected=True), reverse)
    torch.testing.assert_close(_expected_kl_gradient("k2", corrected=False), reverse)  # on-policy k2: exact
    with pytest.raises(ValueError, match="k2"):  # and corrected k2 is refused: its gradient is ∇E[k2] ≠ ∇KL
        get("grpo", beta=0.1, kl_estimator="k2")


# ---------------------------------------------------------------- registry and validation


def test_registry_names_defaults_and_needs():
    assert {"grpo", "rloo", "reinforce_pp", "ppo"} <= set(names())
    grpo = get("grpo")
    assert (grpo.beta, grpo.epsilon, grpo.eps_high, grpo.loss_type, grpo.scale_rewards) == (0.0, 0.2, 0.2, "dapo",
                                                                                              "group")
    assert not grpo.needs().reference and get("grpo", beta=0.001).needs().reference
    assert get("rloo").needs().reference and get("rloo").loss_type == "grpo"
    assert get("ppo").needs().value_head and get("reinforce_pp").loss_type == "dapo"
    for name, bad in (("grpo", {"loss_type": "token"}), ("grpo", {"scale_rewards": "x"}), ("grpo", {"epsilon": 0}),
                      ("rloo", {"beta": -1}), ("reinforce_pp", {"baseline": "mean"}), ("ppo", {"lam": 2.0})):
        with pytest.raises(ValueError):
            get(name, **bad)


def test_missing_inputs_are_errors_not_silence():
    b = _batch(t([0.0]), t(1.0))
    with pytest.raises(ValueError, match="ref_logp"):
        get("grpo", beta=0.1).loss(b)
    with pytest.raises(ValueError, match="entropy"):
        get("grpo", entropy_coef=0.01).loss(b)
    ro = Rollout(rewards=t(1.0), group=torch.tensor([0]), mask=b.mask, old_logp=b.old_logp)
    with pytest.raises(ValueError, match="truncated"):
        get("grpo", mask_truncated_completions=True).advantages(ro)
    with pytest.raises(ValueError, match="values"):
        get("ppo", beta=0.0).advantages(ro)
