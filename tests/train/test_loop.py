"""End-to-end training invariants on a tiny model (CPU, fp32)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from prefalign.train.loop import build, train

from .helpers import config, read_metrics, write_pairs


def _quiet(*a, **k):
    pass


def test_step1_loss_is_ln2_and_rewards_zero(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl")
    out = train(config(tiny_model_dir, data, tmp_path / "out", max_steps=1), log=_quiet)
    m = read_metrics(out)[0]
    assert m["step"] == 1
    assert abs(m["loss"] - math.log(2)) < 1e-6
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(m[k]) < 1e-6


@pytest.mark.parametrize("chat", [False, True])
def test_learns_a_learnable_set(tiny_model_dir, tmp_path, chat):
    """Loss falls and preference accuracy rises above 0.9 within 50 steps."""
    data = write_pairs(tmp_path / "d.jsonl", n=32, chat=chat)
    out = train(config(tiny_model_dir, data, tmp_path / "out", max_steps=40, beta=0.5, learning_rate=3e-3,
                       eval_fraction=0.25), log=_quiet)
    ms = read_metrics(out)
    train_ms = [m for m in ms if "loss" in m]
    assert train_ms[-1]["loss"] < train_ms[0]["loss"] - 0.3
    assert ms[-1]["eval/rewards/accuracies"] > 0.9
    assert (out / "model.safetensors").is_file() and (out / "run_complete.json").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def _one_update(model_dir, data, out, bs, ga):
    # Adam's first step is lr·g/(|g|+ε): with the default ε an element whose gradient is ~1e-8 turns rounding
    # differences of the summation order into 1e-6 weight differences, so ε is raised to test the accumulation.
    cfg = config(model_dir, data, out, batch_size=bs, gradient_accumulation_steps=ga, max_steps=1,
                 learning_rate=1e-2, max_grad_norm=0.0, adam_epsilon=1e-4)
    return load_file(str(train(cfg, log=_quiet) / "model.safetensors"))


def test_gradient_accumulation_equivalence(tiny_model_dir, tmp_path):
    """8 × 1, 4 × 2 and 2 × 4 give the same weights after one update (fp32, 1e-6)."""
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    ref = _one_update(tiny_model_dir, data, tmp_path / "a", 8, 1)
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not torch.equal(ref[k], start[k]) for k in ref)  # the update really moved the weights
    for bs, ga in [(4, 2), (2, 4)]:
        got = _one_update(tiny_model_dir, data, tmp_path / f"b{bs}", bs, ga)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def test_precompute_cache_hit_and_miss(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    cache = tmp_path / "cache"
    first = train(config(tiny_model_dir, data, tmp_path / "r1", reference="precompute",
                         reference_cache_dir=str(cache)), log=_quiet)
    import json

    s1 = json.loads((first / "run_complete.json").read_text())
    assert s1["reference_cache_hit"] is False and s1["reference_forward_passes"] == 0
    second = build(config(tiny_model_dir, data, tmp_path / "r2", reference="precompute",
                          reference_cache_dir=str(cache)), log=_quiet)
    assert second.method.ref_cache_hit is True and second.method.reference.model is None
    second.train()
    assert json.loads((tmp_path / "r2" / "run_complete.json").read_text())["reference_forward_passes"] == 0
    # Same losses as a frozen copy, which runs the reference alongside.
    copy_run = train(config(tiny_model_dir, data, tmp_path / "r3", reference="copy"), log=_quiet)
    for a, b in zip(read_metrics(first), read_metrics(copy_run)):
        assert abs(a["loss"] - b["loss"]) < 1e-5
    third = build(config(tiny_model_dir, data, tmp_path / "r4", reference="precompute",
                         reference_cache_dir=str(cache), max_length=500), log=_quiet)
    assert third.method.ref_cache_hit is False


def test_lora_adapter_reference_trains_saves_and_merges(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_pairs(tmp_path / "d.jsonl", n=8)
    out = train(config(tiny_model_dir, data, tmp_path / "out", lora=True, lora_r=4, learning_rate=1e-2,
                       max_steps=3, merge_lora=True), log=_quiet)
    assert (out / "adapter_model.safetensors").is_file()
    assert read_metrics(out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert read_metrics(out)[-1]["loss"] != pytest.approx(math.log(2), abs=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with_adapter = PeftModel.from_pretrained(base, out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 250]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_trains_the_same_run(tiny_model_dir, tmp_path, lora):
    """The config switch only trades compute for memory: same losses, step by step (fp32)."""
    data = write_pairs(tmp_path / "d.jsonl", n=12)
    runs = []
    for ckpt in (False, True):
        out = train(config(tiny_model_dir, data, tmp_path / f"out{ckpt}", max_steps=3, lora=lora,
                           gradient_checkpointing=ckpt), log=_quiet)
        runs.append([m["loss"] for m in read_metrics(out) if "loss" in m])
    assert len(runs[0]) == 3 and runs[0][-1] != runs[0][0]
    assert runs[1] == pytest.approx(runs[0], abs=1e-6)
