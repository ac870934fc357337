"""Faults never lose work or give a silent wrong result: signals, NaN, a failing disk, bad resumes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from prefalign.errors import UserError
from prefalign.train.config import save

from .train.helpers import config, read_metrics, write_pairs


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "prefalign", "train", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture
def run_cfg(tiny_model_dir, tmp_path):
    def make(name, **kw):
        data = write_pairs(tmp_path / "d.jsonl", n=16)
        cfg = config(tiny_model_dir, data, tmp_path / name, **{"max_steps": 6, "save_steps": 2, **kw})
        save(cfg, tmp_path / f"{name}.yaml")
        return tmp_path / f"{name}.yaml", tmp_path / name
    return make


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_finishes_step_checkpoints_and_resumes_exactly(run_cfg, sig):
    straight_yaml, straight = run_cfg("straight")
    assert _cli("--config", straight_yaml).returncode == 0
    yaml, out = run_cfg("stopped")
    p = _cli("--config", yaml, env={"PREFALIGN_FAULT": f"after_step:3:{sig}"})
    assert p.returncode == 128 + getattr(__import__("signal"), sig), p.stderr
    assert "after step 3" in p.stderr and "--resume" in p.stderr and "Traceback" not in p.stderr
    assert (out / "checkpoints" / "step-3").is_dir()
    assert _cli("--config", yaml, "--resume").returncode == 0
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_stops_names_step_and_rows_and_keeps_last_checkpoint(run_cfg):
    yaml, out = run_cfg("nan")
    p = _cli("--config", yaml, env={"PREFALIGN_FAULT": "nan:5"})
    assert p.returncode == 3, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "step 5: loss is NaN/inf on rows [" in line and "last good checkpoint is kept" in line
    assert [c.name for c in sorted((out / "checkpoints").iterdir())] == ["step-2", "step-4"]
    assert not (out / "run_complete.json").exists()


def test_nan_policy_skip_counts_and_continues(run_cfg):
    yaml, out = run_cfg("skip", nan_policy="skip")
    p = _cli("--config", yaml, env={"PREFALIGN_FAULT": "nan:2"})
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "run_complete.json").read_text())["nan_skipped"] == 1
    assert all(m["step"] != 2 for m in read_metrics(out))


def test_full_disk_while_checkpointing_keeps_previous(tiny_model_dir, tmp_path, monkeypatch):
    from prefalign.train import checkpoint
    from prefalign.train.loop import train

    real, calls = checkpoint.save_file, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(checkpoint, "save_file", failing)
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    cfg = config(tiny_model_dir, data, tmp_path / "out", max_steps=6, save_steps=2)
    with pytest.raises(UserError, match="step-4 checkpoint failed .No space left on device.*step-2 is intact"):
        train(cfg, log=lambda *a: None)
    ckpts = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert ckpts == ["step-2"]  # no half-written step-4 or .tmp folder
    assert load_file(str(tmp_path / "out" / "checkpoints" / "step-2" / "trainable.safetensors"))


def test_resume_with_a_different_config_is_refused(run_cfg):
    yaml, out = run_cfg("a")
    assert _cli("--config", yaml, env={"PREFALIGN_FAULT": "after_checkpoint:2"}).returncode == -9
    p = _cli("--config", yaml, "--resume", "--beta", "0.3")
    assert p.returncode == 2 and "--resume with a different config (differs in: beta)" in p.stderr


def test_truncated_checkpoint_is_a_clear_error(run_cfg):
    yaml, out = run_cfg("t")
    assert _cli("--config", yaml, env={"PREFALIGN_FAULT": "after_checkpoint:4"}).returncode == -9
    weights = out / "checkpoints" / "step-4" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    p = _cli("--config", yaml, "--resume")
    assert p.returncode == 2 and "checkpoint is corrupted" in p.stderr and "step-4" in p.stderr
    assert "Traceback" not in p.stderr


def test_finished_run_is_not_overwritten(run_cfg):
    yaml, out = run_cfg("f", save_steps=0, max_steps=1)
    assert _cli("--config", yaml).returncode == 0
    before = (out / "model.safetensors").read_bytes()
    p = _cli("--config", yaml)
    assert p.returncode == 2 and "already holds a finished run" in p.stderr
    assert (out / "model.safetensors").read_bytes() == before
    assert _cli("--config", yaml, "--overwrite").returncode == 0


def test_more_bad_inputs(tiny_model_dir, tmp_path):
    good = {"prompt": "Say hi.", "chosen": " Hi!", "rejected": " No."}
    cases = [
        ([{**good, "chosen": None}], "field 'chosen': missing"),
        ([{**good, "chosen": [1, 2]}], "field 'chosen': expected a string like 'prompt', got a list"),
        ([{**good, "prompt": 3}], "field 'prompt': expected a string or a list of messages, got int"),
        ([{"prompt": "x" * 10_000_000, "chosen": " a", "rejected": " b"}], "no usable rows"),
    ]
    for rows, expected in cases:
        data = tmp_path / "d.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        p = _cli("--model", tiny_model_dir, "--data", data, "--output_dir", tmp_path / "o", "--max_length", 64)
        assert p.returncode == 2 and expected in p.stderr and "Traceback" not in p.stderr, (expected, p.stderr)
        assert not (tmp_path / "o").exists()
    import datasets

    datasets.Dataset.from_dict({"prompt": ["a"], "chosen": [1], "rejected": [2]}).to_parquet(str(tmp_path / "d.parquet"))
    p = _cli("--model", tiny_model_dir, "--data", tmp_path / "d.parquet", "--output_dir", tmp_path / "o")
    assert p.returncode == 2 and "field 'chosen': expected a string or a list of messages, got int" in p.stderr
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    (no_tok / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    p = _cli("--model", no_tok, "--data", tmp_path / "d.jsonl", "--output_dir", tmp_path / "o")
    assert p.returncode == 2 and "cannot load a tokenizer" in p.stderr and "Traceback" not in p.stderr
