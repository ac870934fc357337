"""Online RL through the engine: the CLI end to end, diagnostics, exact accumulation invariance, kill -9 + --resume
bit-identical (during the rollout and between the μ updates of one rollout), and one-line config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from prefalign.train.config import TrainConfig, save
from prefalign.train.loop import train
from tests.launch import accelerate_launch

REWARD = "tests.online.rewards_stub:vowels"


def _prompts(path, n=8, answers=False):
    rows = [{"prompt": f"Write about item {i}.", **({"answer": str(i % 3)} if answers and i % 4 else {})}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), output_dir=str(out), dtype="fp32", objective="grpo",
                reward=REWARD, beta=0.0, num_generations=4, max_new_tokens=6, batch_size=2, max_steps=2,
                report_to=[], progress=False, learning_rate=1e-2, lr_scheduler="constant", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _cli(cfg_path, *extra, env=None):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})}
    return subprocess.run([sys.executable, "-m", "prefalign", "train", "--config", str(cfg_path), *extra],
                          capture_output=True, text=True, env=env, timeout=600)


def _weights(out):
    return load_file(str(out / "model.safetensors"))


def test_cli_grpo_with_kl_end_to_end(tiny_model_dir, tmp_path):
    """`prefalign train` with method auto → online (objective grpo), β > 0 (a reference copy): the diagnostics are
    logged, samples.jsonl holds the completions with their rewards, and the output is a loadable model."""
    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl"), tmp_path / "out", beta=0.04, sample_log_steps=1)
    save(cfg, tmp_path / "c.yaml")
    p = _cli(tmp_path / "c.yaml")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]
    for key in ("reward", "reward_std", f"reward/{REWARD}", "frac_reward_zero_std", "completion_length",
                "truncated_fraction", "kl/k1", "kl/k2", "kl/k3", "clip_ratio/region", "entropy", "grad_norm",
                "sampler/logq_gap"):
        assert key in first, key
    assert first["kl/k3"] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is the reference
    assert first["sampler/logq_gap"] < 1e-4  # the sampler's log q = the training path's log-probs
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 8 // 2 * 4 // 2 or len(samples) > 0
    assert {"prompt", "completion", "reward", "advantage", "tokens"} <= set(samples[0])
    summary = json.loads((tmp_path / "out" / "run_complete.json").read_text())
    assert summary["method"] == "online" and summary["algorithm"] == "grpo" and summary["reference"] == "copy"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_accumulation_split_leaves_the_update_unchanged(tiny_model_dir, tmp_path, loss_type):
    """4 prompts per step as 1 micro-batch of 4, 2 × 2 (accumulation) or 4 × 1: the same weights after two steps
    (the rollout does not depend on the split; every normaliser counts units over the global batch). AdamW with
    ε = lr = 1e4 makes each update the gradient itself (√v̂ ≪ ε), so a wrong *scale* would show too — plain Adam
    is invariant to a constant factor and would hide it."""
    data = _prompts(tmp_path / "p.jsonl")
    outs = []
    for bs, ga in ((4, 1), (2, 2), (1, 4)):
        cfg = _cfg(tiny_model_dir, data, tmp_path / f"o{bs}", batch_size=bs, gradient_accumulation_steps=ga,
                   objective_args={"loss_type": loss_type}, max_new_tokens=5, memory_probe=False,
                   learning_rate=1e4, adam_epsilon=1e4)
        outs.append(_weights(train(cfg)))
    for other in outs[1:]:
        for k in outs[0]:
            torch.testing.assert_close(other[k], outs[0][k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("algo,extra", [("rloo", {}), ("reinforce_pp", {}), ("ppo", {}), ("online_dpo", {}), ("fdpg", {}),
                                        ("grpo", {"objective_args": {"importance_sampling_level": "sequence"}})])
def test_every_algorithm_trains(tiny_model_dir, tmp_path, algo, extra):
    """Each registered algorithm runs a step on the engine and changes the weights."""
    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl"), tmp_path / "o", objective=algo, beta=0.05,
               max_steps=1, memory_probe=False, **extra)
    out = train(cfg)
    before = _weights(tiny_model_dir) if (tiny_model_dir / "model.safetensors").exists() else None
    after = _weights(out)
    if before is not None:
        assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_columns_reach_the_reward_and_none_is_not_judged(tiny_model_dir, tmp_path):
    """A reward reading the rows' ``answer`` column; rows without one are not judged (judged_fraction < 1)."""
    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl", answers=True), tmp_path / "o",
               reward="tests.online.rewards_stub:answer_in", max_steps=1, memory_probe=False, batch_size=4)
    out = train(cfg)
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < m["judged_fraction"] < 1


@pytest.mark.slow
@pytest.mark.parametrize("fault,mu", [("rollout:2", 1), ("after_step:3", 2)])
def test_kill9_then_resume_is_bit_identical(tiny_model_dir, tmp_path, fault, mu):
    """kill -9 while sampling, and between the μ = 2 updates of one rollout (the buffer is in the checkpoint):
    --resume gives the weights of the straight run, bit for bit."""
    data = _prompts(tmp_path / "p.jsonl")
    for name in ("straight", "broken"):
        cfg = _cfg(tiny_model_dir, data, tmp_path / name, max_steps=6, save_steps=1, num_iterations=mu,
                   gradient_accumulation_steps=2, batch_size=1, memory_probe=False)
        save(cfg, tmp_path / f"{name}.yaml")
    assert _cli(tmp_path / "straight.yaml").returncode == 0
    p = _cli(tmp_path / "broken.yaml", env={"PREFALIGN_FAULT": fault})
    assert p.returncode == -9, p.stderr[-2000:]
    p = _cli(tmp_path / "broken.yaml", "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "broken")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("change,needle", [
    ({"reward": None}, "needs a reward"),
    ({"objective_args": {"epsilonn": 0.3}}, "no hyperparameter 'epsilonn'"),
    ({"beta": 0.1, "reference": "none"}, "needs a live reference"),
    ({"reward": "no_such_module_xyz:f"}, "cannot import module"),
    ({"reward": "0.5*vader +"}, "reward"),
])
def test_bad_online_configs_are_one_line_errors(tiny_model_dir, tmp_path, change, needle, capsys):
    """Through the CLI's entry point in-process (the subprocess path is the end-to-end test's): exit 2, one line."""
    from prefalign.cli import main

    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl"), tmp_path / "o", **change)
    save(cfg, tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and err[-1].startswith("error: ")
    assert not (tmp_path / "o" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_train(tiny_model_dir, tmp_path, sharding):
    """Two CPU processes (gloo): each samples its own prompts' groups, the normaliser counts the global batch, and
    the run ends with an ordinary model folder (FSDP: generation gathers the root shards; every process runs the
    same number of decoding steps)."""
    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl"), tmp_path / "o", sharding=sharding, beta=0.04,
               memory_probe=False, batch_size=1, max_new_tokens=5)
    save(cfg, tmp_path / "c.yaml")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    p = subprocess.run([*accelerate_launch(2), "-m", "prefalign", "train", "--config", str(tmp_path / "c.yaml")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    done = json.loads((tmp_path / "o" / "run_complete.json").read_text())
    assert done["processes"] == 2 and done["sharding"] == sharding
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "o")


def test_lora_policy_with_the_adapter_as_reference(tiny_model_dir, tmp_path):
    """LoRA: the reference is the base model with the adapter off (no second model); at the first rollout the
    policy is the reference, so every KL estimator reads 0; the adapter is what is saved."""
    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl"), tmp_path / "o", lora=True, lora_r=4, beta=0.04,
               max_steps=2, memory_probe=False)
    out = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl/k3"] == pytest.approx(0.0, abs=1e-7) and rows[0]["kl/k1"] == pytest.approx(0.0, abs=1e-7)
    assert json.loads((out / "run_complete.json").read_text())["reference"] == "adapter"
    assert (out / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("lora", [False, True])
def test_reference_log_probs_are_at_the_sampling_temperature(tiny_model_dir, tmp_path, lora):
    """temperature 0.7: the reference (copy, or the adapter off) scores the samples under the same tempered
    distribution as the policy, so at the first rollout every KL estimator is 0 (at temperature 1 for the
    reference, k1 would read log π_T − log π_1 ≠ 0)."""
    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl"), tmp_path / "o", beta=0.04, temperature=0.7,
               max_steps=1, memory_probe=False, lora=lora, lora_r=4)
    out = train(cfg)
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(m["kl/k1"]) < 1e-6 and abs(m["kl/k3"]) < 1e-6
