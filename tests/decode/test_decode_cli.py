"""`prefalign decode` as a user runs it: a model folder, a prompts file, a reward spec, JSONL out."""

import json

from prefalign.cli import main


def test_best_of_n_from_the_command_line(tmp_path, tiny_model_dir, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\nwrite a line\n")
    out = tmp_path / "bon.jsonl"
    rc = main(["decode", "--method", "best_of_n", "--model", str(tiny_model_dir), "--prompts", str(prompts),
               "--reward", "tests.demo.stub_reward:score", "--hparam", "n=3", "--max-new-tokens", "6",
               "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["hello there", "write a line"]
    assert all(isinstance(r["completion"], str) and isinstance(r["reward"], float) for r in rows)
    assert "2 completions (best_of_n) written" in capsys.readouterr().out


def test_bad_hparam_is_a_one_line_error(tmp_path, tiny_model_dir, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    rc = main(["decode", "--method", "best_of_n", "--model", str(tiny_model_dir), "--prompts", str(prompts),
               "--reward", "tests.demo.stub_reward:score", "--hparam", "m=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown hparam 'm'" in err and "Traceback" not in err
    rc = main(["decode", "--method", "best_of_n", "--model", str(tiny_model_dir), "--prompts", str(prompts)])
    assert rc == 2 and "needs a reward" in capsys.readouterr().err
