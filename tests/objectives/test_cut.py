"""CUT: the flagging rule, the closed-form loss on hand-picked log-probs, gradient signs, a toy LM whose judgment
context points at one token, and judged batches scoring the same completion tokens in both contexts."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from prefalign import objectives as O
from prefalign.data.batch import collate_judged
from prefalign.data.types import JudgedExample
from prefalign.logps import sequence_logps
from prefalign.objectives import JudgedLogps
from prefalign.objectives.cut import cut_flags
from prefalign.testing import tiny_model
from prefalign.train.views import to_judged_logps

L = math.log


def _lp(plain_probs, judged_probs, mask=None, requires_grad=False):
    plain = torch.tensor(plain_probs, dtype=torch.float64).log().requires_grad_(requires_grad)
    judged = torch.tensor(judged_probs, dtype=torch.float64).log().requires_grad_(requires_grad)
    m = torch.ones_like(plain) if mask is None else torch.tensor(mask, dtype=torch.float64)
    return JudgedLogps(plain * m, judged * m, m), plain, judged


def test_flagging_rule():
    """Ratios p^j/p: 0.6/0.5 = 1.2 > 1.1 flagged; 0.54/0.5 = 1.08 not; 0.2/0.4 = 0.5 not; padding never."""
    lp, _, _ = _lp([[0.5, 0.5, 0.4, 0.5]], [[0.6, 0.54, 0.2, 0.9]], mask=[[1, 1, 1, 0]])
    assert cut_flags(lp.policy_token_logps, lp.judged_token_logps, lp.mask, 1.1).tolist() == [[True, False, False,
                                                                                               False]]
    assert cut_flags(lp.policy_token_logps, lp.judged_token_logps, lp.mask, 1.05).tolist() == [[True, True, False,
                                                                                                False]]


def test_closed_form_loss():
    """Row 0: p = (0.5, 0.5), p^j = (0.6, 0.54): token 0 flagged → −log 0.5; token 1 → −log 0.5.
    Row 1: p = (0.2, ·) (one token), p^j = (0.1, ·): not flagged → −log 0.2.
    n = 3 tokens. judged NLL sum = −log 0.6 − log 0.54 − log 0.1; ℓ sum = −log(1 − 0.5) − log 0.5 − log 0.2.
    loss = ½(judged + ℓ)/3; per_example_b = B·½(row sums)/3."""
    lp, _, _ = _lp([[0.5, 0.5], [0.2, 1.0]], [[0.6, 0.54], [0.1, 1.0]], mask=[[1, 1], [1, 0]])
    out = O.get("cut")(lp)
    row0 = -L(0.6) - L(0.54) - L(0.5) - L(0.5)
    row1 = -L(0.1) - L(0.2)
    assert_close(out.per_example, torch.tensor([row0, row1], dtype=torch.float64) * 2 * 0.5 / 3)
    assert_close(out.loss, torch.tensor(0.5 * (row0 + row1) / 3, dtype=torch.float64))
    assert out.metrics["cut/flagged"] == pytest.approx(1 / 3)
    # α = 3 scales only the flagged token's unlikelihood: −3·log(1 − 0.5) instead of −log(0.5)
    out3 = O.get("cut", alpha=3.0)(lp)
    assert_close(out3.loss, out.loss + torch.tensor(0.5 * 2 * -L(0.5) / 3, dtype=torch.float64))


def test_gradient_signs():
    """∂loss/∂log p_t > 0 on a flagged token (lowering p_t lowers the loss: unlikelihood), < 0 on an unflagged
    one (likelihood); ∂loss/∂log p^j_t < 0 everywhere (y is learned given the judgment), and exactly −½/n."""
    lp, plain, judged = _lp([[0.5, 0.5]], [[0.8, 0.5]], requires_grad=True)
    O.get("cut")(lp).loss.backward()
    # flagged: d/dlogp[−log(1 − e^{logp})]·½/2 = ½·½·p/(1 − p) = 0.25; unflagged: −½·½ = −0.25
    assert_close(plain.grad, torch.tensor([[0.25, -0.25]], dtype=torch.float64))
    assert_close(judged.grad, torch.tensor([[-0.25, -0.25]], dtype=torch.float64))


def test_wrong_container_and_ranges():
    from prefalign.objectives import PairLogps

    with pytest.raises(ValueError, match="JudgedLogps"):
        O.get("cut")(PairLogps(policy_chosen=torch.zeros(1), policy_rejected=torch.zeros(1)))
    for bad in ({"threshold": 0.0}, {"alpha": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            O.get("cut", **bad)


# ---------------------------------------------------------------------------------------------------------------
# Toy LM: one categorical per completion position without the judgment (θ), and θ + δ with it: δ is the judgment's
# effect, learned too. y = (GOOD, BAD): the judgment "BAD is wrong" makes BAD at position 1 more likely.
V, GOOD, BAD = 4, 0, 1
Y = [GOOD, BAD]


def _train(objective: str, steps: int = 20, lr: float = 0.5, **hp):
    theta = torch.zeros(2, V, requires_grad=True)
    delta = torch.zeros(2, V)
    delta[1, BAD] = 1.0  # with the judgment, p(BAD) at position 1 is 0.48 vs 0.25 without: ratio ≈ 1.9 > 1.1
    delta.requires_grad_(True)
    opt = torch.optim.SGD([theta, delta], lr=lr)
    idx = (torch.arange(2), torch.tensor(Y))
    for _ in range(steps):
        plain = torch.log_softmax(theta, -1)[idx][None]  # [1, 2]
        judged = torch.log_softmax(theta + delta, -1)[idx][None]  # [1, 2]
        if objective == "cut":
            out = O.get("cut", **hp)(JudgedLogps(plain, judged, torch.ones(1, 2)))
        else:  # plain SFT on y without the judgment
            out = O.get("sft")(O.PairLogps(policy_chosen=plain.sum(1), policy_rejected=plain.sum(1),
                                           chosen_tokens=torch.tensor([2.0])))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.softmax(theta, -1), torch.softmax(theta + delta, -1)


def test_toy_lm_unlearns_the_flagged_token_without_the_judgment():
    """θ is shared by both contexts, so the judged NLL also pulls p(BAD | x) up; the unlikelihood term on the
    flagged token must hold it far below what the same loss without flagging (λ = ∞) or SFT reaches, and with α = 3
    push it below its start (1/V)."""
    plain, judged = _train("cut")
    unflagged, _ = _train("cut", threshold=1e9)  # no token flagged: ½[NLL given j + NLL given x]
    sft_plain, _ = _train("sft")
    assert plain[1, BAD] < 0.5 * unflagged[1, BAD] and plain[1, BAD] < 0.5 * sft_plain[1, BAD]
    assert judged[1, BAD] > 0.48  # y stays likely given the judgment (it started at 0.48)
    strong, _ = _train("cut", alpha=3.0)
    assert strong[1, BAD] < 1 / V


@pytest.mark.parametrize("layout,pack", [("separate", False), ("shared_prefix", False), ("separate", True)])
def test_judged_batch_log_probs_match_each_sequence_alone(tiny_tok, layout, pack):
    """Both views score the same completion tokens, each as if run alone after its own prompt."""
    model = tiny_model(tiny_tok, seed=3).eval()
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(4, len(tiny_tok), (n,), generator=g).tolist()  # noqa: E731
    exs = [JudgedExample(1, rand(4), rand(7), rand(3)), JudgedExample(2, rand(2), rand(5), rand(5))]

    def alone(prompt, comp):  # [|comp|] per-token log-probs
        ids = torch.tensor([prompt + comp])
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        return logp.gather(1, ids[0, 1:, None]).squeeze(1)[len(prompt) - 1:]

    with torch.no_grad():
        batch = collate_judged(exs, tiny_tok.pad_token_id, layout, pack)
        lp = to_judged_logps(sequence_logps(model, batch), None, batch)
        for i, e in enumerate(exs):
            n = len(e.completion_ids)
            assert_close(lp.policy_token_logps[i, :n], alone(e.prompt_ids, e.completion_ids), atol=1e-5, rtol=0)
            assert_close(lp.judged_token_logps[i, :n], alone(e.judged_prompt_ids, e.completion_ids), atol=1e-5,
                         rtol=0)
            assert lp.mask[i].sum() == n
