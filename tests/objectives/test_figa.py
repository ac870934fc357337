"""FIGA: token weights by hand, the closed-form loss on hand-picked log-probs, gradient signs, and a tabular
policy trained with FIGA vs plain SFT on the revision."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign import objectives as O
from prefalign.data.revision import revision_marks
from prefalign.objectives.base import PairLogps
from prefalign.objectives.figa import figa_weights


def _lp(rev_logps, init_logps, added, removed, rev_mask=None, init_mask=None):
    rev, init = torch.as_tensor(rev_logps, dtype=torch.float64), torch.as_tensor(init_logps, dtype=torch.float64)
    return PairLogps(policy_chosen=rev.sum(1), policy_rejected=init.sum(1),
                     policy_chosen_token_logps=rev, policy_rejected_token_logps=init,
                     chosen_mask=torch.ones_like(rev) if rev_mask is None else torch.tensor(rev_mask),
                     rejected_mask=torch.ones_like(init) if init_mask is None else torch.tensor(init_mask),
                     features={"chosen_marks": torch.tensor(added, dtype=torch.float64),
                               "rejected_marks": torch.tensor(removed, dtype=torch.float64)})


def test_weights_from_a_hand_made_diff():
    """initial a b c d e → revised a X c e F: X replaces b, d is deleted, F inserted.
    Revised weights: α on X and F. Initial weights: −β on b (CE 0.2 < 0.6) but 0 on d (CE 0.9 ≥ 0.6)."""
    a, b, c, d, e, x, f = range(1, 8)
    added, removed = revision_marks([a, b, c, d, e], [a, x, c, e, f])
    ce_init = torch.tensor([[0.1, 0.2, 0.3, 0.9, 0.4]])
    w_rev, w_init = figa_weights(ce_init, torch.tensor([added], dtype=torch.float),
                                 torch.tensor([removed], dtype=torch.float), alpha=1.0, beta=0.5, threshold=0.6)
    assert w_rev.tolist() == [[0, 1, 0, 0, 1]]
    assert w_init.tolist() == [[0, -0.5, 0, 0, 0]]


def test_closed_form_loss():
    """Row 0: revised CE (1.0, 2.0, 0.5), added = (0, 1, 1); initial CE (0.3, 0.5, 0.7), removed = (1, 1, 1).
    Row 1: revised CE (0.2, 3.0, ·) with the last slot padding, added = (1, 0, 0); initial CE (0.1, 2.0, 0.4),
    removed = (0, 1, 0) — CE 2.0 ≥ 0.6, not penalised.
    Weighted tokens: row 0: 2.0 + 0.5 − 0.5·0.3 − 0.5·0.5 (0.7 ≥ 0.6 skipped) = 2.1, 4 tokens; row 1: 0.2, 1 token.
    loss = (2.1 + 0.2) / 5 = 0.46; per_example = B·row_sum/5 = (0.84, 0.08)."""
    lp = _lp([[-1.0, -2.0, -0.5], [-0.2, -3.0, 0.0]], [[-0.3, -0.5, -0.7], [-0.1, -2.0, -0.4]],
             [[0, 1, 1], [1, 0, 0]], [[1, 1, 1], [0, 1, 0]], rev_mask=[[1, 1, 1], [1, 1, 0]])
    out = O.get("figa")(lp)
    torch.testing.assert_close(out.loss, torch.tensor(0.46, dtype=torch.float64))
    torch.testing.assert_close(out.per_example, torch.tensor([0.84, 0.08], dtype=torch.float64))
    assert out.metrics["figa/weighted_tokens"] == 5
    assert out.metrics["figa/removed_penalised"] == pytest.approx(2 / 4)
    out2 = O.get("figa", alpha=2.0, beta=1.0, threshold=1.0)(lp)  # now 0.7 counts too: 2·(2.5 + 0.2) − 1.5 = 3.9
    torch.testing.assert_close(out2.loss, torch.tensor(3.9 / 6, dtype=torch.float64))
    # The reference code's band 0.6 ≤ CE ≤ 1: of the removed CEs (0.3, 0.5, 0.7 | 2.0) only 0.7 is penalised:
    # (2.5 − 0.5·0.7) + 0.2 = 2.35 over 4 tokens.
    out3 = O.get("figa", upper_threshold=1.0)(lp)
    torch.testing.assert_close(out3.loss, torch.tensor(2.35 / 4, dtype=torch.float64))


def test_gradient_signs():
    """∂loss/∂logp: negative on added tokens (raising them lowers the loss), positive on penalised removed tokens
    (lowering them lowers the loss), zero on unchanged tokens and on removed tokens with CE ≥ threshold."""
    rev = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    init = torch.tensor([[-0.3, -1.5, -0.2]], requires_grad=True)
    lp = PairLogps(policy_chosen=rev.sum(1), policy_rejected=init.sum(1), policy_chosen_token_logps=rev,
                   policy_rejected_token_logps=init, chosen_mask=torch.ones(1, 2), rejected_mask=torch.ones(1, 3),
                   features={"chosen_marks": torch.tensor([[0.0, 1.0]]),
                             "rejected_marks": torch.tensor([[1.0, 1.0, 0.0]])})
    O.get("figa")(lp).loss.backward()
    # 2 weighted tokens: revised #1 (α = 1) and initial #0 (CE 0.3 < 0.6); initial #1 has CE 1.5.
    torch.testing.assert_close(rev.grad, torch.tensor([[0.0, -0.5]]))
    torch.testing.assert_close(init.grad, torch.tensor([[0.25, 0.0, 0.0]]))


def test_missing_marks_is_an_error():
    lp = PairLogps(policy_chosen=torch.zeros(1), policy_rejected=torch.zeros(1),
                   policy_chosen_token_logps=torch.zeros(1, 2), policy_rejected_token_logps=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="revision token marks"):
        O.get("figa")(lp)


@pytest.mark.parametrize("bad", [{"alpha": 0.0}, {"beta": -1.0}, {"threshold": 0.0}])
def test_hyperparameter_ranges(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        O.get("figa", **bad)


# ---------------------------------------------------------------------------------------------------------------
# Tabular policy: one categorical over V tokens per position (shared by both answers; a position-wise table is
# the smallest "LM" in which y and ŷ compete for the same probability mass).
V, A, B_, C, D, E = 5, 0, 1, 2, 3, 4
REVISED, INITIAL = [A, B_, C], [A, D, C]  # the revision replaces D with B at position 1


def _tabular_logps(theta, seq):
    return torch.log_softmax(theta, -1)[torch.arange(len(seq)), torch.tensor(seq)][None]  # [1, T]


def _train(objective: str, steps: int = 15, lr: float = 0.5):
    theta = torch.zeros(3, V)
    theta[1, D] = 2.0  # ŷ's token is likely at first: p(D) ≈ 0.65, CE ≈ 0.43 < 0.6
    theta.requires_grad_(True)
    added, removed = revision_marks(INITIAL, REVISED)
    opt = torch.optim.SGD([theta], lr=lr)
    for _ in range(steps):
        rev, init = _tabular_logps(theta, REVISED), _tabular_logps(theta, INITIAL)
        lp = PairLogps(policy_chosen=rev.sum(1), policy_rejected=init.sum(1), chosen_tokens=torch.tensor([3.0]),
                       policy_chosen_token_logps=rev, policy_rejected_token_logps=init,
                       chosen_mask=torch.ones(1, 3), rejected_mask=torch.ones(1, 3),
                       features={"chosen_marks": torch.tensor([added], dtype=torch.float),
                                 "rejected_marks": torch.tensor([removed], dtype=torch.float)})
        opt.zero_grad()
        O.get(objective)(lp).loss.backward()
        opt.step()
    return torch.softmax(theta.detach(), -1)  # [3, V]


def test_tabular_figa_vs_sft():
    p0 = torch.softmax(torch.tensor([0.0, 0.0, 0.0, 2.0, 0.0]), -1)
    assert -math.log(p0[D]) < 0.6  # the removed token starts below the threshold: it is penalised
    figa, sft = _train("figa"), _train("sft")
    assert figa[1, B_] > sft[1, B_] > p0[B_]  # the revised token rises, more than under plain SFT on y
    assert figa[1, D] < sft[1, D] < p0[D]  # the removed token falls, more than under SFT
    # Unchanged tokens carry no FIGA weight: their positions are untouched (SFT moves them).
    torch.testing.assert_close(figa[0], torch.full((V,), 1 / V))
    assert sft[0, A] > 1 / V
