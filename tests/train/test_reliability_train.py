"""Issue 16, the training side, through the CLI (``prefalign.cli.main``): every refusal is exit 2, one line
``error: …``, no traceback, and the output folder (and every input) as it was.

Classes: 1 config ranges and conflicts, 5 output folder vs inputs, 6 one run per output folder, 7 resume safety,
9 conventions (weight decay, kto with batch_size 1, metrics over zero rows).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prefalign.cli import main
from prefalign.train.config import save

from .helpers import config, read_metrics, write_pairs


# --- helpers ---------------------------------------------------------------------------------------------------
def _train(capsys, *args) -> tuple[int, str]:
    rc = main(["train", *map(str, args)])
    return rc, capsys.readouterr().err


def _refused(capsys, *args) -> str:
    """Run ``prefalign train`` expecting a refusal: exit 2, one ``error:`` line, no traceback; that line."""
    rc, err = _train(capsys, *args)
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _snapshot(folder: Path) -> dict | None:
    """{relative path: sha256} of every file under ``folder`` (None when it does not exist)."""
    folder = Path(folder)
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _yaml(tmp_path, model_dir, data, out, name="run.yaml", **kw) -> Path:
    kw = {"memory_probe": False, **kw}
    path = tmp_path / name
    save(config(model_dir, data, out, **kw), path)
    return path


def _write_unpaired(path: Path, n: int = 8, labels=None) -> Path:
    rows = []
    for i in range(n):
        label = labels[i % len(labels)] if labels else i % 2 == 0
        rows.append({"prompt": f"Say something about item {i}.",
                     "completion": f" Item {i} is {'good' if label else 'bad'}.", "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A private copy of the tiny model (tests here point output_dir at it or change its weights)."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


# --- class 1: config ranges and conflicts -----------------------------------------------------------------------
RANGE_CASES = [
    (["--num_epochs", "0"], "'num_epochs' must be > 0, got 0.0"),
    (["--num_epochs", "-1"], "'num_epochs' must be > 0"),
    (["--warmup_steps", "-1"], "'warmup_steps' must be >= 0, got -1"),
    (["--logging_steps", "0"], "'logging_steps' must be >= 1, got 0"),
    (["--save_steps", "-2"], "'save_steps' must be >= 0, got -2"),
    (["--eval_steps", "-1"], "'eval_steps' must be >= 0"),
    (["--save_total_limit", "-1"], "'save_total_limit' must be >= 0"),
    (["--gradient_accumulation_steps", "0"], "'gradient_accumulation_steps' must be >= 1"),
    (["--adam_beta1", "1.0"], "'adam_beta1' must be in [0, 1), got 1.0"),
    (["--adam_beta2", "-0.1"], "'adam_beta2' must be in [0, 1), got -0.1"),
    (["--adam_epsilon", "-1e-8"], "'adam_epsilon' must be >= 0"),
    (["--weight_decay", "-0.01"], "'weight_decay' must be >= 0, got -0.01"),
    (["--max_grad_norm", "-1"], "'max_grad_norm' must be >= 0"),
    (["--lora_dropout", "1"], "'lora_dropout' must be in [0, 1), got 1.0"),
    (["--lora_dropout", "-0.1"], "'lora_dropout' must be in [0, 1)"),
    (["--lora_alpha", "-8"], "'lora_alpha' must be > 0, got -8"),
    (["--lora_r", "0"], "'lora_r' must be >= 1"),
    (["--beta", ".inf"], "'beta' must be a finite number, got inf"),
    (["--beta", "nan"], "'beta' must be a finite number, got nan"),
    (["--learning_rate", "inf"], "'learning_rate' must be a finite number"),
    (["--warmup_ratio", "1.5"], "'warmup_ratio' must be in [0, 1], got 1.5"),
    (["--seed", "-1"], "'seed' must be >= 0"),
    (["--objective", "[dpo, sft]", "--objective_weights", "[1, -1]"], "'objective_weights' items must each be >= 0"),
    (["--report_to", "[tensorboard, wandbb]"], "'report_to' names 'wandbb', which is not one of tensorboard, wandb"),
]

CONFLICT_CASES = [
    (["--merge_lora"], "merge_lora is set but lora is not"),
    (["--eval_data", "{data}", "--eval_fraction", "0.1"], "eval_data and eval_fraction are both set"),
    (["--warmup_steps", "2", "--warmup_ratio", "0.1"], "warmup_steps and warmup_ratio are both set"),
    (["--eval_steps", "2"], "eval_steps is set but there is no eval data"),
    (["--objective_args", "{beta: 0.2}"], "beta is given twice: as the beta field and in objective_args"),
    (["--objective", "[dpo, kto]"], "objectives read different kinds of rows (dpo: paired, kto: unpaired)"),
    (["--objective", "kto", "--batch_size", "1"], "objective 'kto' with batch_size 1: its KL reference point"),
    (["--lora", "--lora_target_modules", "[q_proj, qq_proj]"], "lora_target_modules 'qq_proj' match no module"),
    (["--lora", "--lora_target_modules", "nothing_like_this"], "'nothing_like_this' match no module"),
    (["--objective_args", "{a: 1, a: 2}"], "--objective_args: key 'a' is given twice (line 1)"),
]


@pytest.mark.parametrize("extra,expected", RANGE_CASES + CONFLICT_CASES,
                         ids=[" ".join(a) for a, _ in RANGE_CASES + CONFLICT_CASES])
def test_config_ranges_and_conflicts_are_one_line_errors(capsys, tiny_model_dir, tmp_path, extra, expected):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    out = tmp_path / "out"
    extra = [a.replace("{data}", str(data)) for a in extra]
    line = _refused(capsys, "--config", _yaml(tmp_path, tiny_model_dir, data, out), *extra)
    assert expected in line, line
    assert not out.exists()


def test_the_ranges_live_in_the_metadata_and_are_checked_for_api_callers_too(tiny_model_dir, tmp_path):
    import dataclasses

    from prefalign.errors import UserError
    from prefalign.train.config import TrainConfig, check
    from prefalign.train.loop import train

    meta = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}
    for name in ("num_epochs", "warmup_steps", "logging_steps", "save_steps", "adam_beta1", "adam_beta2",
                 "weight_decay", "lora_dropout", "lora_alpha", "beta", "batch_size", "eval_fraction"):
        assert "range" in meta[name], name
    for name, m in meta.items():  # --help says each range
        assert "range" not in m or m["range"] in m["help"], name
    check(TrainConfig())  # the defaults pass
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    with pytest.raises(UserError, match="'adam_beta2' must be in"):
        train(config(tiny_model_dir, data, tmp_path / "out", adam_beta2=1.0), log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_yaml_with_a_duplicated_key_names_the_key_and_lines(capsys, tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    path = tmp_path / "dup.yaml"
    path.write_text(f"model: {tiny_model_dir}\ndata: {data}\nbeta: 0.1\noutput_dir: {tmp_path / 'out'}\n"
                    "objective_args:\n  dpo: {}\nbeta: 0.5\n")
    line = _refused(capsys, "--config", path)
    assert f"error: {path}: key 'beta' is given twice (line 3 and line 7)" in line
    path.write_text("objective_args:\n  kto:\n    desirable_weight: 1.0\n    desirable_weight: 2.0\n")
    assert "key 'desirable_weight' is given twice (line 3 and line 4)" in _refused(capsys, "--config", path)
    assert not (tmp_path / "out").exists()


# --- class 5: the output folder and the inputs ------------------------------------------------------------------
def test_output_dir_that_is_the_model_is_refused_even_with_overwrite(capsys, model_copy, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    before = _snapshot(model_copy)
    for flags in ([], ["--overwrite"]):
        line = _refused(capsys, "--config", _yaml(tmp_path, model_copy, data, model_copy), *flags)
        assert "output_dir is the model" in line and "apart from the inputs" in line, line
        assert _snapshot(model_copy) == before
    line = _refused(capsys, "--config", _yaml(tmp_path, model_copy, data, model_copy / "runs" / "a"), "--overwrite")
    assert "output_dir lies inside the model" in line
    assert _snapshot(model_copy) == before


@pytest.mark.parametrize("which", ["data", "eval_data", "tokenizer", "reference_cache_dir", "aligned model"])
def test_output_dir_that_contains_an_input_is_refused(capsys, tiny_model_dir, tmp_path, which):
    out = tmp_path / "run"
    out.mkdir()
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    kw: dict = {}
    label = which
    if which == "data":
        data = write_pairs(out / "d.jsonl", n=8)
    elif which == "eval_data":
        kw["eval_data"] = str(write_pairs(out / "eval.jsonl", n=4))
    elif which == "tokenizer":
        shutil.copytree(tiny_model_dir, out / "tok")
        kw["tokenizer"] = str(out / "tok")
    elif which == "reference_cache_dir":
        (out / "cache").mkdir()
        kw.update(reference="precompute", reference_cache_dir=str(out / "cache"))
    else:
        shutil.copytree(tiny_model_dir, out / "aligned")
        kw.update(objective="poft", objective_args={"poft": {"aligned_models": [str(out / "aligned")]}})
        label = "objective_args poft.aligned_models"
    before = _snapshot(out)
    line = _refused(capsys, "--config", _yaml(tmp_path, tiny_model_dir, data, out, **kw), "--overwrite")
    assert f"output_dir contains the {label}" in line, line
    assert _snapshot(out) == before


def test_output_dir_that_is_a_file_or_under_a_file(capsys, tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    line = _refused(capsys, "--config", _yaml(tmp_path, tiny_model_dir, data, f), "--overwrite")
    assert "output_dir is a file, not a folder" in line
    line = _refused(capsys, "--config", _yaml(tmp_path, tiny_model_dir, data, f / "out"))
    assert f"output_dir lies under {f}, which is a file" in line
    assert f.read_text() == "keep me"
    line = _refused(capsys, "--config", _yaml(tmp_path, tiny_model_dir, data, tmp_path / "out",
                                                reference="precompute", reference_cache_dir=str(f)))
    assert "reference_cache_dir is a file, not a folder" in line
    assert f.read_text() == "keep me" and not (tmp_path / "out").exists()


def test_output_dir_on_a_read_only_filesystem(capsys, tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                                 capture_output=True).returncode == 0
    if not mounted:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pytest.skip("cannot mount a read-only tmpfs here")
        ro.chmod(0o555)
    try:
        line = _refused(capsys, "--config", _yaml(tmp_path, tiny_model_dir, data, ro / "out"))
        assert "cannot write the output folder" in line
        assert ("read-only filesystem" if mounted else "is not writable") in line
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=True)
        else:
            ro.chmod(0o755)


# --- class 6: one run per output folder -------------------------------------------------------------------------
_HOLD = ("import sys, time; from pathlib import Path; from prefalign.train.setup import OutputLock; "
         "OutputLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)")


def test_second_run_on_a_locked_folder_names_the_first_pid_and_a_killed_owner_frees_it(capsys, tiny_model_dir,
                                                                                       tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(out)
        line = _refused(capsys, "--config", _yaml(tmp_path, tiny_model_dir, data, out, max_steps=1), "--overwrite")
        assert f"another prefalign run (PID {holder.pid}) is using this output folder" in line, line
        assert _snapshot(out) == before
        from prefalign.errors import UserError
        from prefalign.train.setup import OutputLock

        with pytest.raises(UserError, match=f"PID {holder.pid}"):  # the lock itself (taken as training starts)
            OutputLock(out).acquire()
        assert _snapshot(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # a kill -9: the lock file stays, the kernel frees the flock
        holder.wait()
    assert (out / ".prefalign.lock").read_text().strip() == str(holder.pid)  # stale
    rc, err = _train(capsys, "--config", _yaml(tmp_path, tiny_model_dir, data, out, max_steps=1))
    assert rc == 0, err
    assert (out / "run_complete.json").is_file() and not (out / ".prefalign.lock").exists()


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_two_real_runs_on_one_folder_the_second_exits_2_and_the_first_finishes(capsys, tiny_model_dir, tmp_path):
    import time

    data = write_pairs(tmp_path / "d.jsonl", n=8)
    out = tmp_path / "out"
    yaml = _yaml(tmp_path, tiny_model_dir, data, out, max_steps=3)
    env = {**os.environ, "PREFALIGN_FAULT": "after_step:1:SIGSTOP"}  # the first run pauses mid-training, locked
    first = subprocess.Popen([sys.executable, "-m", "prefalign", "train", "--config", str(yaml)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not _stopped(first.pid) and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert _stopped(first.pid), first.communicate(timeout=5)
        before = _snapshot(out)
        for flags in ([], ["--overwrite"], ["--resume"]):
            line = _refused(capsys, "--config", yaml, *flags)
            assert f"another prefalign run (PID {first.pid}) is using this output folder" in line, line
            assert _snapshot(out) == before
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert (out / "run_complete.json").is_file() and (out / "model.safetensors").is_file()


# --- class 7: resume safety -------------------------------------------------------------------------------------
def _interrupted_run(capsys, monkeypatch, model_dir, data, out, tmp_path, **kw) -> Path:
    """A run stopped by SIGTERM after step 2 (checkpoint step-2 written); returns its YAML."""
    yaml = _yaml(tmp_path, model_dir, data, out, max_steps=4, save_steps=0, **kw)
    monkeypatch.setenv("PREFALIGN_FAULT", "after_step:2:SIGTERM")
    rc, err = _train(capsys, "--config", yaml)
    monkeypatch.delenv("PREFALIGN_FAULT")
    assert rc == 128 + signal.SIGTERM, err
    assert (out / "checkpoints" / "step-2").is_dir()
    return yaml


def test_resume_refuses_changed_model_weights(capsys, monkeypatch, model_copy, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    out = tmp_path / "out"
    yaml = _interrupted_run(capsys, monkeypatch, model_copy, data, out, tmp_path)
    weights = model_copy / "model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0  # same shapes, same size: only the bytes change
    save_file(tensors, str(weights), metadata={"format": "pt"})
    before = _snapshot(out)
    line = _refused(capsys, "--config", yaml, "--resume")
    assert "--resume refused: the model's weights or files changed since the checkpoints were written " \
           "(model.safetensors)" in line, line
    assert _snapshot(out) == before


def test_resume_refuses_changed_data_but_not_a_touched_file(capsys, monkeypatch, tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    out = tmp_path / "out"
    yaml = _interrupted_run(capsys, monkeypatch, tiny_model_dir, data, out, tmp_path)
    text = data.read_text()
    data.write_text(text.replace("nice", "fine", 1))  # same size, other content
    before = _snapshot(out)
    line = _refused(capsys, "--config", yaml, "--resume")
    assert "the training data's content changed since the checkpoints were written (d.jsonl)" in line, line
    assert _snapshot(out) == before
    data.write_text(text)
    os.utime(data, ns=(1, 1))  # same bytes, another mtime (a copy): resumes
    rc, err = _train(capsys, "--config", yaml, "--resume")
    assert rc == 0, err
    assert (out / "run_complete.json").is_file()


def test_resume_without_checkpoints_folder_or_with_a_damaged_run_config(capsys, monkeypatch, tiny_model_dir,
                                                                        tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    out = tmp_path / "out"
    yaml = _interrupted_run(capsys, monkeypatch, tiny_model_dir, data, out, tmp_path)
    shutil.move(out / "checkpoints", tmp_path / "moved")
    before = _snapshot(out)
    line = _refused(capsys, "--config", yaml, "--resume")
    assert "checkpoints/ folder is missing" in line and "would start over" in line, line
    assert _snapshot(out) == before
    shutil.move(tmp_path / "moved", out / "checkpoints")
    run_config = out / "run_config.json"
    run_config.write_text(run_config.read_text()[:40])  # truncated
    before = _snapshot(out)
    line = _refused(capsys, "--config", yaml, "--resume")
    assert "run_config.json is damaged" in line and "delete it and --resume again" in line, line
    assert _snapshot(out) == before
    run_config.unlink()  # the recovery the message gives: checked against config.yaml instead
    rc, err = _train(capsys, "--config", yaml, "--resume", "--beta", "0.3")
    assert rc == 2 and "--resume with a different config (differs in: beta)" in err
    rc, err = _train(capsys, "--config", yaml, "--resume")
    assert rc == 0, err
    assert (out / "run_complete.json").is_file()


def test_resume_of_a_finished_run_leaves_it_as_it_is(capsys, tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    out = tmp_path / "out"
    yaml = _yaml(tmp_path, tiny_model_dir, data, out, max_steps=2, save_steps=1)
    assert _train(capsys, "--config", yaml)[0] == 0
    before = _snapshot(out)
    line = _refused(capsys, "--config", yaml, "--resume")
    assert "this run is finished (run_complete.json)" in line, line
    assert _snapshot(out) == before


def test_second_sigint_during_the_interrupt_checkpoint_leaves_no_tmp(capsys, monkeypatch, tiny_model_dir, tmp_path):
    from prefalign.train import checkpoint

    data = write_pairs(tmp_path / "d.jsonl", n=8)
    out = tmp_path / "out"
    yaml = _yaml(tmp_path, tiny_model_dir, data, out, max_steps=5, save_steps=2)

    def second_ctrl_c(point, step):
        if point == "mid_checkpoint" and step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(checkpoint, "maybe_fault", second_ctrl_c)
    monkeypatch.setenv("PREFALIGN_FAULT", "after_step:3:SIGINT")  # the first Ctrl-C: checkpoint step 3 and stop
    rc, err = _train(capsys, "--config", yaml)
    assert rc == 130 and "Traceback" not in err, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]  # no step-3.tmp
    monkeypatch.delenv("PREFALIGN_FAULT")
    (out / "checkpoints" / "step-4.tmp").mkdir()  # as a kill -9 mid-write leaves it
    rc, err = _train(capsys, "--config", yaml, "--resume")
    assert rc == 0, err
    assert not list((out / "checkpoints").glob("*.tmp"))


# --- class 9: conventions ---------------------------------------------------------------------------------------
def test_weight_decay_skips_biases_and_norm_weights_as_hf_trainer(tiny_model_dir, tmp_path):
    from prefalign.train.loop import build

    data = write_pairs(tmp_path / "d.jsonl", n=8)
    for lora in (False, True):
        eng = build(config(tiny_model_dir, data, tmp_path / f"o{lora}", weight_decay=0.1, lora=lora, lora_r=4,
                           memory_probe=False), log=lambda *a: None)
        names = {id(p): n for n, p in eng.method.model.named_parameters()}
        by_decay = {g["weight_decay"]: [names[id(p)] for p in g["params"]] for g in eng.opt.param_groups}
        decayed, exempt = by_decay[0.1], by_decay.get(0.0, [])
        assert not [n for n in decayed if "norm" in n or "bias" in n]
        trainable = [n for n, p in eng.method.model.named_parameters() if p.requires_grad]
        assert sorted(decayed + exempt) == sorted(trainable)
        if lora:
            assert decayed and all("lora_" in n for n in decayed) and not exempt
        else:
            assert exempt and all("norm" in n or "bias" in n for n in exempt)
            assert any(n.endswith("model.norm.weight") for n in exempt)
            assert any("input_layernorm" in n for n in exempt)


def test_kto_metrics_over_zero_rows_are_left_out(capsys, tiny_model_dir, tmp_path):
    data = _write_unpaired(tmp_path / "u.jsonl", n=8, labels=[True])  # desirable rows only
    out = tmp_path / "out"
    rc, err = _train(capsys, "--config", _yaml(tmp_path, tiny_model_dir, data, out, objective="kto", max_steps=2,
                                               batch_size=4))
    assert rc == 0, err
    logged = [m for m in read_metrics(out) if "loss" in m]
    assert logged and all("logps/chosen" in m for m in logged)
    assert not any("logps/rejected" in m or "rewards/rejected" in m for m in logged)


def test_metrics_missing_in_some_micro_batches_average_over_the_others():
    from types import SimpleNamespace

    from prefalign.train.engine import _mean_across

    acc = SimpleNamespace(num_processes=1)
    # two micro-batches of share 0.5: "logps/rejected" only in the second (value −2)
    sums = {"loss": 0.5 * 1.0 + 0.5 * 3.0, "logps/rejected": 0.5 * -2.0}
    shares = {"loss": 1.0, "logps/rejected": 0.5}
    assert _mean_across(acc, sums, shares) == {"loss": 2.0, "logps/rejected": -2.0}


def test_kto_with_batch_size_one_is_refused_with_the_reason(capsys, tiny_model_dir, tmp_path):
    data = _write_unpaired(tmp_path / "u.jsonl", n=4)
    out = tmp_path / "out"
    yaml = _yaml(tmp_path, tiny_model_dir, data, out, objective="kto", max_steps=1, batch_size=1)
    line = _refused(capsys, "--config", yaml)
    assert "objective 'kto' with batch_size 1" in line and "TRL refuses this too" in line and "batch_size >= 2" in line
    assert not out.exists()
    rc, err = _train(capsys, "--config", yaml, "--objective_args", "{kto: {kl_estimate: none}}")
    assert rc == 0, err


def test_two_equal_runs_one_with_weight_decay_differ_only_in_decayed_tensors(capsys, tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    runs = {}
    for wd in (0.0, 0.5):
        out = tmp_path / f"wd{wd}"
        assert _train(capsys, "--config", _yaml(tmp_path, tiny_model_dir, data, out, max_steps=1,
                                                weight_decay=wd, name=f"wd{wd}.yaml"))[0] == 0
        runs[wd] = load_file(str(out / "model.safetensors"))
    for name, t in runs[0.0].items():
        same = torch.equal(t, runs[0.5][name])
        if "norm" in name:
            assert same, name  # no decay on norm weights
    assert any(not torch.equal(t, runs[0.5][n]) for n, t in runs[0.0].items() if "norm" not in n)


# --- docs/reliability.md names only files and tests that exist ---------------------------------------------------
def test_reliability_doc_cites_only_existing_files_and_tests():
    import re

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "reliability.md").read_text(encoding="utf-8")
    cited = re.findall(r"`((?:src|tests)/[\w/.-]+\.py)(?:::(\w+))?`", text)
    assert len(cited) > 20
    for path, name in cited:
        assert (root / path).is_file(), path
        if name:
            assert re.search(rf"^(?:async )?def {name}\(|^class {name}\b", (root / path).read_text(), re.M), \
                f"{path}::{name}"
    for section in range(1, 10):
        assert f"| {section}. " in text, section
