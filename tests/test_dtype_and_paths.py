"""``dtype: auto`` picks bf16 only where the hardware computes it natively; paths expand ``~`` and ``$VARS``;
a missing path is named as tried (issue 17)."""

from __future__ import annotations

import json

import pytest
import torch

from prefalign import model as model_mod
from prefalign.errors import UserError
from prefalign.model import cpu_flags, dtype_line, expand_path, resolve_dtype

AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
AVX512_NO_BF16 = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n"
AVX512_BF16 = "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
AMX = "flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def _cpuinfo(monkeypatch, text):
    monkeypatch.setattr(model_mod, "_cpuinfo_text", lambda: text)


def test_auto_on_this_machine_follows_its_cpu_flags():
    dtype, why = resolve_dtype("auto", "cpu")
    assert dtype in ("fp32", "bf16") and why.startswith(f"auto: {dtype} (")
    flags = cpu_flags()
    if flags is not None:
        native = bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)
        assert dtype == ("bf16" if native else "fp32")
    assert resolve_dtype("auto") == (dtype, why)  # the device defaults to the CPU


@pytest.mark.parametrize("text", [AVX2_ONLY, AVX512_NO_BF16])
def test_auto_is_fp32_on_a_cpu_without_native_bf16(monkeypatch, text):
    _cpuinfo(monkeypatch, text)
    dtype, why = resolve_dtype("auto", "cpu")
    assert dtype == "fp32"
    assert why == ("auto: fp32 (this CPU has no native bf16: AVX512-BF16/AMX missing; bf16 would be emulated, "
                   "several times slower)")
    assert dtype_line("auto", torch.device("cpu")) == ("fp32", f"dtype {why}")


@pytest.mark.parametrize(("text", "flag"), [(AVX512_BF16, "avx512_bf16"), (AMX, "amx_bf16"), (ARM_BF16, "bf16")])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch, text, flag):
    _cpuinfo(monkeypatch, text)
    dtype, why = resolve_dtype("auto", "cpu")
    assert dtype == "bf16" and why.startswith("auto: bf16 (this CPU computes bf16 natively") and flag in why


def test_without_cpuinfo_torchs_cpu_capability_decides(monkeypatch):
    _cpuinfo(monkeypatch, None)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    dtype, why = resolve_dtype("auto", "cpu")
    assert dtype == "fp32" and "AVX2" in why
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_BF16")
    assert resolve_dtype("auto", "cpu")[0] == "bf16"


def test_auto_on_cuda_asks_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == ("fp32", "auto: fp32 (Tesla T4 has no native bf16)")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda:0") == ("bf16", "auto: bf16 (NVIDIA H100 computes bf16 natively)")


def test_explicit_dtypes_pass_through_whatever_the_hardware(monkeypatch):
    _cpuinfo(monkeypatch, AVX2_ONLY)
    assert resolve_dtype("bf16", "cpu") == ("bf16", "set explicitly")
    assert resolve_dtype("fp32", "cpu") == ("fp32", "set explicitly")
    _cpuinfo(monkeypatch, AMX)
    assert resolve_dtype("fp32", "cpu") == ("fp32", "set explicitly")
    assert dtype_line("bf16") == ("bf16", "dtype bf16 (set explicitly)")
    with pytest.raises(UserError, match="unknown dtype 'fp16'"):
        resolve_dtype("fp16", "cpu")


def test_load_model_accepts_auto(monkeypatch, tiny_model_dir):
    from prefalign.model import load_model

    _cpuinfo(monkeypatch, AVX2_ONLY)
    assert next(load_model(str(tiny_model_dir), "auto").parameters()).dtype == torch.float32
    _cpuinfo(monkeypatch, AVX512_BF16)
    assert next(load_model(str(tiny_model_dir), "auto").parameters()).dtype == torch.bfloat16


def test_the_demo_defaults_to_auto():
    from prefalign.demo import DemoConfig, quick_config

    assert DemoConfig().dtype == "auto" and quick_config().dtype == "auto"


def test_expand_path_expands_home_and_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PREFALIGN_TEST_ROOT", "/data/models")
    monkeypatch.delenv("PREFALIGN_TEST_UNSET", raising=False)
    assert expand_path("~/.cache/prefalign/smollm2") == f"{tmp_path}/.cache/prefalign/smollm2"
    assert expand_path("$PREFALIGN_TEST_ROOT/smollm2") == "/data/models/smollm2"
    assert expand_path("${PREFALIGN_TEST_ROOT}/x/$PREFALIGN_TEST_ROOT") == "/data/models/x//data/models"
    assert expand_path("$HOME/a") == f"{tmp_path}/a"
    assert expand_path("$PREFALIGN_TEST_UNSET/a") == "$PREFALIGN_TEST_UNSET/a"  # left as written
    assert expand_path("relative/dir") == "relative/dir" and expand_path(None) is None
    assert expand_path(tmp_path / "p") == str(tmp_path / "p")


def test_a_missing_model_folder_is_named_as_tried(monkeypatch, tmp_path):
    from prefalign.model import load_model

    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError) as e:
        load_model("~/models/nope")
    assert e.value.line() == (f"{tmp_path}/models/nope: model folder does not exist (given as ~/models/nope): "
                              "check the path given to --model")


def _error_lines(capsys) -> tuple[list[str], list[str]]:
    err = capsys.readouterr().err.splitlines()
    return err, [line for line in err if line.startswith("error:")]


def test_cli_commands_name_the_expanded_missing_path(monkeypatch, tmp_path, capsys):
    """One line, exit 2, naming the path as expanded (the shell would have expanded a bare ~ already)."""
    from prefalign.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    missing = f"{tmp_path}/nowhere/prompts.txt"
    assert main(["sample", "--model", "~/nowhere/model", "--prompts", "~/nowhere/prompts.txt",
                 "--out", "~/out.jsonl", "--dtype", "fp32"]) == 2
    err, errors = _error_lines(capsys)
    assert err[0] == "dtype fp32 (set explicitly)"  # the choice comes first
    assert errors == [f"error: {missing}: prompt file not found: check the path given to --prompts"]

    (tmp_path / "p.txt").write_text("Hi\n")
    assert main(["sample", "--model", "~/nowhere/model", "--prompts", "~/p.txt", "--out", "~/out.jsonl"]) == 2
    err, errors = _error_lines(capsys)
    assert err[0].startswith("dtype auto: ")
    assert errors == [f"error: {tmp_path}/nowhere/model: model folder does not exist: check the path given to --model"]

    monkeypatch.setenv("PREFALIGN_TEST_MODELS", str(tmp_path / "models"))
    assert main(["evaluate", "--model", "$PREFALIGN_TEST_MODELS/run", "--prompts", "~/p.txt", "--reward", "vader",
                 "--out", "~/ev"]) == 2
    _, errors = _error_lines(capsys)
    assert errors == [f"error: {tmp_path}/models/run: model folder does not exist: check the path given to --model"]

    assert main(["decode", "--method", "sample", "--model", "~/nowhere/model", "--prompts", "~/p.txt"]) == 2
    err, errors = _error_lines(capsys)
    assert err[0].startswith("dtype auto: ")
    assert errors == [f"error: model {tmp_path}/nowhere/model: is not a folder: "
                      "pass a model folder saved with save_pretrained"]

    assert main(["label", "--samples", "~/nowhere/s.jsonl", "--out", "~/pairs.jsonl"]) == 2
    _, errors = _error_lines(capsys)
    assert errors == [f"error: {tmp_path}/nowhere/s.jsonl: file not found: check the path"]


def test_cli_sample_with_a_home_relative_model_folder(monkeypatch, tmp_path, tiny_model_dir, capsys):
    from prefalign.cli import main

    monkeypatch.setenv("HOME", str(tiny_model_dir.parent))
    (tmp_path / "p.txt").write_text("Hi\ncat\n")
    monkeypatch.setenv("PREFALIGN_TEST_OUT", str(tmp_path))
    assert main(["sample", "--model", f"~/{tiny_model_dir.name}", "--prompts", "$PREFALIGN_TEST_OUT/p.txt",
                 "--out", "$PREFALIGN_TEST_OUT/s.jsonl", "--n", "2", "--max-new-tokens", "3",
                 "--dtype", "fp32"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["completions"]) == 2 for r in rows)
    assert capsys.readouterr().err.splitlines()[0] == "dtype fp32 (set explicitly)"


def test_demo_first_lines_say_the_dtype_and_why_and_estimate_the_time(monkeypatch, tmp_path, tiny_model_dir):
    from prefalign.demo import DemoConfig, run_demo
    from tests.demo.stub_reward import score

    _cpuinfo(monkeypatch, AVX2_ONLY)
    monkeypatch.setenv("HOME", str(tmp_path))
    before = torch.get_num_threads()
    lines: list[str] = []
    cfg = DemoConfig(out="~/demo", threads=1, train_prompts=6, n=2, max_new_tokens=4, eval_prompts=2, n_reference=2,
                     epochs=1, batch_size=4, sample_batch_size=8)
    try:
        m = run_demo(cfg, log=lines.append, model_folder=str(tiny_model_dir), reward=score,
                     prompts=([f"Write about item {i}." for i in range(6)], ["Write about a cat.", "Write about a dog."]))
    finally:
        torch.set_num_threads(before)
    assert lines[0] == ("dtype auto: fp32 (this CPU has no native bf16: AVX512-BF16/AMX missing; bf16 would be "
                        "emulated, several times slower)")
    assert lines[1].startswith("demo: ") and lines[1].endswith("fp32, 1 threads")
    assert lines[2].startswith("estimate: ~") and "s per token" in lines[2]
    assert (tmp_path / "demo" / "report.md").is_file()  # out: ~/demo
    assert (m["demo"]["dtype"], m["demo"]["dtype_setting"]) == ("fp32", "auto")
