"""Pairwise Cringe (objectives/cringe.py): closed form with k = 1 (s⁺ then determined), the gate, gradient signs,
the sampler, the top-k log-probs of the log-prob layer against a naive log-softmax, and a tiny-LM training check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prefalign import objectives as O
from prefalign.data.batch import collate_pairs
from prefalign.data.types import PairExample
from prefalign.logps import feature, sequence_logps
from prefalign.objectives.base import PairLogps
from prefalign.objectives.cringe import cringe_candidates, sample_positive
from prefalign.testing import tiny_model
from prefalign.train.views import to_pair_logps

sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
softplus = lambda z: math.log1p(math.exp(z))  # noqa: E731


def _hand_batch(chosen=(-4.0, -6.0)):
    """Two pairs, k = 1 (top 2 per rejected position).
    Row 0, tokens [3, 7]: t0 top-2 ids [3, 5] → s_t = 3 is in, s⁺ = 5;  t1 top-2 ids [2, 4] → s_t = 7 is not, drop
    the 2nd, s⁺ = 2.  Row 1, one token [3] (t1 is padding): top-2 ids [6, 3] → s⁺ = 6."""
    tok = torch.tensor([[-0.5, -2.5], [-0.9, 0.0]], requires_grad=True)  # [B, T] log π(s_t)
    topk = torch.tensor([[[-0.5, -1.2], [-0.3, -2.0]], [[-0.1, -0.9], [0.0, 0.0]]], requires_grad=True)  # [B, T, 2]
    lp = PairLogps(
        policy_chosen=torch.tensor(chosen, requires_grad=True), policy_rejected=tok.sum(-1),
        chosen_tokens=torch.tensor([2.0, 3.0]), rejected_tokens=torch.tensor([2.0, 1.0]),
        policy_rejected_token_logps=tok, rejected_mask=torch.tensor([[True, True], [True, False]]),
        features={"rejected_topk_logps": topk, "rejected_topk_ids": torch.tensor([[[3, 5], [2, 4]], [[6, 3], [0, 0]]]),
                  "rejected_target_ids": torch.tensor([[3, 7], [3, 0]])},
    )
    return lp, tok, topk


def test_closed_form_k1():
    """per_example = −log π(y_w)/|y_w| + σ((b − (lp_w − lp_l))/τ) · mean_t softplus(log π(s_t) − log π(s⁺))."""
    lp, _, _ = _hand_batch()
    out = O.get("cringe", k=1, margin=1.0, tau=2.0)(lp)
    c0 = (softplus(-0.5 + 1.2) + softplus(-2.5 + 0.3)) / 2  # s⁺ = id 5 (−1.2), then id 2 (−0.3)
    c1 = softplus(-0.9 + 0.1)  # s⁺ = id 6 (−0.1)
    g0, g1 = sig((1.0 - (-4.0 + 3.0)) / 2.0), sig((1.0 - (-6.0 + 0.9)) / 2.0)
    want = torch.tensor([4.0 / 2 + g0 * c0, 6.0 / 3 + g1 * c1])
    torch.testing.assert_close(out.per_example, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.loss, want.mean(), atol=1e-6, rtol=1e-6)
    assert out.metrics["cringe/gate"] == pytest.approx((g0 + g1) / 2, abs=1e-6)


def test_gate_closes_when_margin_exceeds_b():
    """Chosen far above rejected (margin ≫ b): g → 0 and the loss is the chosen NLL alone; the gate has no gradient."""
    lp, tok, topk = _hand_batch(chosen=(60.0, 80.0))  # margins 63 and 80.9 ≫ b = 1 (log-probs; only the gap matters)
    out = O.get("cringe", k=1)(lp)
    assert out.metrics["cringe/gate"] < 1e-20
    torch.testing.assert_close(out.per_example, torch.tensor([-30.0, -80.0 / 3]), atol=1e-6, rtol=0)
    out.loss.backward()
    torch.testing.assert_close(lp.policy_chosen.grad, torch.tensor([-1 / 4, -1 / 6]))  # −1/(B·|y_w|): NLL only
    assert float(tok.grad.abs().max()) < 1e-20 and float(topk.grad.abs().max()) < 1e-20


def test_gradient_signs():
    """Descent lowers log π(s_t) and raises log π(s⁺); padding and non-sampled columns get no gradient."""
    lp, tok, topk = _hand_batch()
    O.get("cringe", k=1)(lp).loss.backward()
    g_tok = tok.grad  # includes the detached gate: none through policy_rejected
    assert (g_tok[0] > 0).all() and g_tok[1, 0] > 0 and g_tok[1, 1] == 0
    assert topk.grad[0, 0, 1] < 0 and topk.grad[0, 1, 0] < 0 and topk.grad[1, 0, 0] < 0  # the s⁺ columns
    assert topk.grad[0, 0, 0] == 0 and topk.grad[0, 1, 1] == 0 and topk.grad[1, 0, 1] == 0 and topk.grad[1, 1].eq(0).all()


def test_sampler_excludes_s_t_and_follows_pi():
    """k = 2 (top 3): s_t at column 1 is never drawn; columns 0 and 2 come ∝ π. Same seed, same draws."""
    n = 20000
    topk = torch.tensor([math.log(0.5), math.log(0.3), math.log(0.1)]).expand(1, n, 3)  # [1, n, 3]
    ids = torch.tensor([4, 9, 2]).expand(1, n, 3)
    cand = cringe_candidates(ids, torch.full((1, n), 9), torch.ones(1, n, dtype=torch.bool))
    torch.manual_seed(0)
    idx = sample_positive(topk, cand)
    torch.manual_seed(0)
    assert torch.equal(idx, sample_positive(topk, cand))
    assert not (idx == 1).any()
    assert (idx == 0).float().mean().item() == pytest.approx(0.5 / 0.6, abs=0.02)
    # s_t outside the top 3: the 3rd column is dropped, leaving the top 2
    cand = cringe_candidates(ids, torch.full((1, n), 7), torch.ones(1, n, dtype=torch.bool))
    assert cand[0, 0].tolist() == [True, True, False]


def test_missing_topk_is_an_error():
    lp, _, _ = _hand_batch()
    del lp.features["rejected_topk_logps"]
    with pytest.raises(ValueError, match="top-k"):
        O.get("cringe")(lp)
    lp, _, _ = _hand_batch()
    with pytest.raises(ValueError, match="top 6"):
        O.get("cringe", k=5)(lp)  # only 2 columns given


@pytest.mark.parametrize("bad", [{"k": 0}, {"tau": 0.0}])
def test_hyperparameter_ranges(bad):
    with pytest.raises(ValueError):
        O.get("cringe", **bad)


# ---------------------------------------------------------------------------------------------------------------
def _examples(vocab: int, lengths, seed: int = 0) -> list[PairExample]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(4, vocab, (n,), generator=g).tolist()  # noqa: E731
    return [PairExample(i + 1, rand(p), rand(c), rand(r)) for i, (p, c, r) in enumerate(lengths)]


def _naive_topk(model, prompt, comp, k):
    ids = torch.tensor([prompt + comp])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)[len(prompt) - 1 :]  # [T, V]
    return logp.topk(k, -1)


@pytest.mark.parametrize("layout,pack,plain_head", [("separate", False, True), ("shared_prefix", False, True),
                                                    ("separate", True, True), ("shared_prefix", True, True),
                                                    ("separate", False, False)])
def test_topk_logps_match_naive(tiny_tok, monkeypatch, layout, pack, plain_head):
    """Top-k log-probs and ids per completion position equal log_softmax(full logits).topk (1e-5), in every layout,
    packed, and through the non-linear-head fallback; the ordinary log-probs are bitwise those of topk = 0, and the
    top-k values carry gradient through the checkpointed chunks."""
    if not plain_head:
        monkeypatch.setattr("prefalign.logps._plain_head", lambda m: None)
    model = tiny_model(tiny_tok, seed=1).train()
    exs = _examples(len(tiny_tok), [(5, 3, 7), (9, 6, 2), (2, 4, 4)])
    batch = collate_pairs(exs, tiny_tok.pad_token_id, layout, pack=pack)
    k = 4
    out = sequence_logps(model, batch, chunk_size=5, features=(feature("topk", k=k), "target_ids"))
    plain = sequence_logps(model, batch, chunk_size=5)
    topk_logps, topk_ids, target_ids = (out.features[n] for n in ("topk_logps", "topk_ids", "target_ids"))
    assert torch.equal(out.token_logps, plain.token_logps) and torch.equal(out.seq_logps, plain.seq_logps)
    b = len(exs)
    for i, ex in enumerate(exs):
        for s, comp in ((i, ex.chosen_ids), (b + i, ex.rejected_ids)):
            want = _naive_topk(model, ex.prompt_ids, comp, k)
            n = len(comp)
            torch.testing.assert_close(topk_logps[s, :n], want.values, atol=1e-5, rtol=1e-5)
            assert torch.equal(topk_ids[s, :n], want.indices)
            assert target_ids[s, :n].tolist() == comp
            assert not topk_logps[s, n:].any() and not topk_ids[s, n:].any()
    topk_logps.sum().backward()
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0


def test_toy_lm_lowers_rejected_tokens(tiny_tok):
    """A tiny LM trained with cringe on one pair: the rejected tokens' log-probs fall, the chosen log-likelihood
    rises (b large so the gate stays open)."""
    torch.manual_seed(0)
    model = tiny_model(tiny_tok, seed=3).train()
    exs = _examples(len(tiny_tok), [(4, 5, 5)], seed=11)
    batch = collate_pairs(exs, tiny_tok.pad_token_id, "separate")
    obj = O.get("cringe", k=3, margin=50.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def logps():
        return to_pair_logps(sequence_logps(model, batch, features=obj.needs().policy_features), None, batch)

    with torch.no_grad():
        first = logps()
    for _ in range(15):
        opt.zero_grad()
        obj(logps()).loss.backward()
        opt.step()
    with torch.no_grad():
        last = logps()
    assert float(last.policy_chosen[0]) > float(first.policy_chosen[0]) + 1.0
    drop = first.policy_rejected_token_logps - last.policy_rejected_token_logps  # [1, T]
    assert (drop[last.rejected_mask] > 0).all(), drop
    contrast = F.softplus(last.policy_rejected_token_logps - last.features["rejected_topk_logps"][..., 0])  # [1, T]
    assert torch.isfinite(contrast).all()
