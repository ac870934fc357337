"""The registry: names, lookup errors, hyperparameter validation, the objective contract, and combine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from prefalign import objectives as O
from prefalign.objectives import PairLogps

EXPECTED = {
    "dpo", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm", "sft", "simpo", "orpo", "cpo",
}
REFERENCE_FREE = {"sft", "simpo", "orpo", "cpo"}


def test_names():
    assert EXPECTED <= set(O.names())
    assert O.names() == sorted(O.names())


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown objective 'dpoo'") as err:
        O.get("dpoo")
    assert "did you mean 'dpo'" in str(err.value)
    assert "known: " in str(err.value) and "sppo_hard" in str(err.value)


def test_unknown_hyperparameter_lists_known_ones():
    with pytest.raises(ValueError, match="no hyperparameter 'betta'") as err:
        O.get("ipo", betta=0.1)
    assert "did you mean 'beta'" in str(err.value)
    assert "length_normalize" in str(err.value) and "ld_alpha" in str(err.value)
    with pytest.raises(ValueError, match="no hyperparameter 'f_divergence'"):
        O.get("sft", f_divergence="forward_kl")  # sft has no such option: an error, not silently ignored


@pytest.mark.parametrize("name", sorted(EXPECTED - {"sft"}))
@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_beta_must_be_positive(name, beta):
    with pytest.raises(ValueError, match="beta"):
        O.get(name, beta=beta)


@pytest.mark.parametrize(
    "name, hp, match",
    [
        ("robust", {"label_smoothing": 0.5}, "label_smoothing"),
        ("robust", {"label_smoothing": -0.1}, "label_smoothing"),
        ("dpo", {"label_smoothing": 0.5}, "label_smoothing"),
        ("exo_pair", {"label_smoothing": 0.0}, "label_smoothing"),
        ("exo_pair", {"label_smoothing": -1e-3}, "label_smoothing"),
        ("aot", {"label_smoothing": 0.7}, "label_smoothing"),
        ("discopop", {"discopop_tau": 0.0}, "discopop_tau"),
        ("cpo", {"cpo_alpha": -1.0}, "cpo_alpha"),
        ("simpo", {"label_smoothing": 0.5}, "label_smoothing"),
        ("dpo", {"ld_alpha": 1.5}, "ld_alpha"),
        ("dpo", {"ld_alpha": -0.1}, "ld_alpha"),
        ("dpo", {"f_divergence": "kl"}, "unknown f_divergence"),
        ("nca_pair", {"f_divergence": "js_divergence"}, "reverse_kl"),
        ("apo_down", {"f_divergence": "alpha_divergence"}, "reverse_kl"),
        ("aot", {"use_weighting": True}, "use_weighting"),
        ("aot_unpaired", {"use_weighting": True}, "use_weighting"),
    ],
)
def test_validate_ranges(name, hp, match):
    with pytest.raises(ValueError, match=match):
        O.get(name, **hp)


def test_f_divergence_support_matches_trl_1_16():
    """TRL 1.16 allows a non-default f-divergence for exactly these loss types (sft has no option at all here)."""
    supported = {n for n in EXPECTED - REFERENCE_FREE if O.get_class(n).supports_f_divergence}
    assert supported == {"dpo", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop"}


def test_defaults():
    assert O.get("dpo").beta == 0.1 and O.get("exo_pair").label_smoothing == 1e-3
    assert O.get("ipo").length_normalize is True
    assert O.get("discopop").discopop_tau == 0.05
    s = O.get("simpo")
    assert (s.beta, s.gamma_beta_ratio) == (2.0, 0.5)
    assert O.get("orpo").beta == 0.1 and O.get("cpo").cpo_alpha == 1.0
    for name in EXPECTED - REFERENCE_FREE:
        o = O.get(name)
        assert (o.f_divergence, o.f_alpha, o.use_weighting, o.ld_alpha) == ("reverse_kl", 0.5, False, None)


def test_modifiers_are_keyword_only():
    """dpo's own hyperparameters keep their positions: DPO(beta, label_smoothing)."""
    dpo = O.get_class("dpo")(0.2, 0.1)
    assert (dpo.beta, dpo.label_smoothing) == (0.2, 0.1)
    kw_only = {f.name for f in dataclasses.fields(dpo) if f.kw_only}
    assert kw_only == {"f_divergence", "f_alpha", "use_weighting", "ld_alpha"}


def _batch(B=4, seed=0, ref=True):
    g = torch.Generator().manual_seed(seed)

    def r():
        return -10 * torch.rand(B, generator=g, dtype=torch.float64)

    n = torch.randint(1, 10, (B,), generator=g).to(torch.float64)
    return PairLogps(r(), r(), r() if ref else None, r() if ref else None, n, n + 1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_contract(name):
    """Per-example shape [B], loss = mean, needs_reference declared and enforced, summary and docstring present."""
    obj = O.get(name)
    out = obj(_batch())
    assert out.per_example.shape == (4,)
    assert_close(out.loss, out.per_example.mean())
    assert obj.summary and O.get_class(name).__module__.startswith("prefalign.objectives.")
    assert (name in REFERENCE_FREE) == (not obj.needs_reference)
    if obj.needs_reference:
        with pytest.raises(ValueError, match="needs reference"):
            obj(_batch(ref=False))
    else:
        obj(_batch(ref=False))
    doc = __import__(O.get_class(name).__module__, fromlist=["_"]).__doc__
    assert doc and ("Default" in doc or "default" in doc)


def test_combine_is_the_weighted_sum():
    dpo, sft = O.get("dpo"), O.get("sft")
    both = O.combine([dpo, sft], [1.0, 0.2])
    b = _batch()
    out = both(b)
    assert_close(out.loss, dpo(b).loss + 0.2 * sft(b).loss)
    assert_close(out.per_example, dpo(b).per_example + 0.2 * sft(b).per_example)
    assert both.needs_reference and both.needs() == O.Needs()
    assert {"loss/dpo", "loss/sft", "rewards/margins"} <= set(out.metrics)


def test_combine_collects_needs():
    both = O.combine([O.get("simpo"), O.get("sft", use_weighting=True)], [1.0, 1.0])
    assert not both.needs_reference and both.needs() == O.Needs(False, ("log_sum_sq",))
    three = O.combine([O.get("dpo", ld_alpha=0.5), O.get("sparsepo"), O.get("cringe", k=2)], [1.0, 1.0, 1.0])
    n = three.needs()
    assert n.reference and n.ref_features == ("token_logps", "states") and n.live_reference
    assert [str(f) for f in n.policy_features] == ["token_kl", "topk(k=3)", "target_ids"]
    with pytest.raises(ValueError, match="topk"):  # one top-k per forward pass
        O.combine([O.get("cringe", k=2), O.get("cringe", k=3)], [1.0, 1.0])
    kto = O.combine([O.get("kto"), O.get("kto", desirable_weight=2.0)], [1.0, 1.0])
    assert kto.needs().row_options == {"mismatched": True}


def test_every_objective_is_in_the_docs_table():
    doc = Path(__file__).resolve().parents[2] / "docs" / "objectives.md"
    text = doc.read_text()
    for name in O.names():
        if O.get_class(name).__module__.startswith("tests."):  # registered by a test (the extension seam)
            continue
        assert f"| `{name}` |" in text, f"docs/objectives.md has no row for {name}"


def test_prepare_values_are_checked_and_attached():
    """``prepare`` returns one value per example ([N] or [N, M]); the forward step's helpers check the shape and put
    the rows of a batch into its extras; BCO prepares nothing without UDM."""
    from types import SimpleNamespace

    from prefalign.train.forward import attach_extras, prepare_extras

    class Toy(O.Objective):
        name = "toy_prepare"

        def __init__(self, values):
            self.values = values

        def prepare(self, ctx):
            return self.values

    ctx = O.PrepareContext(None, None, examples=[object()] * 3, config=None, accelerator=None, cache_dir="")
    vals = prepare_extras(Toy({"w": torch.tensor([1.0, 2.0, 3.0]), "m": torch.arange(6.0).view(3, 2)}), ctx)
    batch = attach_extras(SimpleNamespace(extras={"pref_prob": torch.ones(2)}), vals, [2, 0])
    assert batch.extras["w"].tolist() == [3.0, 1.0] and batch.extras["m"].tolist() == [[4.0, 5.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="one value per example"):
        prepare_extras(Toy({"w": torch.ones(2)}), ctx)
    with pytest.raises(ValueError, match="clashes"):
        attach_extras(SimpleNamespace(extras={"w": torch.ones(2)}), vals, [0, 1])
    assert prepare_extras(O.get("bco"), ctx) == {} and prepare_extras(Toy(None), ctx) == {}
