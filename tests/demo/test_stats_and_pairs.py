"""Labelling and the evaluation statistics, on hand-made tensors (no model)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from prefalign.evaluate.metrics import best_of_n_curve, best_of_n_expected, compare, mean_se, win_rate
from prefalign.pairs import make_pairs, pairs_from_rows


def test_make_pairs_best_vs_worst_and_ties_dropped():
    prompts = ["p0", "p1", "p2", "p3"]
    completions = [["a", "b", "c"], ["x", "y", "z"], ["same", "same2", "same3"], ["", "only", "   "]]
    rewards = torch.tensor([[0.1, 0.9, -0.5],  # best b, worst c
                            [0.2, 0.2, 0.7],  # best z, worst x (first of equals)
                            [0.3, 0.3, 0.3],  # tie: dropped
                            [0.9, 0.1, -0.9]])  # only one non-empty completion: dropped
    pairs, stats = make_pairs(prompts, completions, rewards, chat=False)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("p0", "b", "c"), ("p1", "z", "x")]
    assert pairs[0]["score_chosen"] == pytest.approx(0.9) and pairs[0]["score_rejected"] == pytest.approx(-0.5)
    assert stats.pairs == 2 and stats.dropped == {"tied": 1, "fewer than 2 non-empty completions": 1}


def test_make_pairs_chat_rows_are_conversations_and_min_gap():
    pairs, _ = make_pairs(["hi"], [["good", "bad"]], torch.tensor([[0.5, 0.1]]), chat=True, system="")
    assert pairs[0]["prompt"] == [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "bad"}]
    gapped, stats = make_pairs(["hi"], [["good", "bad"]], torch.tensor([[0.5, 0.1]]), chat=True, min_gap=0.5)
    assert gapped == [] and stats.dropped["tied"] == 1


def test_pairs_from_rows_uses_saved_rewards_or_a_reward():
    rows = [{"prompt": "p", "completions": ["a", "bb", "ccc"], "rewards": [0.0, 1.0, 0.5], "chat": False}]
    pairs, _ = pairs_from_rows(rows)
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("bb", "a")
    pairs, _ = pairs_from_rows(rows, reward=lambda p, c: torch.tensor([-float(len(x)) for x in c]))
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("a", "ccc")


def test_pairs_from_rows_without_rewards_is_a_user_error():
    from prefalign.errors import UserError

    with pytest.raises(UserError, match="no 'rewards'"):
        pairs_from_rows([{"prompt": "p", "completions": ["a", "b"]}])


def test_best_of_n_estimator_is_the_mean_max_over_subsets():
    torch.manual_seed(0)
    r = torch.randn(3, 6)
    for n in range(1, 7):
        brute = torch.tensor([[max(row[list(s)].tolist()) for s in itertools.combinations(range(6), n)]
                              for row in r]).double().mean(-1)
        torch.testing.assert_close(best_of_n_expected(r, n), brute)
    torch.testing.assert_close(best_of_n_expected(r, 1), r.double().mean(-1))
    curve = best_of_n_curve(r, ns=(1, 2, 4, 8, 16))
    assert [c["n"] for c in curve] == [1, 2, 4]  # n > m samples is left out, not extrapolated
    assert [c["kl"] for c in curve] == pytest.approx([0.0, math.log(2) - 0.5, math.log(4) - 0.75])


def test_win_rate_counts_ties_half_and_the_reference_against_itself_is_half():
    pol = torch.tensor([[1.0], [0.0]])
    ref = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    torch.testing.assert_close(win_rate(pol, ref), torch.tensor([0.75, 0.25], dtype=torch.float64))
    r = torch.randn(5, 7)
    torch.testing.assert_close(win_rate(r, r), torch.full((5,), 0.5, dtype=torch.float64))


def test_mean_se_and_compare_are_per_prompt():
    mean, se = mean_se(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5) and se == pytest.approx(torch.tensor([1.0, 2, 3, 4]).std().item() / 2)
    pol, ref = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 3.0]])
    m = compare(pol, ref, kl=torch.tensor([[0.1], [0.2], [0.3]]), policy_lengths=torch.ones(3, 1))
    assert m["reward_mean"] == pytest.approx(2.0) and m["reward_gain"] == pytest.approx(1.0)
    assert m["kl"] == pytest.approx(0.2) and m["win_rate"] == pytest.approx((1 + 1 + 0.75) / 3)
