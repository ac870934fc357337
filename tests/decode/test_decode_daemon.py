"""DAEMON: the dual solve matches moments, SIR resamples ∝ exp(−μᵀf), and q fits 'human text' better than p.

Discrete toy: base p over K outcomes, metrics f [K, d], a 'human' distribution h with target E_h[f].
At the dual optimum q ∝ p·exp(−μᵀf) has E_q[f] = E_h[f], and then
    E_h[log q] − E_h[log p] = −μᵀE_h[f] − log Z = −μᵀE_q[f] − log Z = KL(q ‖ p) ≥ 0,
so the cross-entropy of human text drops by exactly KL(q ‖ p).
"""

from __future__ import annotations

import sys

import pytest
import torch

from prefalign.decode import fit_mu, run_decode, sir_select
from prefalign.testing import tiny_model

F64 = torch.float64


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dual_optimum_matches_moments_and_lowers_human_cross_entropy(seed):
    g = torch.Generator().manual_seed(seed)
    k, d = 30, 3
    log_p = torch.log_softmax(torch.randn(k, generator=g, dtype=F64), 0)
    f = torch.randn(k, d, generator=g, dtype=F64)
    h = torch.softmax(torch.randn(k, generator=g, dtype=F64), 0)
    target = h @ f
    mu = fit_mu(f, target, log_weights=log_p)
    log_q = torch.log_softmax(log_p - f @ mu, 0)
    q = log_q.exp()
    torch.testing.assert_close(q @ f, target, atol=1e-8, rtol=0)
    kl = float((q * (log_q - log_p)).sum())
    gain = float(h @ log_q - h @ log_p)
    assert kl > 0 and gain == pytest.approx(kl, abs=1e-8)


def test_fit_on_samples_is_self_normalised_importance_sampling():
    # Fitting on draws from p (no weights) approximates the exact fit; it is exact on the empirical measure.
    g = torch.Generator().manual_seed(3)
    k = 12
    p = torch.softmax(torch.randn(k, generator=g, dtype=F64), 0)
    f = torch.randn(k, 2, generator=g, dtype=F64)
    target = torch.softmax(torch.randn(k, generator=g, dtype=F64), 0) @ f
    draws = torch.multinomial(p, 50_000, replacement=True, generator=g)
    mu_samples = fit_mu(f[draws], target)
    mu_exact = fit_mu(f, target, log_weights=p.log())
    q_emp = torch.softmax(-(f[draws] @ mu_samples), 0)
    torch.testing.assert_close(q_emp @ f[draws], target, atol=1e-8, rtol=0)
    torch.testing.assert_close(mu_samples, mu_exact, atol=0.05, rtol=0)


def test_sir_selects_in_proportion_to_exp_minus_mu_f():
    g = torch.Generator().manual_seed(0)
    feats = torch.tensor([[[0.0], [1.0], [2.0]]], dtype=F64).expand(40_000, 3, 1)  # [P, n, d]
    mu = torch.tensor([0.7], dtype=F64)
    freq = torch.bincount(sir_select(feats, mu, g), minlength=3).double() / 40_000
    expected = torch.softmax(torch.tensor([0.0, -0.7, -1.4], dtype=F64), 0)
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


FEATURES = '''
def length_and_a(prompts, completions):
    return [[len(c) / 10.0, float(c.count("a"))] for c in completions]
'''


def test_daemon_decode_end_to_end(tmp_path, monkeypatch, tiny_tok):
    (tmp_path / "daemon_feats_mod.py").write_text(FEATURES)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = tiny_model(tiny_tok).eval()
    prompts = ["cat", "Tell me a joke."]
    out = run_decode("daemon", model, tiny_tok, prompts, max_new_tokens=8,
                     hparams={"features": "daemon_feats_mod:length_and_a", "mu": "0.0,0.0", "n": 4})
    assert len(out.completions) == 2 and out.info[0]["n"] == 4 and len(out.info[0]["features"]) == 2
    fixed = run_decode("daemon", model, tiny_tok, prompts, max_new_tokens=8,
                       hparams={"features": "daemon_feats_mod:length_and_a", "target": [1.0, 0.3], "n": 4})
    assert fixed.info[0]["moment_gap"] is not None
    one = run_decode("daemon", model, tiny_tok, prompts[:1], max_new_tokens=4,
                     hparams={"features": "daemon_feats_mod:length_and_a", "target": "1.0,0.3", "n": 3})
    assert one.info[0]["n"] == 3 and len(one.info[0]["mu"]) == 2
    sys.modules.pop("daemon_feats_mod", None)
