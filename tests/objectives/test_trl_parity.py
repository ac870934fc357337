"""Parity with TRL 1.16: prefalign's objectives against TRL's own loss code, on the same log-probs.

How TRL is run: ``DPOTrainer._compute_loss(model, inputs)`` gets its per-token log-probs from
``model(..., labels=..., fused_lm_head=True).log_probs`` and the reference's from ``trainer.ref_model(...)``.
A real ``DPOTrainer`` (tiny Llama, explicit ``ref_model``, 2-row dataset) is built once per module; each case sets
the trainer's loss attributes, puts a ``FakeLM`` in as reference and passes another as the policy. A ``FakeLM``
returns fixed per-token log-probs (zero off the completion, as TRL's fused head does) in TRL's own
``FusedCausalLMOutput``. So all of TRL's code from the per-token log-probs on — LD-DPO masks, f-divergence, every
loss branch, WPO weights, the multi-loss sum and the batch mean — runs unchanged on our tensors. TRL returns the
batch mean: each case compares per-example losses with B = 1, then the mean and the gradient with respect to the
policy's per-token log-probs on a batch of 5 (fp64, to 1e-6).

Two TRL 1.16 bugs found this way (see docs/objectives.md): ``sft`` with ``use_weighting=True`` raises (in-place
multiply on an expanded tensor), and ``alpha_divergence`` raises on fp64 inputs (no clamp bound for fp64), so the
alpha-divergence cases run in fp32.

The reference-free objectives are compared against TRL's experimental ``CPOTrainer`` / ``ORPOTrainer``:
``get_batch_loss_metrics`` on an instance made with ``object.__new__`` and a fake model returning fixed logits.
"""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import pytest
import torch

from prefalign import objectives as O
from prefalign.objectives import PairLogps

pytest.importorskip("trl")

ALL_TRL_TYPES = [
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]
# TRL loss_type -> (prefalign name, hyperparameters TRL reads from label_smoothing / discopop_tau)
OURS = {
    "sigmoid": ("dpo", {}),
    "hinge": ("hinge", {}),
    "ipo": ("ipo", {}),
    "exo_pair": ("exo_pair", {"label_smoothing": 1e-3}),
    "nca_pair": ("nca_pair", {}),
    "robust": ("robust", {"label_smoothing": 0.2}),
    "bco_pair": ("bco_pair", {}),
    "sppo_hard": ("sppo_hard", {}),
    "aot": ("aot", {"label_smoothing": 0.1}),
    "aot_unpaired": ("aot_unpaired", {"label_smoothing": 0.1}),
    "apo_zero": ("apo_zero", {}),
    "apo_down": ("apo_down", {}),
    "discopop": ("discopop", {"discopop_tau": 0.05}),
    "sft": ("sft", {}),
    "sigmoid_norm": ("sigmoid_norm", {}),
}
TRL_F_DIV_OK = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}


# ----------------------------------------------------------------------------------------------------------------
# A batch we control, in TRL's layout and in ours


@dataclasses.dataclass
class Batch:
    inputs: dict  # TRL collator output: input_ids, attention_mask, completion_mask, each [2B, L]
    policy: torch.Tensor  # [2B, L-1] per-token log-probs (leaf, requires grad), rows [chosen..., rejected...]
    ref: torch.Tensor  # [2B, L-1]
    log_sum_sq: torch.Tensor  # [2B, L-1] log Σ_v π(v)² per position
    mask: torch.Tensor  # [2B, L-1] shifted completion mask


def make_batch(B: int, seed: int, dtype=torch.float64, max_len: int = 9) -> Batch:
    g = torch.Generator().manual_seed(seed)
    L = 3 + max_len
    cm = torch.zeros(2 * B, L, dtype=torch.long)
    am = torch.zeros(2 * B, L, dtype=torch.long)
    for i in range(2 * B):
        p = int(torch.randint(1, 4, (), generator=g))  # prompt tokens
        n = int(torch.randint(1, max_len + 1, (), generator=g))  # completion tokens
        cm[i, p : p + n] = 1
        am[i, : p + n] = 1
    mask = cm[:, 1:].to(dtype)

    def tok(lo, hi):
        return (lo + (hi - lo) * torch.rand(2 * B, L - 1, generator=g, dtype=torch.float64)).to(dtype) * mask

    policy = tok(-3.0, -0.05).requires_grad_(True)
    ref = tok(-3.0, -0.05)
    # log Σ π² lies in [2·max log π, 0]; any values work for the formula, keep them plausible
    log_sum_sq = tok(-2.5, -0.1)
    inputs = {"input_ids": torch.ones(2 * B, L, dtype=torch.long), "attention_mask": am, "completion_mask": cm}
    return Batch(inputs, policy, ref, log_sum_sq, mask)


def to_pair_logps(b: Batch) -> PairLogps:
    B = b.policy.shape[0] // 2
    pol, ref, lss, m = b.policy, b.ref, b.log_sum_sq, b.mask
    return PairLogps(
        policy_chosen=pol[:B].sum(1), policy_rejected=pol[B:].sum(1),
        ref_chosen=ref[:B].sum(1), ref_rejected=ref[B:].sum(1),
        chosen_tokens=m[:B].sum(1), rejected_tokens=m[B:].sum(1),
        policy_chosen_token_logps=pol[:B], policy_rejected_token_logps=pol[B:],
        ref_chosen_token_logps=ref[:B], ref_rejected_token_logps=ref[B:],
        chosen_mask=m[:B], rejected_mask=m[B:],
        features={"chosen_log_sum_sq": lss[:B], "rejected_log_sum_sq": lss[B:]},
    )


# ----------------------------------------------------------------------------------------------------------------
# TRL, with the model forward replaced by fixed per-token outputs


class FakeLM:
    """Stands in for a model patched by TRL's ``add_fused_lm_head``: returns fixed per-token outputs."""

    def __init__(self, log_probs: torch.Tensor, log_sum_sq: torch.Tensor | None = None):
        self.log_probs, self.log_sum_sq = log_probs, log_sum_sq

    def __call__(self, *, labels, fused_lm_head=False, **kwargs):
        from trl.trainer.utils import FusedCausalLMOutput

        assert fused_lm_head
        label_mask = labels[:, 1:] != -100
        assert torch.equal(label_mask, self.log_probs.detach() != 0)  # TRL's mask is ours
        zeros = torch.zeros_like(self.log_probs.detach())
        return FusedCausalLMOutput(
            loss=None, log_probs=self.log_probs, entropy=zeros, log_sum_sq_probs=self.log_sum_sq,
            mean_logits=zeros, is_top1=zeros.bool(), label_mask=label_mask,
        )


@pytest.fixture(scope="module")
def trl_env(tmp_path_factory):
    import datasets
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from prefalign.testing import tiny_model, tiny_tokenizer

    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)
    tok = tiny_tokenizer()
    ds = Dataset.from_dict({"prompt": ["a b", "c d"], "chosen": [" yes", " no"], "rejected": [" no", " yes"]})

    def config(**kw):
        return DPOConfig(
            output_dir=str(tmp_path_factory.mktemp("dpo")), report_to=[], bf16=False, use_cpu=True,
            gradient_checkpointing=False, save_strategy="no", **kw,
        )

    trainer = DPOTrainer(
        model=tiny_model(tok), ref_model=tiny_model(tok, seed=1), args=config(), train_dataset=ds,
        processing_class=tok,
    )
    return SimpleNamespace(trainer=trainer, tok=tok, ds=ds, config=config, DPOTrainer=DPOTrainer,
                           models=(tiny_model(tok), tiny_model(tok, seed=1)))


def trl_loss(env, b: Batch, loss_types, weights=None, *, beta=0.1, f_divergence="reverse_kl", f_alpha=0.5,
             label_smoothing=0.0, use_weighting=False, ld_alpha=None, discopop_tau=0.05) -> torch.Tensor:
    tr = env.trainer
    tr.loss_types, tr.loss_weights = list(loss_types), list(weights or [1.0] * len(loss_types))
    tr.beta, tr.label_smoothing, tr.use_weighting, tr.ld_alpha = beta, label_smoothing, use_weighting, ld_alpha
    tr.f_divergence_type, tr.f_alpha_divergence_coef = f_divergence, f_alpha
    tr.args.discopop_tau = discopop_tau
    tr.ref_model = FakeLM(b.ref)
    return tr._compute_loss(FakeLM(b.policy, b.log_sum_sq), b.inputs, False)


def ours(loss_types, weights=None, **mod):
    """Our objective for TRL's loss list, with the modifiers TRL applies to all of them."""
    parts = []
    for t in loss_types:
        name, hp = OURS[t]
        hp = dict(hp)
        if name == "sft":
            hp["use_weighting"] = mod.get("use_weighting", False)
        else:
            hp.update({k: v for k, v in mod.items() if v is not None})
        parts.append(O.get(name, **hp))
    return O.combine(parts, list(weights) if weights else None)


def check(env, loss_types, weights=None, dtype=torch.float64, tol=1e-6, grad=True, **mod):
    """Per-example (B = 1, three rows), then mean + gradient (B = 5), ours vs TRL."""
    trl_kw = dict(mod)
    for t in loss_types:  # TRL reads these from shared config fields
        trl_kw.update(OURS[t][1])
    trl_kw = {k: v for k, v in trl_kw.items() if k in
              ("beta", "f_divergence", "f_alpha", "label_smoothing", "use_weighting", "ld_alpha", "discopop_tau")}
    obj = ours(loss_types, weights, **mod)
    for seed in range(3):
        b = make_batch(1, seed, dtype)
        expected = trl_loss(env, b, loss_types, weights, **trl_kw)
        got = obj(to_pair_logps(b)).per_example
        torch.testing.assert_close(got[0], expected.detach().to(dtype), rtol=tol, atol=tol)
    b = make_batch(5, 100, dtype)
    expected = trl_loss(env, b, loss_types, weights, **trl_kw)
    out = obj(to_pair_logps(b))
    torch.testing.assert_close(out.loss, expected.to(dtype), rtol=tol, atol=tol)
    if not grad:
        return
    (g_trl,) = torch.autograd.grad(expected, b.policy)
    (g_ours,) = torch.autograd.grad(out.loss, b.policy)
    # off-completion entries are padding (TRL's fused head writes zeros there); only completion tokens have a gradient
    torch.testing.assert_close(g_ours * b.mask, g_trl * b.mask, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------------------------
# DPOTrainer loss types and modifiers


@pytest.mark.parametrize("loss_type", ALL_TRL_TYPES)
def test_loss_type(trl_env, loss_type):
    check(trl_env, [loss_type])


@pytest.mark.parametrize("loss_type", ALL_TRL_TYPES)
def test_loss_type_other_beta(trl_env, loss_type):
    check(trl_env, [loss_type], beta=0.37)


def test_ipo_summed_is_not_trl(trl_env):
    """length_normalize=False is the OpenRLHF / paper form; it differs from TRL whenever lengths are not all 1."""
    b = make_batch(5, 7)
    expected = trl_loss(trl_env, b, ["ipo"])
    got = O.get("ipo", length_normalize=False)(to_pair_logps(b)).loss
    assert not torch.allclose(got, expected)


@pytest.mark.parametrize("f_divergence", ["forward_kl", "js_divergence"])
@pytest.mark.parametrize("loss_type", sorted(TRL_F_DIV_OK))
def test_f_divergence(trl_env, loss_type, f_divergence):
    check(trl_env, [loss_type], f_divergence=f_divergence)


@pytest.mark.parametrize("f_alpha", [0.5, 0.2, 1.0])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "sigmoid_norm", "hinge"])
def test_alpha_divergence_fp32(trl_env, loss_type, f_alpha):
    # TRL 1.16 has no clamp bound for fp64 (KeyError), so this runs in fp32
    check(trl_env, [loss_type], dtype=torch.float32, tol=2e-5, f_divergence="alpha_divergence", f_alpha=f_alpha)


def test_alpha_divergence_fp64_crashes_in_trl(trl_env):
    with pytest.raises(KeyError):
        trl_loss(trl_env, make_batch(1, 0), ["sigmoid"], f_divergence="alpha_divergence")


@pytest.mark.parametrize("loss_type", [t for t in ALL_TRL_TYPES if t not in ("aot", "aot_unpaired", "sft")])
def test_wpo_weighting(trl_env, loss_type):
    check(trl_env, [loss_type], use_weighting=True, grad=loss_type != "hinge")  # hinge: see below


def test_wpo_hinge_backward(trl_env):
    """TRL 1.16 multiplies relu's output in place by the WPO weights, which breaks relu's backward."""
    b = make_batch(3, 0)
    loss = trl_loss(trl_env, b, ["hinge"], use_weighting=True)
    try:
        torch.autograd.grad(loss, b.policy)
    except RuntimeError as err:
        assert "inplace operation" in str(err)
        pytest.xfail("TRL 1.16 bug: hinge + use_weighting cannot backpropagate (in-place multiply of relu output)")
    check(trl_env, ["hinge"], use_weighting=True)


def test_wpo_sft(trl_env):
    """TRL 1.16 crashes on sft + use_weighting; when it stops crashing, this becomes a parity check."""
    try:
        trl_loss(trl_env, make_batch(2, 0), ["sft"], use_weighting=True)
    except RuntimeError as err:
        assert "memory location" in str(err)
        pytest.xfail("TRL 1.16 bug: in-place multiply of the expanded sft loss by the WPO weights")
    check(trl_env, ["sft"], use_weighting=True)


@pytest.mark.parametrize("ld_alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("loss_type", ALL_TRL_TYPES)
def test_ld_alpha(trl_env, loss_type, ld_alpha):
    check(trl_env, [loss_type], ld_alpha=ld_alpha)


def test_all_modifiers_together(trl_env):
    check(trl_env, ["sigmoid"], f_divergence="js_divergence", use_weighting=True, ld_alpha=0.3, beta=0.2)
    check(trl_env, ["ipo"], f_divergence="forward_kl", use_weighting=True, ld_alpha=0.6)


@pytest.mark.parametrize(
    "loss_types, weights",
    [
        (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]),  # MPO
        (["sigmoid", "sft"], None),  # RPO-like
        (["hinge", "ipo", "apo_zero", "aot"], [0.5, 0.1, 1.0, 2.0]),
    ],
)
def test_multi_loss(trl_env, loss_types, weights):
    check(trl_env, loss_types, weights)


# ----------------------------------------------------------------------------------------------------------------
# Which configurations TRL refuses, against ours (the check runs before dataset preparation; stop there)


class _PassedChecks(Exception):
    pass


def _trl_accepts(env, monkeypatch, **config) -> bool:
    def stop(*args, **kwargs):
        raise _PassedChecks

    monkeypatch.setattr(env.DPOTrainer, "_prepare_dataset", stop)
    model, ref = env.models
    try:
        env.DPOTrainer(model=model, ref_model=ref, args=env.config(**config), train_dataset=env.ds,
                       processing_class=env.tok)
    except _PassedChecks:
        return True
    except (ValueError, NotImplementedError):
        return False
    raise AssertionError("unreachable")


def _ours_accepts(loss_type, **hp) -> bool:
    name, base = OURS[loss_type]
    hp = {**base, **hp}
    if name == "sft":
        hp = {k: v for k, v in hp.items() if k == "use_weighting"}
    try:
        O.get(name, **hp)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("loss_type", ALL_TRL_TYPES)
def test_f_divergence_refusals_match(trl_env, monkeypatch, loss_type):
    trl_ok = _trl_accepts(trl_env, monkeypatch, loss_type=[loss_type], f_divergence_type="forward_kl",
                          label_smoothing=OURS[loss_type][1].get("label_smoothing", 0.0))
    assert trl_ok == (loss_type in TRL_F_DIV_OK)
    assert _ours_accepts(loss_type, f_divergence="forward_kl") == trl_ok


@pytest.mark.parametrize("loss_type", ["aot", "aot_unpaired", "sigmoid"])
def test_weighting_refusals_match(trl_env, monkeypatch, loss_type):
    trl_ok = _trl_accepts(trl_env, monkeypatch, loss_type=[loss_type], use_weighting=True)
    assert _ours_accepts(loss_type, use_weighting=True) == trl_ok


def test_exo_needs_label_smoothing_in_both(trl_env, monkeypatch):
    assert not _trl_accepts(trl_env, monkeypatch, loss_type=["exo_pair"], label_smoothing=0.0)
    assert not _ours_accepts("exo_pair", label_smoothing=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Reference-free objectives vs TRL's experimental CPOTrainer / ORPOTrainer


def _logits_batch(B: int, seed: int, prompt_len: int = 3, V: int = 11, max_len: int = 6):
    """Fixed logits + CPO/ORPO-style batch dict; chosen/rejected rows padded to their own lengths."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for side in ("chosen", "rejected"):
        lens = torch.randint(1, max_len + 1, (B,), generator=g)
        L = prompt_len + int(lens.max())
        ids = torch.randint(0, V, (B, L), generator=g)
        am = torch.zeros(B, L, dtype=torch.long)
        labels = torch.full((B, L), -100)
        for i in range(B):
            n = prompt_len + int(lens[i])
            am[i, :n] = 1
            labels[i, prompt_len:n] = ids[i, prompt_len:n]
        batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], batch[f"{side}_labels"] = ids, am, labels
    return batch


def _fake_logits_model(batch, V: int, seed: int):
    """Concatenates like TRL (pad to the longer side) and returns fixed logits for that shape; also our PairLogps."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    cat = CPOTrainer.concatenated_inputs(batch, padding_value=0)
    ids, labels = cat["concatenated_input_ids"], cat["concatenated_labels"]
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(*ids.shape, V, generator=g, dtype=torch.float64)).requires_grad_(True)

    def model(input_ids, attention_mask=None, **kw):
        assert torch.equal(input_ids, ids)
        return SimpleNamespace(logits=logits)

    # our side: per-token log-probs of the completion labels, from the same logits
    shifted = labels[:, 1:]
    mask = shifted != -100
    tok = torch.log_softmax(logits[:, :-1], -1).gather(-1, shifted.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    tok = tok * mask
    B = batch["chosen_input_ids"].shape[0]
    lp = PairLogps(
        policy_chosen=tok[:B].sum(1), policy_rejected=tok[B:].sum(1),
        chosen_tokens=mask[:B].sum(1).to(tok.dtype), rejected_tokens=mask[B:].sum(1).to(tok.dtype),
    )
    return model, logits, lp


def _accel():
    return SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x)


@pytest.mark.parametrize(
    "trl_kw, ours_name, ours_kw",
    [
        ({"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0, "label_smoothing": 0.0}, "cpo", {}),
        ({"loss_type": "sigmoid", "beta": 0.3, "cpo_alpha": 0.5, "label_smoothing": 0.1}, "cpo",
         {"beta": 0.3, "cpo_alpha": 0.5, "label_smoothing": 0.1}),
        ({"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 0.0, "label_smoothing": 0.0}, "cpo", {"cpo_alpha": 0.0}),
        # TRL's simpo_gamma is the margin γ itself; ours is γ/β (gamma_beta_ratio)
        ({"loss_type": "simpo", "beta": 2.0, "cpo_alpha": 0.0, "label_smoothing": 0.0, "simpo_gamma": 1.0},
         "simpo", {}),
        ({"loss_type": "simpo", "beta": 0.1, "cpo_alpha": 0.0, "label_smoothing": 0.2, "simpo_gamma": 0.5},
         "simpo", {"beta": 0.1, "gamma_beta_ratio": 5.0, "label_smoothing": 0.2}),
    ],
)
def test_cpo_trainer_parity(trl_kw, ours_name, ours_kw):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    tr = object.__new__(CPOTrainer)
    tr.__dict__.update({"is_encoder_decoder": False, "pad_token_id": 0, "aux_loss_enabled": False, "alpha": 0.0,
                        "accelerator": _accel(), "simpo_gamma": 0.5, **trl_kw})
    obj = O.get(ours_name, **ours_kw)
    for seed, B in [(0, 1), (1, 1), (2, 4)]:
        batch = _logits_batch(B, seed)
        model, logits, lp = _fake_logits_model(batch, 11, seed)
        loss_trl, _ = tr.get_batch_loss_metrics(model, batch)
        (g_trl,) = torch.autograd.grad(loss_trl, logits)
        out = obj(lp)
        (g_ours,) = torch.autograd.grad(out.loss, logits)
        torch.testing.assert_close(out.loss, loss_trl.to(out.loss.dtype), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g_ours, g_trl, rtol=1e-6, atol=1e-6)
        if B == 1:
            torch.testing.assert_close(out.per_example[0], loss_trl, rtol=1e-6, atol=1e-6)


def _orpo_trainer(beta):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    tr = object.__new__(ORPOTrainer)
    tr.__dict__.update(is_encoder_decoder=False, padding_value=0, aux_loss_enabled=False, beta=beta,
                       accelerator=_accel())
    return tr


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_odds_ratio_term_parity(beta):
    """The λ·log σ(log OR) term, per example (TRL computes it in fp32)."""
    tr = _orpo_trainer(beta)
    g = torch.Generator().manual_seed(0)
    a_w = -3 * torch.rand(6, generator=g, dtype=torch.float64) - 1e-3  # length-averaged log-probs, incl. near 0
    a_l = -3 * torch.rand(6, generator=g, dtype=torch.float64) - 1e-3
    n = torch.full((6,), 4.0, dtype=torch.float64)
    trl_term, *_ = tr.odds_ratio_loss(a_w, a_l)  # = λ·log σ(log OR), [B]
    lp = PairLogps(policy_chosen=a_w * n, policy_rejected=a_l * n, chosen_tokens=n, rejected_tokens=n)
    out = O.get("orpo", beta=beta)(lp)
    nll = -a_w.mean()
    torch.testing.assert_close(out.per_example - nll, -trl_term.to(torch.float64), rtol=1e-6, atol=1e-6)


def test_orpo_trainer_parity_one_token_prompt():
    """Whole ORPO loss: equal to TRL's when the prompt is one token (TRL's NLL also covers prompt tokens)."""
    tr = _orpo_trainer(0.1)
    obj = O.get("orpo")
    for seed, B in [(0, 1), (1, 3)]:
        batch = _logits_batch(B, seed, prompt_len=1)
        model, _, lp = _fake_logits_model(batch, 11, seed)
        loss_trl, _ = tr.get_batch_loss_metrics(model, batch)
        torch.testing.assert_close(obj(lp).loss, loss_trl.to(torch.float64), rtol=1e-5, atol=1e-6)


def test_orpo_trl_nll_includes_prompt():
    """With a longer prompt TRL's ORPO differs from the paper's (and ours) by its NLL over the prompt tokens."""
    tr = _orpo_trainer(0.1)
    batch = _logits_batch(3, 5, prompt_len=4)
    model, _, lp = _fake_logits_model(batch, 11, 5)
    loss_trl, _ = tr.get_batch_loss_metrics(model, batch)
    assert abs(O.get("orpo")(lp).loss.item() - loss_trl.item()) > 1e-3
