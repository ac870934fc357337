"""Decoding methods as policies: the decode loop's log q(y|x) and KL estimates against a reference."""

import copy
import json
import math

import pytest
import torch
from tests.demo.stub_reward import score

from prefalign.decode.generate import GenOptions
from prefalign.decode.run import run_decode
from prefalign.evaluate import EvalConfig, completion_logprobs, evaluate_policy, reference_samples
from prefalign.evaluate.decoding import evaluate_decoding
from prefalign.testing import tiny_model

PROMPTS = ["hello there", "write a line", "one more", "and a fourth"]


@pytest.fixture(scope="module")
def model(tiny_tok):
    return tiny_model(tiny_tok, seed=1).eval()


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_logq_is_the_log_prob_of_the_drawn_ids_under_the_sampling_rule(model, tiny_tok, temperature, top_p):
    res = run_decode("sample", model, tiny_tok, PROMPTS, max_new_tokens=8, temperature=temperature, top_p=top_p,
                     seed=4)
    ids = [d["token_ids"] for d in res.info]
    logq = torch.tensor([d["logq"] for d in res.info])
    lp = completion_logprobs(model, tiny_tok, PROMPTS, ids, GenOptions(), progress=False)  # T = 1, no top-p
    if temperature == 1.0:
        torch.testing.assert_close(logq, lp.to(logq), atol=1e-4, rtol=0)  # q = π: teacher forcing agrees
    else:
        assert not torch.allclose(logq, lp.to(logq), atol=1e-2)  # a tempered, truncated q is another policy
        assert bool((logq <= 0).all())
    greedy = run_decode("sample", model, tiny_tok, PROMPTS, max_new_tokens=8, temperature=0)
    assert all(d["logq"] == 0.0 for d in greedy.info)  # a point mass


def test_dera_at_lambda_one_is_evaluated_exactly_like_the_policy(model, tiny_tok):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    policy = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"],
                                                             init_lora_weights=False)).eval()
    cfg = EvalConfig(max_new_tokens=8, n_reference=3, n_policy=2, batch_size=8, seed=2)
    ref = reference_samples(policy, tiny_tok, PROMPTS, score, cfg, context=policy.disable_adapter, progress=False)
    plain = evaluate_policy(policy, tiny_tok, PROMPTS, score, cfg, ref, reference_context=policy.disable_adapter,
                            progress=False)
    dera = evaluate_decoding("dera", {"lam": 1.0}, policy, tiny_tok, PROMPTS, score, cfg, ref,
                             reference_context=policy.disable_adapter, progress=False)
    ids = tiny_tok(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        moved = policy(input_ids=ids).logits
        with policy.disable_adapter():
            moved = (moved - policy(input_ids=ids).logits).abs().max()
    assert moved > 0.1  # the adapter moved the policy (a sample KL from 2 draws per prompt is too noisy to show it)
    for key in ("reward_mean", "win_rate", "kl", "length"):
        assert dera[key] == pytest.approx(plain[key], abs=1e-5), key
    # λ = 0 decodes the reference itself: KL 0 on every sample
    zero = evaluate_decoding("dera", {"lam": 0.0}, policy, tiny_tok, PROMPTS, score, cfg, ref,
                             reference_context=policy.disable_adapter, progress=False)
    assert abs(zero["kl"]) < 1e-4 and zero["kl_se"] < 1e-4


def test_evaluate_cli_places_decoding_methods_next_to_each_other(tiny_model_dir, tmp_path, capsys):
    from prefalign.cli import main

    (tmp_path / "eval.txt").write_text("\n".join(PROMPTS))
    base = ["evaluate", "--model", str(tiny_model_dir), "--prompts", str(tmp_path / "eval.txt"), "--reward",
            "tests.demo.stub_reward:score", "--n-reference", "4", "--max-new-tokens", "6", "--threads", "1"]
    assert main([*base, "--out", str(tmp_path / "ev"), "--decode", "sample", "--decode", "best_of_n",
                 "--hparam", "n=2", "--decode", "args", "--hparam", "k=3", "--hparam", "w=2"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    runs = {r["name"]: r for r in m["runs"]}
    assert list(runs) == ["sample", "best_of_n (n=2)", "args (k=3, w=2)"]  # no plain policy run: it is the reference
    assert abs(runs["sample"]["kl"]) < 1e-4  # the model against itself
    assert runs["best_of_n (n=2)"]["kl"] == pytest.approx(math.log(2) - 0.5)
    assert runs["args (k=3, w=2)"]["kl"] > 0
    assert "| args (k=3, w=2)" in capsys.readouterr().out
    assert (tmp_path / "ev" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):  # --hparam belongs to a --decode
        main([*base, "--out", str(tmp_path / "x"), "--hparam", "n=2"])
    assert main([*base, "--out", str(tmp_path / "y"), "--decode", "daemon"]) == 2
    assert "no tractable log q" in capsys.readouterr().err
