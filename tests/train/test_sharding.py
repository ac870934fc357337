"""Sharded training (FSDP2 over gloo, two CPU processes): the same weights as one process with the same global
batch, for full fine-tuning and LoRA; kill -9 mid-run then --resume equals the straight sharded run; the output is an
ordinary Hugging Face folder.

Tolerance: 1e-6 (fp32). Sharding changes only the order of floating-point sums (each process reduces its half of
the batch, then the reduce-scatter averages), so the weights agree to rounding — measured max gap ≈ 2e-8 after two
AdamW steps, far inside the tolerance — while a wrong gradient scale or a missing shard would be off by ~1e-3.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prefalign.train.config import save
from tests.launch import accelerate_launch

from .helpers import config, read_metrics, write_pairs
from .test_resume_and_dist import _cli, _run


def _launch(cfg_path, *extra, env=None, check=True):
    # On a CPU-only machine accelerate starts several processes only through its torchrun path (--multi_gpu).
    return _run([*accelerate_launch(2), "-m", "prefalign", "train", "--config", str(cfg_path), *extra], env, check)


def _weights(out, lora: bool) -> dict[str, torch.Tensor]:
    return load_file(str(out / ("adapter_model.safetensors" if lora else "model.safetensors")))


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_fsdp_two_processes_equal_one(tiny_model_dir, tmp_path, lora):
    from transformers import AutoModelForCausalLM

    data = write_pairs(tmp_path / "d.jsonl", n=16)
    # max_grad_norm far below the gradient norm: clipping is active, so the sharded clip is compared too.
    kw = dict(max_steps=2, adam_epsilon=1e-4, lora=lora, lora_r=4, learning_rate=1e-2 if lora else 1e-3,
              max_grad_norm=1e-3)
    save(config(tiny_model_dir, data, tmp_path / "one", batch_size=4, **kw), tmp_path / "one.yaml")
    save(config(tiny_model_dir, data, tmp_path / "two", batch_size=2, sharding="fsdp", **kw), tmp_path / "two.yaml")
    _cli(tmp_path / "one.yaml")
    _launch(tmp_path / "two.yaml")
    done = json.loads((tmp_path / "two" / "run_complete.json").read_text())
    assert done["processes"] == 2 and done["sharding"] == "fsdp"
    a, b = _weights(tmp_path / "one", lora), _weights(tmp_path / "two", lora)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert lora or not torch.equal(a["model.norm.weight"], base["model.norm.weight"])  # it trained
    la, lb = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [round(m["loss"], 5) for m in la] == [round(m["loss"], 5) for m in lb]
    assert all(m["grad_norm"] > 1e-3 for m in lb)  # the clip really scaled the gradients
    assert [m["grad_norm"] for m in lb] == pytest.approx([m["grad_norm"] for m in la], rel=1e-4)
    if lora:
        from peft import PeftModel

        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "two")
    else:  # the sharded run's output is an ordinary model folder
        AutoModelForCausalLM.from_pretrained(tmp_path / "two")


@pytest.mark.slow
def test_fsdp_kill_and_resume_equals_straight_run(tiny_model_dir, tmp_path):
    """Checkpoints hold full tensors gathered from the shards; resuming re-shards them: bit for bit the same."""
    data = write_pairs(tmp_path / "d.jsonl", n=16)
    kw = dict(max_steps=5, save_steps=2, batch_size=2, sharding="fsdp")
    for name in ("straight", "broken"):
        save(config(tiny_model_dir, data, tmp_path / name, **kw), tmp_path / f"{name}.yaml")
    _launch(tmp_path / "straight.yaml")
    assert _launch(tmp_path / "broken.yaml", env={"PREFALIGN_FAULT": "after_step:3"}, check=False).returncode != 0
    assert (tmp_path / "broken" / "checkpoints" / "step-2").is_dir()
    _launch(tmp_path / "broken.yaml", "--resume")
    a, b = _weights(tmp_path / "straight", False), _weights(tmp_path / "broken", False)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_mixed_precision_bf16_tracks_fp32(tiny_model_dir, tmp_path, sharding):
    """mixed_precision: bf16 (autocast in one process; FSDP's MixedPrecisionPolicy when sharded): fp32 weights and
    optimizer state, bf16 compute — the losses follow the fp32 run to bf16 accuracy and the saved weights are fp32."""
    data = write_pairs(tmp_path / "d.jsonl", n=16)
    kw = dict(max_steps=3, batch_size=4 if sharding == "none" else 2, sharding=sharding)
    save(config(tiny_model_dir, data, tmp_path / "fp32", batch_size=4, max_steps=3), tmp_path / "fp32.yaml")
    save(config(tiny_model_dir, data, tmp_path / "bf16", mixed_precision="bf16", **kw), tmp_path / "bf16.yaml")
    _cli(tmp_path / "fp32.yaml")
    (_cli if sharding == "none" else _launch)(tmp_path / "bf16.yaml")
    la = [m["loss"] for m in read_metrics(tmp_path / "fp32")]
    lb = [m["loss"] for m in read_metrics(tmp_path / "bf16")]
    assert len(lb) == 3 and lb != la  # bf16 compute really ran
    assert max(abs(a - b) for a, b in zip(la, lb)) < 2e-2
    assert all(t.dtype == torch.float32 for t in _weights(tmp_path / "bf16", False).values())
