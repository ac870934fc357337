"""Every validation error through the CLI: exit code 2, one expected line, no traceback, no output folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

GOOD = {"prompt": "Say hi.", "chosen": " Hi there!", "rejected": " Go away."}
CHAT = {"prompt": [{"role": "user", "content": "Say hi."}], "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}]}


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# (name, file content as a list of rows / raw bytes, expected message fragment)
CASES = [
    ("missing field", [GOOD, {"prompt": "x", "chosen": " a"}], "row 2: field 'rejected': missing"),
    ("wrong type", [{**GOOD, "chosen": 5}], "row 1: field 'chosen': expected a string or a list of messages, got int"),
    ("empty completion", [{**GOOD, "rejected": "   "}], "row 1: field 'rejected': empty or whitespace-only completion"),
    ("identical", [{**GOOD, "rejected": GOOD["chosen"]}], "row 1: field 'chosen': identical to 'rejected'"),
    ("no content", [{**CHAT, "chosen": [{"role": "assistant"}]}], "row 1: field 'chosen': message 1 has no 'content'"),
    ("no role", [{**CHAT, "prompt": [{"content": "hi"}]}], "row 1: field 'prompt': message 1 has no 'role'"),
    ("unknown role", [{**CHAT, "prompt": _msgs(("bot", "hi"))}], "row 1: field 'prompt': message 1 has unknown role 'bot'"),
    ("no assistant", [{**CHAT, "chosen": _msgs(("user", "hi"))}], "row 1: field 'chosen': has no assistant turn"),
    ("mixed kinds", [{**GOOD, "chosen": _msgs(("assistant", "hi"))}], "row 1: field 'chosen': expected a string like"),
    ("label", None, None),  # placeholder removed below (unpaired rows are checked in tests/data)
    ("differ before last", [{"chosen": _msgs(("user", "a"), ("assistant", "b")),
                             "rejected": _msgs(("user", "c"), ("assistant", "d"))}], "differ before their last turn"),
    ("not json", b'{"prompt": "a", "chosen": " b", "rejected": " c"}\n{not json}\n', "row 2: line is not valid JSON"),
    ("not utf8", b'{"prompt": "a", "chosen": " b", "rejected": " c"}\n{"prompt": "\xff\xfe"}\n',
     "row 2: not valid UTF-8"),
    ("empty file", b"", "file is empty"),
]
CASES = [c for c in CASES if c[1] is not None]


def _write(tmp_path, content):
    path = tmp_path / "data.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in content))
    return path


def _train(*args):
    return subprocess.run([sys.executable, "-m", "prefalign", "train", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("name,content,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_rows_exit_2_one_line(tiny_model_dir, tmp_path, name, content, expected):
    data = _write(tmp_path, content)
    out = tmp_path / "out"
    p = _train("--model", tiny_model_dir, "--data", data, "--output_dir", out)
    assert p.returncode == 2, p.stderr
    assert expected in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()


def test_skip_invalid_drops_and_counts(tiny_model_dir, tmp_path):
    rows = [GOOD, {**GOOD, "rejected": " "}, {"prompt": "x"}] + [{**GOOD, "prompt": f"Say hi {i}."} for i in range(5)]
    data = _write(tmp_path, rows)
    out = tmp_path / "out"
    p = _train("--model", tiny_model_dir, "--data", data, "--output_dir", out, "--skip-invalid", "--max_steps", 1,
               "--report_to", "[]", "--progress", "false")
    assert p.returncode == 0, p.stderr
    report = json.loads((out / "preprocess_report.json").read_text())
    assert report["rows_read"] == 8 and report["rows_kept"] == 6
    assert report["invalid_skipped"] == {"empty": 1, "missing field": 1}


def test_first_20_problems_and_total(tiny_model_dir, tmp_path):
    data = _write(tmp_path, [{**GOOD, "chosen": i} for i in range(30)])
    p = _train("--model", tiny_model_dir, "--data", data, "--output_dir", tmp_path / "o")
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2
    assert sum("field 'chosen'" in ln for ln in lines) == 20
    assert "30 invalid rows" in lines[-1] and "--skip-invalid" in lines[-1]


@pytest.mark.parametrize("args,expected", [
    (["--bta", "0.2"], "unknown option '--bta' (did you mean '--beta'?)"),
    (["--beta", "0"], "an offline objective needs β > 0"),
    (["--beta", "-1"], "'beta' must be >= 0"),
    (["--beta", "abc"], "'beta' must be float"),
    (["--learning_rate", "-1"], "'learning_rate' must be >= 0"),
    (["--objective", "dpoo"], "unknown objective 'dpoo' (did you mean 'dpo'?)"),
    (["--objective", "robust", "--objective_args", "{label_smoothing: 0.5}"], "label_smoothing"),
    (["--truncation", "middle"], "'truncation' must be one of keep_start, keep_end"),
])
def test_bad_config_exit_2(tiny_model_dir, tmp_path, args, expected):
    data = _write(tmp_path, [GOOD])
    p = _train("--model", tiny_model_dir, "--data", data, "--output_dir", tmp_path / "o", *args)
    assert p.returncode == 2 and expected in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_yaml_key(tiny_model_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ndata: x.jsonl\nlearning_rat: 1e-5\n")
    p = subprocess.run([sys.executable, "-m", "prefalign", "train", "--config", str(cfg)], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "unknown key 'learning_rat' (did you mean 'learning_rate'?)" in p.stderr


def test_missing_model_and_no_chat_template(tmp_path):
    from prefalign.testing import save_tiny

    data = _write(tmp_path, [CHAT])
    p = _train("--model", tmp_path / "nope", "--data", data, "--output_dir", tmp_path / "o")
    assert p.returncode == 2 and "model folder does not exist" in p.stderr
    plain = save_tiny(tmp_path / "plain", chat_template=None)
    p = _train("--model", plain, "--data", data, "--output_dir", tmp_path / "o")
    assert p.returncode == 2 and "no chat template" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


def test_debug_shows_traceback(tiny_model_dir, tmp_path):
    data = _write(tmp_path, [{**GOOD, "chosen": 5}])
    p = _train("--model", tiny_model_dir, "--data", data, "--output_dir", tmp_path / "o", "--debug")
    assert p.returncode != 0 and "Traceback" in p.stderr
