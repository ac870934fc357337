"""Calibration of pairwise reward scores: ECE and reliability bins on hand tables, temperature scaling, storage.

Sampling bounds used below. For a perfectly calibrated predictor, each bin's accuracy − mean confidence has mean
0 and standard deviation ≤ √(0.25 / n_b), so E|·| ≤ √(2/π)·√(0.25 / n_b); with B equal-count-ish bins of N points
E[ECE] ≲ √(2/π)·√(0.25·B/N) = 0.0089 for N = 20 000, B = 10 — the tests allow 3× that (0.027). For temperature
scaling, the NLL's Fisher information for β = 1/T with Δ = 3·Δ_true, Δ_true ~ N(0, 2²) is E[p(1−p)Δ²] ≈ 2.2 per
pair, so with N = 4 000 the SE of T̂ = 1/β̂ is ≈ 9·0.0107 ≈ 0.096 — the test allows 0.3 (≈ 3 SE).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from prefalign.errors import UserError
from prefalign.reward.calibration import (
    T_MAX,
    T_MIN,
    ece,
    fit_temperature,
    load_calibration,
    pairwise_ece,
    pairwise_nll,
    pairwise_probs,
    reliability_bins,
    save_calibration,
    symmetrise,
)


def test_constant_0p9_predictor_with_60_percent_accuracy_has_ece_0p3():
    # One bin [0.9, 1.0]: mean confidence 0.9, accuracy 6/10 → ECE = |0.6 − 0.9| = 0.3.
    probs, labels = [0.9] * 10, [1] * 6 + [0] * 4
    assert reliability_bins(probs, labels) == [(0.9, 1.0, 0.9, 0.6, 10)]
    assert ece(probs, labels) == pytest.approx(0.3, abs=1e-12)
    assert ece(probs, labels, strategy="quantile") == pytest.approx(0.3, abs=1e-12)


def test_pairwise_constant_predictor_on_both_orderings():
    # σ(ln 3) = 0.75 for every pair, chosen really won 6 of 10: the symmetrised set is 10 × (0.75, y) and
    # 10 × (0.25, 1 − y): bins [0.2, 0.3) conf 0.25 acc 0.4 and [0.7, 0.8) conf 0.75 acc 0.6 → ECE 0.15.
    margins, labels = [math.log(3)] * 10, [1] * 6 + [0] * 4
    bins = reliability_bins(*symmetrise(margins, labels))
    assert [(lo, hi, n) for lo, hi, _, _, n in bins] == [(0.2, 0.3, 10), (0.7, 0.8, 10)]
    assert [b[2] for b in bins] == pytest.approx([0.25, 0.75]) and [b[3] for b in bins] == pytest.approx([0.4, 0.6])
    assert pairwise_ece(margins, labels) == pytest.approx(0.15, abs=1e-12)


def test_reliability_bins_hand_table():
    probs = [0.05, 0.15, 0.18, 0.55, 0.5, 0.95, 1.0]
    labels = [0, 0, 1, 1, 0, 1, 1]
    # 0.5 opens [0.5, 0.6); 1.0 falls in the closed last bin; empty bins are left out.
    expected = [(0.0, 0.1, 0.05, 0.0, 1), (0.1, 0.2, 0.165, 0.5, 2), (0.5, 0.6, 0.525, 0.5, 2),
                (0.9, 1.0, 0.975, 1.0, 2)]
    got = reliability_bins(probs, labels)
    assert [(b[0], b[1], b[4]) for b in got] == [(e[0], e[1], e[4]) for e in expected]
    assert [b[2:4] for b in got] == [pytest.approx(e[2:4]) for e in expected]
    # ECE = (1·0.05 + 2·0.335 + 2·0.025 + 2·0.025) / 7 = 0.82 / 7
    assert ece(probs, labels) == pytest.approx(0.82 / 7, abs=1e-12)
    # Quantile bins: edges 0.1, 0.25, 0.4 → {0.1, 0.2} and {0.3, 0.4}, each accuracy ½ → ECE = ½·0.35 + ½·0.15.
    q = reliability_bins([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], n_bins=2, strategy="quantile")
    assert [b[4] for b in q] == [2, 2] and [b[2] for b in q] == pytest.approx([0.15, 0.35])
    assert ece([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], n_bins=2, strategy="quantile") == pytest.approx(0.25)


def test_perfectly_calibrated_synthetic_has_ece_near_zero():
    g = torch.Generator().manual_seed(0)
    n = 20_000
    p = torch.rand(n, generator=g, dtype=torch.float64)
    y = torch.bernoulli(p, generator=g)
    # Pairs: true margins, labels drawn from σ(Δ), each pair stored as labelled (chosen = the one that won).
    d = torch.randn(n, generator=g, dtype=torch.float64) * 2
    won = torch.bernoulli(torch.sigmoid(d), generator=g)
    as_labelled = torch.where(won == 1, d, -d)
    e_plain, e_q, e_pair = ece(p, y), ece(p, y, strategy="quantile"), pairwise_ece(as_labelled)
    print(f"calibrated synthetic N={n}: ECE uniform {e_plain:.4f}, quantile {e_q:.4f}, pairwise {e_pair:.4f}")
    assert max(e_plain, e_q, e_pair) < 0.027


def test_pairwise_calibration_does_not_depend_on_which_answer_is_listed_first():
    d, y = torch.tensor([2.0, -0.5, 0.3, 1.7, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0])
    assert pairwise_ece(d, y) == pytest.approx(pairwise_ece(-d, 1 - y), abs=1e-12)
    assert pairwise_nll(d, y) == pytest.approx(pairwise_nll(-d, 1 - y), abs=1e-12)
    assert pairwise_ece([0.0] * 4) == 0.0  # ties: p = ½ both ways, half right — calibrated
    torch.testing.assert_close(pairwise_probs([0.0, 2.0], temperature=2.0),
                               torch.tensor([0.5, 1 / (1 + math.exp(-1))], dtype=torch.float64))


def _overconfident(seed: int, n: int = 4000):
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, generator=g, dtype=torch.float64) * 2
    won = torch.bernoulli(torch.sigmoid(true), generator=g)
    return torch.where(won == 1, 3 * true, -3 * true)  # the model reports 3·Δ_true, stored as labelled


def test_temperature_scaling_recovers_t3_and_lowers_ece_on_held_out_pairs():
    fit, held_out = _overconfident(0), _overconfident(1)
    t = fit_temperature(fit)
    before, after = pairwise_ece(held_out), pairwise_ece(held_out, temperature=t)
    nll_b, nll_a = pairwise_nll(held_out), pairwise_nll(held_out, temperature=t)
    print(f"T fitted = {t:.3f} (true 3); held-out ECE {before:.4f} → {after:.4f}, NLL {nll_b:.4f} → {nll_a:.4f}")
    assert abs(t - 3) < 0.3
    assert after < before / 3 and nll_a < nll_b


def test_fit_temperature_matches_closed_form():
    # Every margin 1, chosen won 3 of 4: the NLL is minimal where σ(1/T) = 0.75, i.e. T = 1 / ln 3.
    assert fit_temperature([1.0] * 4, [1, 1, 1, 0]) == pytest.approx(1 / math.log(3), abs=1e-5)
    assert fit_temperature([1.0, 1.0], [1.0, 0.5]) == pytest.approx(1 / math.log(3), abs=1e-5)  # soft labels


def test_fit_temperature_edge_cases():
    assert fit_temperature([0.0] * 5) == 1.0  # no information: NLL = ln 2 for every T
    assert fit_temperature([0.5, 2.0, 30.0]) == T_MIN  # separable: the NLL falls all the way to T → 0
    assert fit_temperature([1e6, 1e6, 1e-9]) == T_MIN
    # p* = σ(Δ/T) = 2/3 at T = 1e6 / ln 2 ≫ T_MAX: clamped, and huge margins give no NaN.
    assert fit_temperature([1e6, 1e6, -1e6]) == T_MAX
    assert fit_temperature([1.0, -1.0]) == T_MAX  # chance: p = ½ is best, reached only as T → ∞
    assert fit_temperature([2.0, 3.0], [0, 0]) == T_MAX  # worse than chance: T cannot flip the sign
    with pytest.raises(ValueError):
        fit_temperature([])
    with pytest.raises(ValueError):
        fit_temperature([1.0, float("nan")])


def test_save_load_round_trip(tmp_path):
    assert load_calibration(tmp_path) is None
    path = save_calibration(tmp_path / "rm", temperature=2.5, mean=-0.25, std=1.5, extra={"n_pairs": 12})
    data = json.loads(path.read_text())
    assert path.name == "reward_stats.json" and data == {"mean": -0.25, "std": 1.5, "temperature": 2.5, "n_pairs": 12}
    assert load_calibration(tmp_path / "rm") == data
    assert not list((tmp_path / "rm").glob("*.tmp"))
    (tmp_path / "norm").mkdir()  # a file written only for normalisation: temperature defaults to 1
    (tmp_path / "norm" / "reward_stats.json").write_text('{"mean": 1, "std": 2}')
    assert load_calibration(tmp_path / "norm") == {"mean": 1, "std": 2, "temperature": 1.0}
    with pytest.raises(ValueError):
        save_calibration(tmp_path, 1.0, 0.0, 1.0, extra={"mean": 3})
    with pytest.raises(ValueError):
        save_calibration(tmp_path, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("text", ['{"mean": 0.1, "std": ', "[1, 2]", '{"mean": "x", "std": 1}', '{"std": 1}',
                                  '{"mean": 0, "std": 1, "temperature": -2}'])
def test_corrupt_reward_stats_is_one_line_user_error(tmp_path, text):
    (tmp_path / "reward_stats.json").write_text(text)
    with pytest.raises(UserError) as e:
        load_calibration(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "reward_stats.json" in msg
