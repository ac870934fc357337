"""Resume after kill -9 continues exactly; two processes under accelerate equal one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from prefalign.train.config import save
from tests.launch import accelerate_launch

from .helpers import config, read_metrics, write_pairs


def _run(args, env_extra=None, check=True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr[-3000:]}")
    return p


def _cli(cfg_path, *extra, env=None, check=True):
    return _run([sys.executable, "-m", "prefalign", "train", "--config", str(cfg_path), *extra], env, check)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["after_step:1", "after_step:3", "accumulated:4", "before_checkpoint:6",
                                   "mid_checkpoint:4", "after_checkpoint:4"])
def test_resume_after_kill_is_bitwise_identical(tiny_model_dir, tmp_path, fault):
    """8 steps straight vs kill -9 then --resume: identical weights (CPU fp32). Moments: early (step 1, before any
    checkpoint: the resume starts over), mid-epoch after a step, between accumulated micro-batches and the update,
    just before, during and right after a checkpoint write."""
    data = write_pairs(tmp_path / "d.jsonl", n=16)
    straight = config(tiny_model_dir, data, tmp_path / "straight", max_steps=8, save_steps=2,
                      gradient_accumulation_steps=2, batch_size=2, lr_scheduler="cosine", warmup_steps=2)
    save(straight, tmp_path / "straight.yaml")
    _cli(tmp_path / "straight.yaml")
    broken = config(tiny_model_dir, data, tmp_path / "broken", max_steps=8, save_steps=2,
                    gradient_accumulation_steps=2, batch_size=2, lr_scheduler="cosine", warmup_steps=2)
    save(broken, tmp_path / "broken.yaml")
    p = _cli(tmp_path / "broken.yaml", env={"PREFALIGN_FAULT": fault}, check=False)
    assert p.returncode == -9, p.stderr[-2000:]
    assert not (tmp_path / "broken" / "run_complete.json").exists()
    _cli(tmp_path / "broken.yaml", "--resume")
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "broken" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [m["step"] for m in read_metrics(tmp_path / "broken")][-1] == 8


@pytest.mark.slow
def test_two_processes_equal_one(tiny_model_dir, tmp_path):
    """accelerate launch --num_processes 2 (CPU, gloo) = one process with the same global batch."""
    data = write_pairs(tmp_path / "d.jsonl", n=16)
    one = config(tiny_model_dir, data, tmp_path / "one", max_steps=2, batch_size=4, adam_epsilon=1e-4)
    two = config(tiny_model_dir, data, tmp_path / "two", max_steps=2, batch_size=2, adam_epsilon=1e-4)
    save(one, tmp_path / "one.yaml")
    save(two, tmp_path / "two.yaml")
    _cli(tmp_path / "one.yaml")
    # On a CPU-only machine accelerate starts several processes only through its torchrun path (--multi_gpu).
    _run([*accelerate_launch(2), "-m", "prefalign", "train", "--config", str(tmp_path / "two.yaml")])
    assert json.loads((tmp_path / "two" / "run_complete.json").read_text())["processes"] == 2
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    la, lb = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [round(m["loss"], 5) for m in la] == [round(m["loss"], 5) for m in lb]


def straight_vs_resumed(model_dir, data, tmp_path, fault: str = "after_step:3", **kw):
    """The same config run straight and killed (-9) at ``fault`` then ``--resume``d; returns both output folders."""
    for name in ("straight", "broken"):
        save(config(model_dir, data, tmp_path / name, **kw), tmp_path / f"{name}.yaml")
    _cli(tmp_path / "straight.yaml")
    assert _cli(tmp_path / "broken.yaml", env={"PREFALIGN_FAULT": fault}, check=False).returncode == -9
    _cli(tmp_path / "broken.yaml", "--resume")
    return tmp_path / "straight", tmp_path / "broken"


def same_tensors(a_dir, b_dir, file: str) -> bool:
    a, b = load_file(str(a_dir / file)), load_file(str(b_dir / file))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cringe_resume_is_bitwise_identical(tiny_model_dir, tmp_path):
    """Cringe samples its contrast tokens from torch's global RNG, which the checkpoint carries: kill -9 after step 3
    and --resume gives the same weights as a straight run."""
    data = write_pairs(tmp_path / "d.jsonl", n=16)
    a, b = straight_vs_resumed(tiny_model_dir, data, tmp_path, max_steps=6, save_steps=2, batch_size=2,
                               objective="cringe", learning_rate=5e-3)
    assert same_tensors(a, b, "model.safetensors")
