"""``prefalign demo --online`` wiring on a tiny random model with a stub reward (CPU, fp32, 1 thread): reference
samples → offline LoRA-DPO → PPO, GRPO, RLOO, online DPO through ``prefalign train --method online`` → the same
held-out evaluation → frontier table, plot and report; the arithmetic example with the verifiable reward; the CLI."""

from __future__ import annotations

import json

import pytest

from prefalign.errors import UserError

TRAIN = [f"Write one sentence about item {i}." for i in range(8)]
EVAL = [f"Write one sentence about thing {i}." for i in range(4)]
REWARD = "tests.demo.stub_reward:score"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead (conftest)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from prefalign.testing import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny"))


def _cfg(out, **kw):
    from prefalign.demo.online import OnlineDemoConfig

    base = dict(out=str(out), dtype="fp32", threads=1, max_new_tokens=5, steps=2, prompts_per_step=2,
                num_generations=3, learning_rate=1e-2, eval_prompts=4, n_reference=4, arith_train=4, arith_eval=6,
                arith_steps=1, arith_prompts_per_step=2, arith_generations=2, arith_max_new_tokens=4)
    return OnlineDemoConfig(**{**base, **kw})


def test_online_demo_writes_the_frontier_and_the_arithmetic_example(tiny, tmp_path):
    from prefalign.demo.online import run_online_demo

    lines = []
    m = run_online_demo(_cfg(tmp_path / "a"), log=lines.append, model_folder=str(tiny), reward=REWARD,
                        prompts=(TRAIN, EVAL))
    out = tmp_path / "a"
    for name in ("report.md", "frontier_online.png", "metrics.json", "timings.json", "pairs.jsonl",
                 "prompts/train.jsonl", "prompts/eval.jsonl", "dpo-beta0.1/adapter_config.json",
                 "ppo-beta0.05/adapter_model.safetensors", "grpo-beta0.04/adapter_config.json",
                 "rloo-beta0.05/adapter_config.json", "online_dpo-beta0.1/adapter_config.json",
                 "arithmetic/accuracy.json", "arithmetic/train.jsonl", "arithmetic/eval.jsonl",
                 "arithmetic/adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    assert (out / "frontier_online.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "metrics.json").read_text())
    assert [(r["algorithm"], r["beta"]) for r in saved["runs"]] == [
        ("dpo", 0.1), ("ppo", 0.05), ("grpo", 0.04), ("rloo", 0.05), ("online_dpo", 0.1)]
    for run in saved["runs"]:
        for key in ("reward_mean", "reward_se", "win_rate", "kl", "kl_se", "train_s", "eval_s"):
            assert isinstance(run[key], float), (run["name"], key)
    online = [r for r in saved["runs"] if r["algorithm"] != "dpo"]
    assert all(r["train"]["steps"] == 2 for r in online)  # two rollouts each, logged by the online method
    # the online runs were trained by the online method on the demo's prompts, rendered with the empty system turn
    done = json.loads((out / "grpo-beta0.04" / "run_complete.json").read_text())
    assert done["method"] == "online" and done["algorithm"] == "grpo"
    rows = [json.loads(x) for x in (out / "prompts" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["prompt"][0] == {"role": "system", "content": ""}
    report = (out / "report.md").read_text()
    for needle in ("## Frontier", "| PPO ", "| GRPO ", "| RLOO ", "| online DPO ", "| LoRA-DPO (offline) ",
                   "| best-of-4 (reference)", "frontier_online.png", "## Verifiable reward: arithmetic"):
        assert needle in report, needle
    assert "(frontier.png)" not in report and not (out / "frontier.png").exists()
    assert f"{saved['runs'][2]['reward_mean']:.3f}" in report  # numbers come from the run
    a = json.loads((out / "arithmetic" / "accuracy.json").read_text())
    assert a["reward"] == "math" and a["decoding"] == "greedy" and a["eval_problems"] == 6
    assert 0.0 <= a["before"]["accuracy"] <= 1.0 and 0.0 <= a["after"]["accuracy"] <= 1.0
    assert m["arithmetic"]["after"] == a["after"]
    timings = json.loads((out / "timings.json").read_text())
    assert {"setup", "reference samples", "train grpo β=0.04", "arithmetic: train", "total"} <= set(timings)
    assert timings["cpu_seconds"]["total"] > 0
    assert any(line.startswith("estimate: ~") for line in lines)


def test_arithmetic_problems_are_distinct_correct_and_held_out():
    from prefalign.demo.online import arithmetic_problems, exact_number
    from prefalign.reward import load_reward

    train, held = arithmetic_problems(200, 100, seed=0)
    assert len(train) == 200 and len(held) == 100
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    for r in train + held:
        expr = r["prompt"].removeprefix("What is ").split("?")[0]
        assert eval(expr) == int(r["answer"])  # noqa: S307 — our own generated "a op b"
    assert arithmetic_problems(200, 100, seed=0) == (train, held)
    math_reward = load_reward("math")
    done = ["42", "The answer is 42.", "41", ""]
    want = [1.0, 1.0, 0.0, 0.0]
    got = math_reward(["q"] * 4, done, columns={"answer": ["42"] * 4}, allow_none=True).tolist()
    assert got == want
    assert exact_number(["q"] * 4, done, ["42"] * 4) == want  # the fallback agrees with `math` here


def test_cli_online_wiring(monkeypatch, tmp_path, capsys):
    from prefalign.cli import main
    from prefalign.demo import online

    seen = {}
    monkeypatch.setattr(online, "run_online_demo", lambda cfg, log=None: seen.setdefault("cfg", cfg))
    assert main(["demo", "--online", "--quick", "--out", str(tmp_path / "o"), "--threads", "1"]) == 0
    cfg = seen["cfg"]
    assert cfg.quick and cfg.steps == online.QUICK["steps"] and cfg.threads == 1 and cfg.out == str(tmp_path / "o")
    seen.clear()
    assert main(["demo", "--online"]) == 0
    assert not seen["cfg"].quick and seen["cfg"].out == "outputs/demo-online"
    assert main(["demo", "--online", "--sweep", "--beta", "0.2"]) == 2
    assert "--online does not take --sweep, --beta" in capsys.readouterr().err


def test_online_demo_refuses_a_callable_reward_and_a_foreign_folder(tmp_path):
    from prefalign.demo.online import run_online_demo

    from .stub_reward import score

    with pytest.raises(UserError, match="spec string"):
        run_online_demo(_cfg(tmp_path / "x"), log=lambda s: None, model_folder="unused", reward=score,
                        prompts=(TRAIN, EVAL))
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="does not hold a previous demo"):
        run_online_demo(_cfg(tmp_path, arithmetic=False), log=lambda s: None, model_folder="unused",
                        reward=REWARD, prompts=(TRAIN, EVAL))
    assert (tmp_path / "mine.txt").is_file()
