"""`prefalign reward train|eval|losses` end to end: a reward model learns an easy synthetic preference, its folder
is a reward anywhere one goes (`prefalign label --reward`), eval writes its report; bad rows and bad configs are one
line and exit 2 with nothing written; kill -9 then --resume is bit-exact."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tests.launch import accelerate_launch

from prefalign.cli import main
from prefalign.reward.cli import resolve
from prefalign.train.config import save


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared CPU, two OpenMP threads on tiny matrices wait on each other (×20 slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ITEMS = ["cat", "dog", "tree", "car", "book", "rain", "sun", "cake", "road", "lamp", "ship", "song"]


def _pairs(path, n=24, **extra):
    rows = [{"prompt": f"Write one sentence about a {ITEMS[i % 12]} number {i}.",
             "chosen": f"The {ITEMS[i % 12]} is good and nice.", "rejected": f"The {ITEMS[i % 12]} is bad and sad.",
             **{k: (v(i) if callable(v) else v) for k, v in extra.items()}} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _flags(model_dir, data, out, **kw):
    base = dict(model=model_dir, data=data, output_dir=out, max_steps=12, batch_size=4, learning_rate=3e-3,
                report_to="[]", progress="false", dtype="fp32", seed=0, memory_probe="false", lr_scheduler="constant")
    base.update(kw)
    return [x for k, v in base.items() for x in (f"--{k}", str(v))]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_reward_train_learns_and_the_folder_is_a_reward_everywhere(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("prefalign.reward.evaluation")
    data = _pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "rm"
    assert main(["reward", "train", *_flags(tiny_model_dir, data, out)]) == 0
    cfg = (out / "config.yaml").read_text()
    assert "method: reward" in cfg and "objective: bt" in cfg and "learning_rate: 0.003" in cfg
    losses = [m["loss"] for m in _metrics(out)]
    assert abs(losses[0] - math.log(2)) < 0.05  # a new head scores ≈ 0: BT starts at ln 2
    assert losses[-1] < 0.3 < losses[0]

    # held-out-style report on the training pairs: accuracy far above chance, report files, temperature saved
    report = tmp_path / "report"
    assert main(["reward", "eval", "--model", str(out), "--data", data, "--out", str(report), "--save-temperature",
                 "--dtype", "fp32"]) == 0
    for f in ("report.md", "metrics.json", "reliability.png", "distribution.png"):
        assert (report / f).is_file() and (report / f).stat().st_size > 0, f
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9 and metrics["n_pairs"] == 24
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["temperature"] == pytest.approx(metrics["temperature"]) and stats["rows_of"] == "train"
    assert "Calibration" in (report / "report.md").read_text()

    # `prefalign label --reward FOLDER`: the trained model picks the good completion as chosen
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"prompt": f"Write one sentence about a {w}.", "chat": True,
                                           "completions": [f"The {w} is bad and sad.", f"The {w} is good and nice."]})
                               + "\n" for w in ("fox", "hill", "boat")))
    labelled = tmp_path / "labelled.jsonl"
    assert main(["label", "--samples", str(samples), "--reward", str(out), "--out", str(labelled),
                 "--dtype", "fp32"]) == 0
    rows = [json.loads(line) for line in labelled.read_text().splitlines()]
    assert len(rows) == 3 and all("good" in json.dumps(r["chosen"]) for r in rows)
    capsys.readouterr()
    assert main(["reward", "losses"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("bt", "mse", "multihead", "more", "pal", "prm"))


def test_reward_defaults_and_overrides(tmp_path):
    cfg = resolve(None, ["--model", "m", "--data", "d.jsonl"])
    assert (cfg.method, cfg.objective, cfg.learning_rate) == ("reward", "bt", 1e-4)  # TRL's RewardTrainer defaults
    assert resolve(None, ["--learning_rate", "5e-5", "--objective", "mse"]).learning_rate == 5e-5
    (tmp_path / "c.yaml").write_text("objective: prm\nobjective_args: {reduction: row}\n")
    assert resolve(str(tmp_path / "c.yaml"), []).objective_args == {"reduction": "row"}


BAD = [
    ("missing rejected", dict(rows=[{"prompt": "a", "chosen": "b"}]), "field 'rejected': missing"),
    ("margin not a number", dict(extra={"margin": "big"}), "field 'margin': expected a finite number"),
    ("source of a wrong type", dict(extra={"source": [1]}), "field 'source': expected a non-empty string"),
    ("not a reward loss", dict(flags={"objective": "dpo"}), "objective 'dpo' is not a reward-model loss"),
    ("unknown hyperparameter", dict(flags={"objective_args": "{nope: 1}"}), "has no hyperparameter 'nope'"),
    ("more needs a source", dict(flags={"objective": "more"}), "field 'source': missing (loss 'more' reads it)"),
    ("rows of another kind", dict(only=[{"prompt": "a", "completion": "b", "score": 1}] * 3),
     "rows look like scored rows (prompt, completion, score (or scores)), but objective 'bt' reads pairs rows"),
    ("a config value", dict(flags={"learning_rate": "-1"}), "'learning_rate' must be >= 0"),
    ("a reference", dict(flags={"reference": "copy"}), "a reward model has no reference"),
    ("another method", dict(yaml="method: preference\n"), "`prefalign reward train` trains reward models"),
]


@pytest.mark.parametrize("case, spec, message", BAD, ids=[b[0] for b in BAD])
def test_bad_rows_and_configs_are_one_line_exit_2_and_write_nothing(tiny_model_dir, tmp_path, capsys, case, spec,
                                                                      message):
    data = tmp_path / "d.jsonl"
    if "rows" in spec or "only" in spec:
        rows = spec.get("only") or [{"prompt": "p", "chosen": "good", "rejected": "bad"}] * 3 + spec["rows"]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        _pairs(data, n=6, **spec.get("extra", {}))
    out = tmp_path / "out"
    argv = ["reward", "train", *_flags(tiny_model_dir, str(data), str(out), **spec.get("flags", {}))]
    if "yaml" in spec:
        (tmp_path / "c.yaml").write_text(spec["yaml"])
        argv += ["--config", str(tmp_path / "c.yaml")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in "\n".join(err), err[-3:]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()  # nothing half-written


def _subprocess(args, env):
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "prefalign", *args], capture_output=True, text=True, env=full,
                          timeout=600)


def test_resume_after_kill_9_is_bit_exact(tiny_model_dir, tmp_path):
    """PAL (the loss owns parameters) on 6 steps, checkpoints every 2: killed (-9) right after step 3, then
    --resume from the step-2 checkpoint — the same model and the same loss module as a straight run."""
    data = _pairs(tmp_path / "d.jsonl", n=12, user_id=lambda i: f"u{i % 2}")
    kw = dict(objective="pal", objective_args="{num_prototypes: 2, dim: 4}", max_steps=6, save_steps=2,
              batch_size=2, gradient_accumulation_steps=2, learning_rate=2e-3)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(["reward", "train", *_flags(tiny_model_dir, str(data), str(straight), **kw)]) == 0
    cfg = resolve(None, _flags(tiny_model_dir, str(data), str(broken), **kw))
    save(cfg, tmp_path / "broken.yaml")
    p = _subprocess(["reward", "train", "--config", str(tmp_path / "broken.yaml")],
                    {"PREFALIGN_FAULT": "after_step:3"})
    assert p.returncode == -9, p.stderr[-2000:]
    assert not (broken / "run_complete.json").exists() and (broken / "checkpoints" / "step-2").is_dir()
    assert main(["reward", "train", "--config", str(tmp_path / "broken.yaml"), "--resume"]) == 0
    for f in ("model.safetensors", "objective.safetensors"):
        a, b = load_file(str(straight / f)), load_file(str(broken / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert [m["step"] for m in _metrics(broken)][-1] == 6
    assert json.loads((broken / "reward_stats.json").read_text()) == json.loads(
        (straight / "reward_stats.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_equal_one(tiny_model_dir, tmp_path, sharding):
    """accelerate launch --num_processes 2 (CPU, gloo; DDP, or FSDP2 with LoRA) = one process with the same global
    batch: the reward model goes through the engine's Scorer like every other method."""
    data = _pairs(tmp_path / "d.jsonl", n=8)
    lora = {"lora": "true", "lora_r": 4} if sharding == "fsdp" else {}
    kw = dict(max_steps=2, adam_epsilon=1e-4, learning_rate=1e-3, **lora)
    assert main(["reward", "train", *_flags(tiny_model_dir, data, str(tmp_path / "one"), batch_size=4, **kw)]) == 0
    save(resolve(None, _flags(tiny_model_dir, data, str(tmp_path / "two"), batch_size=2, sharding=sharding, **kw)),
         tmp_path / "two.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*accelerate_launch(2), "-m", "prefalign", "reward", "train", "--config",
                        str(tmp_path / "two.yaml")], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    done = json.loads((tmp_path / "two" / "run_complete.json").read_text())
    assert (done["processes"], done["sharding"]) == (2, sharding)
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
