"""SparsePO (objectives/sparsepo.py): the loss with given masks (shared-mask λ halving, independent masks), the mask
gradient against its hand derivation, MaPO's activation masks by hand, the log-prob layer's token KL and reference
states against a naive full-vocabulary computation (every layout, packed, gradients too), the catalogue's toy check
(masks concentrate on the decisive token; sparsity grows with λ), and the training loop (variants, saved mask
network, kill -9 resume)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tests.train.helpers import config, read_metrics, write_pairs
from torch.testing import assert_close

from prefalign import objectives as O
from prefalign.data.batch import collate_pairs
from prefalign.data.types import PairExample
from prefalign.logps import head_of, sequence_logps
from prefalign.objectives.base import PairLogps
from prefalign.objectives.sparsepo import MaskNet, activation_mask
from prefalign.reference import Reference
from prefalign.testing import tiny_model
from prefalign.train.forward import forward
from prefalign.train.loop import train
from prefalign.train.views import to_pair_logps

f64 = torch.float64
L = lambda z: math.log1p(math.exp(-z))  # noqa: E731
sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731


def _quiet(*a, **k):
    pass


class _Stub(torch.nn.Module):
    """A "mask network" that reads the mask from the states: m_t = s[t, 0, 0]."""

    def forward(self, states):
        return states[..., 0, 0]


def _pair(m_w, m_l, d=True):
    """One pair, two chosen tokens and one rejected token (second slot padding).
    h(y_w) = [0.5, −0.2], h(y_l) = [0.3, ·]; D(y_w) = [−0.1, −0.3], D(y_l) = [−0.2, ·]."""
    t = lambda *x: torch.tensor([x], dtype=f64)  # noqa: E731
    pw, rw, pl, rl = t(-1.5, -2.2), t(-2.0, -2.0), t(-1.7, 0.0), t(-2.0, 0.0)
    mw, ml = torch.tensor([[True, True]]), torch.tensor([[True, False]])
    states = lambda m: torch.tensor(m, dtype=f64).view(1, -1, 1, 1).requires_grad_()  # noqa: E731  [1, T, 1, 1] leaf
    lp = PairLogps(pw.sum(1), pl.sum(1), rw.sum(1), rl.sum(1), policy_chosen_token_logps=pw,
                   policy_rejected_token_logps=pl, ref_chosen_token_logps=rw, ref_rejected_token_logps=rl,
                   chosen_mask=mw, rejected_mask=ml,
                   features={"chosen_ref_states": states(m_w), "rejected_ref_states": states(m_l),
                             **({"chosen_token_kl": t(-0.1, -0.3), "rejected_token_kl": t(-0.2, 0.0)} if d else {})})
    return lp


def test_shared_mask_loss_and_halved_penalty():
    """m(y_w) = [1, 0.5], m(y_l) = [2], β = 1: u = 0.5 − 0.1 − 0.6 = −0.2; d = (−0.1 − 0.15) − (−0.4) = 0.15;
    loss = L(u − d) = L(−0.35). One shared mask carries both penalties, halved: (λ_u + λ_d)/2 · ‖m‖₁ with
    ‖m‖₁ = 1 + 0.5 + 2 = 3.5; λ_u = 0.01, λ_d = 0.03 → + 0.07. Without the KL term: L(−0.2) + 0.005·3.5."""
    obj = O.get("sparsepo", beta=1.0, lambda_u=0.01, lambda_d=0.03)
    obj.net = _Stub()
    out = obj(_pair([1.0, 0.5], [2.0, 0.0]))
    assert_close(out.per_example, torch.tensor([L(-0.35) + 0.07], dtype=f64))
    assert out.metrics["mask/mean"] == pytest.approx(3.5 / 3)
    obj = O.get("sparsepo", beta=1.0, lambda_u=0.01, lambda_d=0.03, kl_term=False)
    obj.net = _Stub()
    out = obj(_pair([1.0, 0.5], [2.0, 0.0], d=False))
    assert_close(out.per_example, torch.tensor([L(-0.2) + 0.005 * 3.5], dtype=f64))


def test_independent_masks():
    """m^u from the "reward" net (m_t = s), m^d from the "kl" net (m_t = 2s): d doubles to 0.3, so
    loss = L(−0.2 − 0.3) + λ_u·3.5 + λ_d·7 (no halving)."""
    obj = O.get("sparsepo", beta=1.0, lambda_u=0.01, lambda_d=0.03, shared_mask=False)

    class Twice(_Stub):
        def forward(self, states):
            return 2 * states[..., 0, 0]

    obj.net = torch.nn.ModuleDict({"reward": _Stub(), "kl": Twice()})
    out = obj(_pair([1.0, 0.5], [2.0, 0.0]))
    assert_close(out.per_example, torch.tensor([L(-0.5) + 0.035 + 0.21], dtype=f64))


def test_mask_gradient_by_hand():
    """Shared mask, z = β(u − d): ∂loss/∂m_{w,t} = −β σ(−z)(h_{w,t} − D_{w,t}) + (λ_u + λ_d)/2 and
    ∂loss/∂m_{l,t} = +β σ(−z)(h_{l,t} − D_{l,t}) + (λ_u + λ_d)/2 (m > 0); padding gets none."""
    beta, lam = 0.7, (0.01, 0.03)
    obj = O.get("sparsepo", beta=beta, lambda_u=lam[0], lambda_d=lam[1])
    obj.net = _Stub()
    lp = _pair([1.0, 0.5], [2.0, 0.4])
    obj(lp).loss.backward()
    s = sig(-beta * (-0.35))
    gw = lp.features["chosen_ref_states"].grad[0, :, 0, 0]
    gl = lp.features["rejected_ref_states"].grad[0, :, 0, 0]
    half = sum(lam) / 2
    assert_close(gw, torch.tensor([-beta * s * (0.5 + 0.1) + half, -beta * s * (-0.2 + 0.3) + half], dtype=f64))
    assert_close(gl, torch.tensor([beta * s * (0.3 + 0.2) + half, 0.0], dtype=f64))


def test_activation_mask_by_hand():
    """Row 0, three tokens + one padding (value 100, ignored): layer means a₀ = [1, 3, 2], a₁ = [5, 5, 7] → min–max
    [0, 1, ½] and [0, 0, 1] → mean over layers [0, ½, ¾]. Row 1, one token: no span → 1."""
    a0 = torch.tensor([[1.0, 3.0, 2.0, 100.0], [4.0, 0.0, 0.0, 0.0]])
    a1 = torch.tensor([[5.0, 5.0, 7.0, 100.0], [9.0, 0.0, 0.0, 0.0]])
    states = torch.stack([a0, a1], -1)[..., None].expand(2, 4, 2, 3)  # [B, T, L, H]: mean over H is a
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert_close(activation_mask(states, mask), torch.tensor([[0.0, 0.5, 0.75, 0.0], [1.0, 0.0, 0.0, 0.0]]))


def test_masknet_formula():
    """m = ReLU(Σ_ℓ a_ℓ ReLU(w_ℓ·LN(s_ℓ) + b_ℓ)), one LayerNorm shared by the layers."""
    torch.manual_seed(0)
    net = MaskNet(hidden=6, layers=3)
    s = torch.randn(2, 5, 3, 6)
    ln = F.layer_norm(s, (6,), net.norm.weight, net.norm.bias, net.norm.eps)
    per = torch.stack([F.relu(ln[..., i, :] @ lin.weight[0] + lin.bias[0]) for i, lin in enumerate(net.per_layer)], -1)
    assert_close(net(s), F.relu(per @ net.mixer.weight[0]))


def test_hyperparameter_ranges():
    for bad in ({"mask": "random"}, {"beta": 0.0}, {"lambda_u": -1.0}):
        with pytest.raises(ValueError):
            O.get("sparsepo", **bad)
    assert O.get("sparsepo", mask="ones", kl_term=False).needs().ref_features == ("token_logps",)
    needs = O.get("sparsepo").needs()
    assert needs.ref_features == ("token_logps", "states") and [f.name for f in needs.policy_features] == ["token_kl"]
    assert needs.ref_inputs() == ("hidden", "head") and needs.live_reference
    assert O.get("sparsepo").build_module(SimpleNamespace(hidden_size=8, num_hidden_layers=2)) is not None
    assert O.get("sparsepo", mask="reference").build_module(SimpleNamespace(hidden_size=8, num_hidden_layers=2)) is None


# ---------------------------------------------------------------------------------------------------------------
def _examples(vocab: int, lengths, seed: int = 0) -> list[PairExample]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(4, vocab, (n,), generator=g).tolist()  # noqa: E731
    return [PairExample(i + 1, rand(p), rand(c), rand(r)) for i, (p, c, r) in enumerate(lengths)]


@pytest.mark.parametrize("layout,pack", [("separate", False), ("shared_prefix", False), ("separate", True),
                                         ("shared_prefix", True)])
def test_token_kl_and_states_match_naive(tiny_tok, layout, pack):
    """D_t from the chunked heads equals Σ_v π_ref(v)(log π_θ(v) − log π_ref(v)) from full logits (1e-5), and so do
    its gradients; the reference states are every layer's hidden state at the position predicting y_t; the token
    log-probs are bitwise those without the KL; at π_θ = π_ref, D = 0."""
    pol, ref = tiny_model(tiny_tok, seed=1).train(), tiny_model(tiny_tok, seed=2).eval()
    exs = _examples(len(tiny_tok), [(5, 3, 7), (9, 6, 2), (2, 4, 4)])
    batch = collate_pairs(exs, tiny_tok.pad_token_id, layout, pack=pack)
    sc = batch.scoring
    with torch.no_grad():
        r = sequence_logps(ref, batch, chunk_size=4, features=("states", "hidden"))
    ctx = {"ref_hidden": r.features["hidden"][sc.seq, sc.slot], "ref_head": head_of(ref)}  # [M, H], (W, b)
    out = sequence_logps(pol, batch, chunk_size=4, features=("token_kl",), context=ctx)
    plain = sequence_logps(pol, batch, chunk_size=4)
    assert torch.equal(out.token_logps, plain.token_logps)
    token_kl, states = out.features["token_kl"], r.features["states"]
    token_kl.sum().backward()
    got_grad = pol.get_output_embeddings().weight.grad.clone()
    pol.zero_grad()
    want_sum, nb = 0.0, len(exs)
    for i, ex in enumerate(exs):
        for s, comp in ((i, ex.chosen_ids), (nb + i, ex.rejected_ids)):
            ids, n, p = torch.tensor([ex.prompt_ids + comp]), len(comp), len(ex.prompt_ids)
            lp_pol = pol(input_ids=ids).logits[0, p - 1 : -1].log_softmax(-1)  # [n, V]
            with torch.no_grad():
                hs = ref.model(input_ids=ids, output_hidden_states=True).hidden_states[1:]
                lp_ref = ref(input_ids=ids).logits[0, p - 1 : -1].log_softmax(-1)
            d = (lp_ref.exp() * (lp_pol - lp_ref)).sum(-1)  # [n]
            assert_close(token_kl[s, :n], d.detach(), atol=1e-5, rtol=1e-5)
            assert not token_kl[s, n:].any()
            assert_close(states[s, :n], torch.stack([h[0, p - 1 : -1] for h in hs], 1), atol=1e-5, rtol=1e-5)
            want_sum = want_sum + d.sum()
    want_sum.backward()
    assert_close(got_grad, pol.get_output_embeddings().weight.grad, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        own = sequence_logps(pol, batch, features=("hidden",)).features["hidden"][sc.seq, sc.slot]
        same = sequence_logps(pol, batch, features=("token_kl",), context={"ref_hidden": own, "ref_head": head_of(pol)})
    assert same.features["token_kl"].abs().max() < 1e-6


# ---------------------------------------------------------------------------------------------------------------
MARK, GOOD, TOXIC = 12, 13, 14


def _toy_batch():
    """16 pairs over vocabulary 16: completions [a, b, MARK, GOOD] (chosen) and [a, b, MARK, TOXIC] (rejected), a and
    b random from {4..11}: the preference is decided at the last position. Every scored state (the one predicting
    y_t) has the same context in both responses, so the masks are equal across a pair and h_w,t − h_l,t = 0 except
    at the decisive position: the masks can only learn *where* the preference is decided."""
    g = torch.Generator().manual_seed(5)
    exs = []
    for i in range(16):
        prompt = torch.randint(4, 12, (3,), generator=g).tolist()
        a, b = torch.randint(4, 12, (2,), generator=g).tolist()
        exs.append(PairExample(i + 1, prompt, [a, b, MARK, GOOD], [a, b, MARK, TOXIC]))
    return collate_pairs(exs, 0, "separate")


def _train_toy(lambda_u: float, steps: int = 60):
    torch.manual_seed(0)
    pol = tiny_model(vocab_size=16, hidden_size=32, seed=4).train()
    ref = tiny_model(vocab_size=16, hidden_size=32, seed=4).eval()
    obj = O.get("sparsepo", beta=1.0, lambda_u=lambda_u, lambda_d=lambda_u)
    net = obj.build_module(pol.config)
    opt = torch.optim.Adam([*pol.parameters(), *net.parameters()], lr=1e-2)
    batch = _toy_batch()
    reference = Reference("copy", ref)
    for _ in range(steps):  # the training loop's forward step: reference states and head → the policy's token KL
        opt.zero_grad()
        out, p, _ = forward(obj, obj.needs(), pol, reference, batch, to_pair_logps)
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        m = net(reference.logps(batch, features=("states",)).features["states"])  # [2B, T]
    return m, p


def test_toy_masks_concentrate_on_the_decisive_token_and_sparsify_with_lambda():
    """The catalogue's CPU check: one token decides the preference. After training, the mask at that position is
    far above the other positions' (both responses), and a larger λ gives a sparser mask (lower mean, more zeros)."""
    m, p = _train_toy(0.01)
    assert p.token_logps[16:, 3].mean() < p.token_logps[:16, 3].mean() - 1.0  # TOXIC became less likely than GOOD
    decisive, others = m[:, 3].mean(), m[:, :3].mean()
    assert decisive > 3 * others, m
    dense, _ = _train_toy(0.0)
    sparse, _ = _train_toy(0.1)
    assert sparse.mean() < dense.mean() and (sparse == 0).float().mean() > (dense == 0).float().mean()


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hp", [{"mask": "reference"}, {"shared_mask": False}, {"mask": "ones"},
                                {"kl_term": False}])
def test_variants_train(hp, tiny_model_dir, tmp_path):
    """Each variant trains through the loop (margins rise); only the learned mask writes objective.safetensors,
    whose parameters moved from their initial values."""
    data = write_pairs(tmp_path / "rows.jsonl", n=8)
    cfg = config(tiny_model_dir, data, tmp_path / "out", max_steps=4, learning_rate=5e-3, batch_size=4,
                 logging_steps=1, memory_probe=False, beta=0.5, objective="sparsepo",
                 objective_args={"sparsepo": hp})
    out = train(cfg, log=_quiet)
    logs = [m for m in read_metrics(out) if "loss" in m]
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    learned = hp.get("mask", "learned") == "learned"
    assert (out / "objective.safetensors").exists() == learned
    if learned:
        saved = load_file(str(out / "objective.safetensors"))
        assert any(k.startswith("kl.") for k in saved) == (not hp.get("shared_mask", True))
        mixers = [v for k, v in saved.items() if k.endswith("mixer.weight")]  # initialised to 1/L
        assert mixers and all((v != 0.5).all() for v in mixers), mixers


def test_precompute_reference_is_refused(tiny_model_dir, tmp_path):
    from prefalign.errors import UserError

    data = write_pairs(tmp_path / "rows.jsonl", n=8)
    with pytest.raises(UserError, match="reference"):
        train(config(tiny_model_dir, data, tmp_path / "out", objective="sparsepo", reference="precompute"),
              log=_quiet)


@pytest.mark.slow
def test_resume_with_mask_network_is_bitwise_identical(tiny_model_dir, tmp_path):
    """The mask network and its optimizer state are checkpointed: kill -9 after step 3 and --resume gives the same
    policy and mask weights as a straight run."""
    from tests.train.test_resume_and_dist import same_tensors, straight_vs_resumed

    data = write_pairs(tmp_path / "d.jsonl", n=16)
    a, b = straight_vs_resumed(tiny_model_dir, data, tmp_path, max_steps=6, save_steps=2, batch_size=2,
                               objective="sparsepo", learning_rate=5e-3)
    assert same_tensors(a, b, "model.safetensors") and same_tensors(a, b, "objective.safetensors")


def test_lora_adapter_reference_shared_prefix_and_memory_probe(tiny_model_dir, tmp_path):
    """With LoRA the reference (states, LM head) is the base model with the adapter off; the shared-prefix layout and
    the start-up memory probe go through the same path."""
    data = write_pairs(tmp_path / "rows.jsonl", n=8)
    cfg = config(tiny_model_dir, data, tmp_path / "out", max_steps=3, learning_rate=5e-3, batch_size=4,
                 logging_steps=1, layout="shared_prefix", lora=True, objective="sparsepo", beta=0.5)
    out = train(cfg, log=_quiet)
    logs = [m for m in read_metrics(out) if "loss" in m]
    assert len(logs) == 3 and all(math.isfinite(m["loss"]) for m in logs)
    assert math.log(2) < logs[0]["loss"] < math.log(2) + 0.1  # step 1: h = D = 0, so ln 2 + the small ℓ1 term
    assert (out / "objective.safetensors").exists() and (out / "adapter_model.safetensors").exists()
