"""Issue 16, classes 2 and 8: the other commands (sample, label, evaluate, decode, demo) held to `train`'s standard.

Every bad input goes through ``prefalign.cli.main``: exit code 2, exactly one ``error:`` line saying what is wrong,
no traceback, and the output path as it was (absent, or unchanged). Tiny models only (``tiny_model_dir``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

from prefalign.cli import main

PROMPTS = [{"prompt": "Say hi."}, {"prompt": "Write one sentence about a cat."}]

REWARDS = '''
def good(prompts, completions):
    return [float(len(c)) for c in completions]

def one_arg(completions):
    return [0.0] * len(completions)

def boom(prompts, completions):
    raise ValueError("boom: the scorer broke")

def strings(prompts, completions):
    return ["high"] * len(completions)

def nones(prompts, completions):
    return [None] * len(completions)

def nans(prompts, completions):
    return [float("nan")] * len(completions)

def scalar(prompts, completions):
    return 1.0
'''


@pytest.fixture
def rewards_mod(tmp_path, monkeypatch):
    (tmp_path / "rel_cmd_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "rel_cmd_rewards"
    sys.modules.pop("rel_cmd_rewards", None)


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _snapshot(path: Path | None):
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"/") for p in path.rglob("*"))


def _fails(capsys, argv: list, expected: str, out: Path | None = None) -> str:
    """main(argv) exits 2 with one `error:` line containing ``expected``; no traceback; ``out`` unchanged."""
    before = _snapshot(out)
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert expected in errors[0], err
    assert "Traceback" not in err
    assert _snapshot(out) == before, "the output path changed"
    if out is not None and out.parent.exists():
        assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")], "a temp file was left behind"
    return errors[0]


@pytest.fixture
def prompts(tmp_path) -> Path:
    return _jsonl(tmp_path / "prompts.jsonl", PROMPTS)


def _sample(model, prompts, out, *extra):
    return ["sample", "--model", model, "--prompts", prompts, "--out", out, "--n", 2, "--max-new-tokens", 2,
            "--dtype", "fp32", *extra]


# ---- bad prompt files -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, content, expected", [
    ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "\xff\xfe"}\n', "p.jsonl:row 2: not valid UTF-8 (byte 13 of the line)"),
    ("p.txt", b"Say hi.\nWrite \xc3\x28 a poem.\n", "p.txt:row 2: not valid UTF-8 (byte 7 of the line)"),
    ("p.jsonl", b'{"prompt": "a"}\n' + b"[" * 100_000 + b"\n", "p.jsonl:row 2: not valid JSON (nested too deeply"),
    ("p.jsonl", b'{"prompt": "a", "n": 1' + b"0" * 5000 + b"}\n", "p.jsonl:row 1: not valid JSON (an integer with"),
    ("p.jsonl", b'{"prompt": "\\ud800"}\n', "p.jsonl:prompt 1: not valid Unicode"),
    ("p.jsonl", b'["a"]\n', "p.jsonl:row 1: expected an object with a non-empty 'prompt'"),
])
def test_bad_prompt_files(tiny_model_dir, tmp_path, capsys, name, content, expected):
    (tmp_path / name).write_bytes(content)
    out = tmp_path / "samples.jsonl"
    _fails(capsys, _sample(tiny_model_dir, tmp_path / name, out), expected, out)


def test_prompts_folder_is_refused(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "pdir").mkdir()
    _fails(capsys, _sample(tiny_model_dir, tmp_path / "pdir", tmp_path / "s.jsonl"), "is a folder, not a prompt file")


def test_decode_and_evaluate_read_prompts_the_same_way(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"ok\n\xff\n")
    _fails(capsys, ["decode", "--method", "sample", "--model", tiny_model_dir, "--prompts", bad, "--out",
                    tmp_path / "o.jsonl"], "p.txt:row 2: not valid UTF-8", tmp_path / "o.jsonl")
    _fails(capsys, ["evaluate", "--model", tiny_model_dir, "--reference", tiny_model_dir, "--prompts", bad,
                    "--reward", "vader", "--out", tmp_path / "rep"], "p.txt:row 2: not valid UTF-8", tmp_path / "rep")


# ---- out-of-range sampling flags, checked before anything is loaded ------------------------------------------------
@pytest.mark.parametrize("flags, expected", [
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-p", "nan"], "--top-p must be in (0, 1]"),
    (["--temperature", "nan"], "--temperature must be > 0"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2^63)"),
    (["--n", "0"], "--n must be >= 1"),
    (["--threads", "-2"], "--threads: must be >= 0"),
])
def test_sample_flags_out_of_range(tiny_model_dir, prompts, tmp_path, capsys, flags, expected):
    out = tmp_path / "s.jsonl"
    _fails(capsys, _sample("/no/such/model", prompts, out, *flags), expected, out)  # before the model is looked at


@pytest.mark.parametrize("command", ["evaluate", "decode"])
def test_top_p_zero_in_evaluate_and_decode(tiny_model_dir, prompts, tmp_path, capsys, command):
    out = tmp_path / ("rep" if command == "evaluate" else "o.jsonl")
    argv = ([command, "--model", "/no/such/model", "--prompts", prompts, "--out", out, "--top-p", "0"]
            + (["--reward", "vader"] if command == "evaluate" else ["--method", "sample"]))
    _fails(capsys, argv, "--top-p must be in (0, 1]", out)


def test_evaluate_bad_decode_hparam_before_loading(prompts, tmp_path, capsys):
    _fails(capsys, ["evaluate", "--model", "/no/such/model", "--prompts", prompts, "--reward", "vader", "--out",
                    tmp_path / "rep", "--decode", "dera", "--hparam", "nope=1"], "unknown hparam 'nope'")


@pytest.mark.parametrize("flags, expected", [
    (["--beta", "0"], "--beta must be a finite number > 0"),
    (["--beta", "nan"], "--beta must be a finite number > 0"),
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--seed", "-3"], "--seed must be >= 0"),
])
def test_demo_flags(tmp_path, capsys, flags, expected):
    _fails(capsys, ["demo", "--out", tmp_path / "demo", *flags], expected, tmp_path / "demo")


# ---- output paths -------------------------------------------------------------------------------------------------
def test_output_path_that_is_a_folder(tiny_model_dir, prompts, tmp_path, capsys):
    folder = tmp_path / "outdir"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    _fails(capsys, _sample(tiny_model_dir, prompts, folder), "--out is a folder", folder)
    _fails(capsys, ["decode", "--method", "sample", "--model", tiny_model_dir, "--prompts", prompts, "--out",
                    folder], "--out is a folder", folder)
    samples = _jsonl(tmp_path / "samples.jsonl", [{"prompt": "a", "completions": ["x", "yy"], "rewards": [0, 1]}])
    _fails(capsys, ["label", "--samples", samples, "--out", folder], "--out is a folder", folder)


def test_output_under_a_file_and_report_folder_that_is_a_file(tiny_model_dir, prompts, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _fails(capsys, _sample(tiny_model_dir, prompts, blocker / "s.jsonl"), "which is a file", blocker)
    _fails(capsys, ["evaluate", "--model", tiny_model_dir, "--reference", tiny_model_dir, "--prompts", prompts,
                    "--reward", "vader", "--out", blocker], "--out is a file, not a folder", blocker)
    _fails(capsys, ["demo", "--out", blocker], "--out is a file, not a folder", blocker)


# ---- rewards: values, signatures, exceptions ---------------------------------------------------------------------
@pytest.mark.parametrize("rewards, expected", [
    (["0.5", 1.0], "row 1: field 'rewards[0]': expected a finite number, got a str ('0.5')"),
    ([0.5, None], "row 1: field 'rewards[1]': expected a finite number, got null"),
    ([0.5, float("nan")], "row 1: field 'rewards[1]': expected a finite number, got nan"),
    ([True, 0.0], "row 1: field 'rewards[0]': expected a finite number, got a bool"),
])
def test_label_reward_values(tmp_path, capsys, rewards, expected):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": "a", "completions": ["x", "yy"], "rewards": rewards}) + "\n")
    out = tmp_path / "pairs.jsonl"
    _fails(capsys, ["label", "--samples", samples, "--out", out], expected, out)


@pytest.mark.parametrize("fn, expected", [
    ("one_arg", "cannot be called as f(prompts, completions)"),
    ("boom", "reward rel_cmd_rewards:boom: raised ValueError: boom: the scorer broke: fix the function"),
    ("strings", "returned a str ('high') for item 1, not a number"),
    ("nones", "returned None for item 1, not a number"),
    ("nans", "returned a non-finite score (nan) for item 1"),
    ("scalar", "returned a float instead of a list of 2 scores"),
])
def test_label_with_a_bad_reward_callable(rewards_mod, tmp_path, capsys, fn, expected):
    samples = _jsonl(tmp_path / "samples.jsonl", [{"prompt": "a", "completions": ["x", "yy"]}])
    out = tmp_path / "pairs.jsonl"
    _fails(capsys, ["label", "--samples", samples, "--out", out, "--reward", f"{rewards_mod}:{fn}"], expected, out)


def test_sample_reward_that_raises_writes_nothing(tiny_model_dir, prompts, rewards_mod, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    _fails(capsys, _sample(tiny_model_dir, prompts, out, "--reward", f"{rewards_mod}:boom"),
           "raised ValueError: boom: the scorer broke: fix the function", out)


def test_wrong_signature_fails_before_the_model_loads(prompts, rewards_mod, tmp_path, capsys):
    _fails(capsys, _sample("/no/such/model", prompts, tmp_path / "s.jsonl", "--reward", f"{rewards_mod}:one_arg"),
           "cannot be called as f(prompts, completions)")


def test_decode_best_of_n_reward_that_raises(tiny_model_dir, prompts, rewards_mod, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    _fails(capsys, ["decode", "--method", "best_of_n", "--model", tiny_model_dir, "--prompts", prompts, "--reward",
                    f"{rewards_mod}:boom", "--hparam", "n=2", "--max-new-tokens", 2, "--out", out],
           "raised ValueError: boom", out)


def test_working_directory_is_not_put_on_sys_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "cwd_only_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", os.getcwd(), str(tmp_path))])
    samples = _jsonl(tmp_path / "samples.jsonl", [{"prompt": "a", "completions": ["x", "yy"]}])
    line = _fails(capsys, ["label", "--samples", samples, "--out", tmp_path / "p.jsonl", "--reward",
                           "cwd_only_rewards:good"], "cannot import module 'cwd_only_rewards'")
    assert "PYTHONPATH" in line
    assert str(tmp_path) not in sys.path and "cwd_only_rewards" not in sys.modules


def test_help_says_module_function_runs_code(capsys):
    for command in ("sample", "label", "evaluate", "decode"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "imports that Python module, which runs its code" in text, command
        assert "does not add the working directory" in text, command
        assert "--safetensors-only" in text, command


# ---- model and adapter folders -------------------------------------------------------------------------------------
@pytest.fixture
def adapter_dir(tiny_model_dir, tmp_path):
    from prefalign.model import add_lora, load_model

    model = add_lora(load_model(str(tiny_model_dir)), r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    return folder


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_empty_and_truncated_model_folders(tiny_model_dir, prompts, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "s.jsonl"
    _fails(capsys, _sample(empty, prompts, out), "cannot load a causal LM", out)
    cut = tmp_path / "cut"
    shutil.copytree(tiny_model_dir, cut)
    _truncate(cut / "model.safetensors")
    _fails(capsys, _sample(cut, prompts, out), "cannot load a causal LM", out)
    _fails(capsys, ["decode", "--method", "sample", "--model", cut, "--prompts", prompts, "--out", out],
           "cannot load a causal LM", out)
    _fails(capsys, ["evaluate", "--model", cut, "--reference", tiny_model_dir, "--prompts", prompts, "--reward",
                    "vader", "--out", tmp_path / "rep"], "cannot load a causal LM", tmp_path / "rep")
    _fails(capsys, ["decode", "--method", "sample", "--model", empty, "--prompts", prompts],
           "cannot load a causal LM")


@pytest.mark.parametrize("damage, expected", [
    ("config_not_json", "adapter_config.json: not valid JSON"),
    ("config_a_list", "adapter_config.json: expected a JSON object"),
    ("weights_truncated", "cannot load the LoRA adapter"),
    ("weights_missing", "adapter folder has no adapter_model.safetensors"),
    ("base_missing", "the adapter's base model '/no/such/base' is not a local folder"),
])
def test_damaged_adapter_folders(adapter_dir, prompts, tmp_path, capsys, damage, expected):
    cfg = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if damage == "config_not_json":
        cfg.write_text('{"base_model_name_or_path": "x", ')
    elif damage == "config_a_list":
        cfg.write_text("[1, 2]")
    elif damage == "weights_truncated":
        _truncate(weights)
    elif damage == "weights_missing":
        weights.unlink()
    else:
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": "/no/such/base"}))
    out = tmp_path / "s.jsonl"
    _fails(capsys, _sample(adapter_dir, prompts, out), expected, out)
    _fails(capsys, ["decode", "--method", "dera", "--model", adapter_dir, "--prompts", prompts, "--out", out],
           expected, out)
    _fails(capsys, ["evaluate", "--model", adapter_dir, "--prompts", prompts, "--reward", "vader", "--out",
                    tmp_path / "rep"], expected, tmp_path / "rep")


def test_adapter_folder_samples(adapter_dir, prompts, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main([str(a) for a in _sample(adapter_dir, prompts, out)]) == 0
    assert len(out.read_text().splitlines()) == 2


# ---- class 8: refusing pickle weights --------------------------------------------------------------------------------
@pytest.fixture
def pickle_model_dir(tiny_model_dir, tmp_path):
    import torch

    from prefalign.model import load_model

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save(load_model(str(tiny_model_dir)).state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return folder


def test_safetensors_only_refuses_pickle_weights(pickle_model_dir, prompts, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.jsonl"
    expected = "holds pickle-format weights only (pytorch_model.bin), and safetensors-only loading is on"
    _fails(capsys, _sample(pickle_model_dir, prompts, out, "--safetensors-only"), expected, out)
    _fails(capsys, ["decode", "--method", "sample", "--model", pickle_model_dir, "--prompts", prompts,
                    "--safetensors-only"], expected)
    _fails(capsys, ["evaluate", "--model", pickle_model_dir, "--reference", pickle_model_dir, "--prompts", prompts,
                    "--reward", "vader", "--out", tmp_path / "rep", "--safetensors-only"], expected, tmp_path / "rep")
    monkeypatch.setenv("PREFALIGN_SAFETENSORS_ONLY", "1")
    _fails(capsys, _sample(pickle_model_dir, prompts, out), expected, out)
    monkeypatch.delenv("PREFALIGN_SAFETENSORS_ONLY")
    assert main([str(a) for a in _sample(pickle_model_dir, prompts, out)]) == 0  # off by default: read as before


def test_safetensors_only_accepts_safetensors_and_refuses_a_pickled_adapter(tiny_model_dir, adapter_dir, prompts,
                                                                              tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "s.jsonl"
    assert main([str(a) for a in _sample(tiny_model_dir, prompts, out, "--safetensors-only")]) == 0
    import torch

    weights = adapter_dir / "adapter_model.safetensors"
    torch.save(load_file(weights), adapter_dir / "adapter_model.bin")
    weights.unlink()
    out.unlink()
    _fails(capsys, _sample(adapter_dir, prompts, out, "--safetensors-only"), "pickle-format weights only "
           "(adapter_model.bin)", out)


def test_safetensors_only_reward_folder(pickle_model_dir, tmp_path):
    from prefalign.errors import UserError
    from prefalign.reward import load_reward

    with pytest.raises(UserError, match="pickle-format weights only"):
        load_reward(str(pickle_model_dir), use_safetensors=True)


# ---- a named pipe as --prompts ---------------------------------------------------------------------------------------
def test_prompts_from_a_named_pipe(tiny_model_dir, tmp_path, capsys):
    fifo = tmp_path / "prompts.pipe"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in PROMPTS))

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    out = tmp_path / "s.jsonl"
    result = {}
    worker = threading.Thread(target=lambda: result.update(rc=main([str(a) for a in _sample(tiny_model_dir, fifo,
                                                                                             out)])), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "reading the pipe hung"
    assert result["rc"] == 0, capsys.readouterr().err
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == [r["prompt"] for r in PROMPTS]
