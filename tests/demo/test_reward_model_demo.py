"""`prefalign demo --reward-model` on a tiny random model with a stub oracle: the pipeline's files and numbers, the
best-of-n estimator of a learned pick, the statistics, and the CLI wiring (CPU, fp32, 1 thread)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from prefalign.errors import UserError

from .stub_reward import score

TRAIN = [f"Write one sentence about item {i}." for i in range(16)]
EVAL = [f"Write one sentence about thing {i}." for i in range(5)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead (conftest)


def _cfg(out, **kw):
    from prefalign.demo.reward_model import RewardDemoConfig

    base = dict(out=str(out), dtype="fp32", threads=1, train_prompts=16, n=3, max_new_tokens=6, eval_prompts=5,
                n_reference=4, epochs=1, batch_size=4, learning_rate=1e-2, test_fraction=0.25,
                calibration_fraction=0.25, reuse=None, score_batch_size=8)
    return RewardDemoConfig(**{**base, **kw})


def test_selected_best_of_n_matches_brute_force_over_subsets():
    from prefalign.demo.reward_model import selected_best_of_n
    from prefalign.evaluate.metrics import best_of_n_expected

    g = torch.Generator().manual_seed(0)
    select, oracle = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    for n in range(1, 7):
        got = selected_best_of_n(select, oracle, n)
        for i in range(3):
            subsets = list(itertools.combinations(range(6), n))
            want = sum(float(oracle[i, max(s, key=lambda j: select[i, j])]) for s in subsets) / len(subsets)
            assert float(got[i]) == pytest.approx(want, abs=1e-9)
        # selecting by the oracle itself is best-of-n's own estimate
        torch.testing.assert_close(selected_best_of_n(oracle, oracle, n), best_of_n_expected(oracle, n))
    with pytest.raises(ValueError):
        selected_best_of_n(select, oracle, 7)


def test_statistics_and_verdict():
    from prefalign.demo.reward_model import (
        best_of_n_comparison,
        pair_ranking_accuracy,
        ranks,
        spearman,
        verdict,
    )

    assert ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    x = torch.tensor([0.1, 0.5, 0.2, 0.9])
    assert spearman(x, x**3) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    acc, n = pair_ranking_accuracy(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 1.0]]))
    assert (acc, n) == (1.0, 2)  # the oracle's tie (0, 0) is left out
    # a learned reward equal to the oracle keeps all of best-of-n's gain, and its curve rises at every step
    g = torch.Generator().manual_seed(1)
    oracle = torch.rand(200, 16, generator=g)
    rows = best_of_n_comparison(oracle, oracle, (1, 2, 4, 8, 16))
    assert all(abs(r["gap"]) < 1e-12 for r in rows) and all(r["retained"] == pytest.approx(1) for r in rows[1:])
    v = verdict(rows)
    assert v["flattens_at"] is None and v["drops_at"] is None and v["peak_n"] == 16
    # a learned reward that is noise: its pick is a random sample, so the curve is flat from the first step
    noise = torch.rand(200, 16, generator=g)
    rows = best_of_n_comparison(noise, oracle, (1, 2, 4, 8, 16))
    assert abs(rows[-1]["learned_gain"]) < 4 * rows[-1]["learned_gain_se"] + 1e-9
    assert verdict(rows)["first_significant_gap_n"] == 2


def test_reward_model_demo_writes_its_report_and_reruns_identically(tmp_path):
    from prefalign.demo.reward_model import MARKER, _reusable_reference, run_reward_demo
    from prefalign.reward import load_reward
    from prefalign.testing import save_tiny

    folder = str(save_tiny(tmp_path / "tiny"))
    m = run_reward_demo(_cfg(tmp_path / "a"), log=lambda s: None, model_folder=folder, reward=score,
                        prompts=(TRAIN, EVAL))
    out = tmp_path / "a"
    for name in ("report.md", "metrics.json", "bon_learned_vs_oracle.png", "timings.json", MARKER, "samples.jsonl",
                 "reference_samples.jsonl", "pairs/train.jsonl", "pairs/calibration.jsonl", "pairs/test.jsonl",
                 "reward-eval/report.md", "reward-eval/reliability.png", "rm/config.json", "rm/reward_stats.json",
                 "rm/adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    assert (out / "bon_learned_vs_oracle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "metrics.json").read_text())
    sizes = [len((out / "pairs" / f"{k}.jsonl").read_text().splitlines()) for k in ("train", "calibration", "test")]
    assert sizes == [saved["pairs"][k] for k in ("train", "calibration", "test")]
    assert sum(sizes) == saved["demo"]["label"]["pairs"] and min(sizes) >= 1
    prompts = [json.dumps(json.loads(x)["prompt"]) for k in ("train", "calibration", "test")
               for x in (out / "pairs" / f"{k}.jsonl").read_text().splitlines()]
    assert len(set(prompts)) == len(prompts)  # split by prompt: no prompt in two splits
    assert [r["n"] for r in saved["best_of_n"]] == [1, 2, 4]
    first = saved["best_of_n"][0]
    assert first["oracle_pick"] == pytest.approx(first["learned_pick"])  # n = 1: both are a random sample
    for key in ("accuracy", "ece_before", "ece_after"):
        assert 0 <= saved["test"][key] <= 1
    assert saved["reward_model"]["temperature_fitted_on"] == "calibration pairs"
    # the test-pair numbers are those `prefalign reward eval` computes on the same folder and pairs
    from prefalign.cli import main

    assert main(["reward", "eval", "--model", str(out / "rm"), "--data", str(out / "pairs" / "test.jsonl"),
                 "--fit-data", str(out / "pairs" / "calibration.jsonl"), "--out", str(tmp_path / "ev"),
                 "--dtype", "fp32"]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["accuracy"] == pytest.approx(saved["test"]["accuracy"])
    assert ev["temperature"] == pytest.approx(saved["reward_model"]["temperature"], rel=1e-4)
    assert ev["ece_after"] == pytest.approx(saved["test"]["ece_after"], abs=1e-4)
    # the learned scores on the samples are what the saved folder gives as a reward (with the samples' context)
    rm = load_reward(str(out / "rm"))
    row = json.loads((out / "reference_samples.jsonl").read_text().splitlines()[0])
    prompt = [{"role": "system", "content": ""}, {"role": "user", "content": row["prompt"]}]
    got = rm([prompt], [[{"role": "assistant", "content": row["completions"][0]}]])
    assert torch.isfinite(got).all()
    report = (out / "report.md").read_text()
    assert "| n " in report and "bon_learned_vs_oracle.png" in report and f"{saved['test']['accuracy']:.3f}" in report
    assert "flattens" in report or "rises" in report or "drops" in report
    assert not any(isinstance(v, float) and math.isnan(v) for v in saved["correlation"].values())
    # same seed, same report
    run_reward_demo(_cfg(tmp_path / "b"), log=lambda s: None, model_folder=folder, reward=score,
                    prompts=(TRAIN, EVAL))
    assert (tmp_path / "b" / "report.md").read_text() == report
    # reference samples from a previous demo folder are reused only when drawn under the same settings
    demo = tmp_path / "demo"
    (demo / "prompts").mkdir(parents=True)
    settings = {"seed": 0, "max_new_tokens": 6, "sample_batch_size": 32, "n_reference": 4, "system": "", "threads": 1}
    (demo / "demo.json").write_text(json.dumps(settings))
    (demo / "metrics.json").write_text(json.dumps({"demo": {"dtype": "fp32", "model": "tiny"}}))
    (demo / "prompts" / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in EVAL))
    (demo / "reference_samples.jsonl").write_text((out / "reference_samples.jsonl").read_text())
    lines = []
    m2 = run_reward_demo(_cfg(tmp_path / "c", reuse=str(demo)), log=lines.append, model_folder=folder,
                         reward=score, prompts=(TRAIN, EVAL))
    assert any("reusing" in x for x in lines)
    assert m2["best_of_n"] == m["best_of_n"]
    (demo / "demo.json").write_text(json.dumps({**settings, "seed": 5}))
    lines.clear()
    assert _reusable_reference(_cfg(tmp_path / "d", reuse=str(demo)), "fp32", "tiny", EVAL, lines.append) is None
    assert any("other settings (seed)" in x for x in lines)


def test_refuses_a_folder_it_did_not_write(tmp_path):
    from prefalign.demo.reward_model import run_reward_demo

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="does not hold a previous reward-model demo"):
        run_reward_demo(_cfg(tmp_path), log=lambda s: None, model_folder="unused", reward=score,
                        prompts=(TRAIN, EVAL))
    assert (tmp_path / "mine.txt").is_file()


def test_cli_flag_builds_the_reward_model_config(monkeypatch, tmp_path):
    from prefalign import cli
    from prefalign.demo import reward_model

    seen = {}
    monkeypatch.setattr(reward_model, "run_reward_demo", lambda cfg, log=None: seen.setdefault("cfg", cfg))
    assert cli.main(["demo", "--reward-model", "--quick", "--seed", "3", "--out", str(tmp_path / "o")]) == 0
    cfg = seen["cfg"]
    assert isinstance(cfg, reward_model.RewardDemoConfig) and cfg.quick and cfg.seed == 3
    assert cfg.out == str(tmp_path / "o") and cfg.n_reference == reward_model.QUICK["n_reference"]
    seen.clear()
    assert cli.main(["demo", "--reward-model"]) == 0 and seen["cfg"].out == "outputs/demo-rm"
    assert cli.main(["demo", "--reward-model", "--sweep"]) == 2  # flags of the DPO demo are refused
