"""Best-of-n, ARGS, DeRa and Linear Alignment on tiny random Llamas, checked against plain greedy decoding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from prefalign.decode import linear_alignment_logits, method_hparams, run_decode
from prefalign.decode.generate import GenOptions, encode_prompts, eos_ids, finish_texts
from prefalign.errors import UserError
from prefalign.testing import tiny_model

PROMPTS = ["What is the capital of France?", "cat", "Tell me a joke.", "The quick brown", "yes", "Hello world"]
N_TOK = 12


def count_a(prompts, completions):
    """A prefix reward: how many times the letter 'a' appears in the text so far."""
    return [float(c.count("a")) for c in completions]


@pytest.fixture(scope="module")
def model(tiny_tok):
    return tiny_model(tiny_tok).eval()


@pytest.fixture(scope="module")
def peaky(tiny_tok):
    """A model with confident next-token distributions, so a reward has something to trade off against."""
    m = tiny_model(tiny_tok, seed=3).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(30)
    return m


def generate_greedy(model, tok, prompts, system=None):
    ids, mask = encode_prompts(tok, prompts, GenOptions(), system=system)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=N_TOK)
    return finish_texts(tok, out[:, ids.shape[1]:], eos_ids(tok, model), ())[0]


def greedy(method, model, tok, **kw):
    return run_decode(method, model, tok, PROMPTS, temperature=0, max_new_tokens=N_TOK, **kw)


# --- best-of-n -------------------------------------------------------------------------------------------

def test_best_of_n_keeps_the_highest_reward_sample(model, tiny_tok):
    out = run_decode("best_of_n", model, tiny_tok, PROMPTS, reward=count_a, hparams={"n": 6}, max_new_tokens=N_TOK)
    for completion, info in zip(out.completions, out.info):
        assert info["reward"] == max(info["rewards"]) == count_a([""], [completion])[0]
        assert len(info["rewards"]) == 6 and info["kl_bound"] == pytest.approx(math.log(6) - 5 / 6)
    single = run_decode("best_of_n", model, tiny_tok, PROMPTS, reward=count_a, hparams={"n": 1},
                        max_new_tokens=N_TOK, seed=5)
    plain = run_decode("sample", model, tiny_tok, PROMPTS, max_new_tokens=N_TOK, seed=5)
    assert single.completions == plain.completions  # n = 1 is plain sampling


# --- ARGS ------------------------------------------------------------------------------------------------

def test_args_with_zero_weight_is_greedy_decoding(model, tiny_tok):
    out = greedy("args", model, tiny_tok, reward=count_a, hparams={"k": 5, "w": 0.0})
    assert out.completions == generate_greedy(model, tiny_tok, PROMPTS)
    assert out.info[0]["reward_calls_total"] == 0  # w = 0 never calls the reward


def test_args_mean_reward_rises_with_weight(peaky, tiny_tok):
    means = []
    for w in [0.0, 0.3, 1.0, 3.0, 10.0]:
        out = greedy("args", peaky, tiny_tok, reward=count_a, hparams={"k": 10, "w": w})
        means.append(sum(i["reward"] for i in out.info) / len(PROMPTS))
    assert all(a <= b for a, b in itertools.pairwise(means)), means
    assert means[-1] > means[0] + 1, means


def test_args_scores_k_candidates_per_live_row_per_step(model, tiny_tok):
    calls = []

    def counting(prompts, completions):
        calls.append(len(completions))
        return count_a(prompts, completions)

    out = run_decode("args", model, tiny_tok, PROMPTS[:2], reward=counting, hparams={"k": 4, "w": 1.0},
                     temperature=0, max_new_tokens=5)
    assert calls[:-1] == [8] * 5  # one batched call per step: 2 rows × k; the last call scores the outputs
    assert out.info[0]["reward_calls_total"] == 40


# --- DeRa ------------------------------------------------------------------------------------------------

def test_dera_endpoints_are_the_two_models(model, tiny_tok):
    ref = tiny_model(tiny_tok, seed=7).eval()
    aligned_alone, ref_alone = generate_greedy(model, tiny_tok, PROMPTS), generate_greedy(ref, tiny_tok, PROMPTS)
    assert aligned_alone != ref_alone
    assert greedy("dera", model, tiny_tok, ref_model=ref, hparams={"lam": 1.0}).completions == aligned_alone
    assert greedy("dera", model, tiny_tok, ref_model=ref, hparams={"lam": 0.0}).completions == ref_alone


def test_dera_with_a_peft_model_uses_the_disabled_adapter_as_reference(tiny_tok):
    from peft import LoraConfig, get_peft_model

    base = tiny_model(tiny_tok).eval()
    base_alone = generate_greedy(base, tiny_tok, PROMPTS)
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model(tiny_tok), cfg).eval()
    adapted_alone = generate_greedy(peft_model, tiny_tok, PROMPTS)
    assert adapted_alone != base_alone  # the random adapter changes the greedy output
    assert greedy("dera", peft_model, tiny_tok, hparams={"lam": 1.0}).completions == adapted_alone
    assert greedy("dera", peft_model, tiny_tok, hparams={"lam": 0.0}).completions == base_alone
    assert generate_greedy(peft_model, tiny_tok, PROMPTS) == adapted_alone  # adapter is enabled again after


def test_dera_without_a_reference_is_a_user_error(model, tiny_tok):
    with pytest.raises(UserError, match="needs a reference model"):
        greedy("dera", model, tiny_tok, hparams={"lam": 0.5})


# --- Linear Alignment -----------------------------------------------------------------------------------

PRINCIPLE = "Be helpful and kind."


def test_linear_alignment_with_zero_alpha_is_principle_prompted_greedy(model, tiny_tok):
    out = greedy("linear_alignment", model, tiny_tok, hparams={"principle": PRINCIPLE, "alpha": 0.0})
    prompted = generate_greedy(model, tiny_tok, PROMPTS, system=PRINCIPLE)
    assert out.completions == prompted
    assert prompted != generate_greedy(model, tiny_tok, PROMPTS)  # the principle matters to this model
    stronger = greedy("linear_alignment", model, tiny_tok,
                      hparams={"principle": PRINCIPLE, "alpha": 5.0, "mask_top_p": 1.0})
    assert stronger.completions != out.completions


def test_linear_alignment_kl_to_principled_distribution_grows_with_alpha():
    # p_α ∝ p_0·exp(α·d) with d = z_p − z: dKL(p_α ‖ p_0)/dα = α·Var_α(d) ≥ 0.
    g = torch.Generator().manual_seed(0)
    z_p, z = torch.randn(4, 50, generator=g), torch.randn(4, 50, generator=g)
    base = torch.log_softmax(z_p, -1)
    kls = []
    for alpha in [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]:
        logq = torch.log_softmax(linear_alignment_logits(z_p, z, alpha), -1)
        kls.append(float((logq.exp() * (logq - base)).sum(-1).mean()))
    assert kls[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in itertools.pairwise(kls)), kls
    masked = linear_alignment_logits(z_p, z, 1.0, mask_top_p=0.5)
    assert bool(torch.isfinite(masked).any(-1).all()) and bool(torch.isinf(masked).any())


def test_linear_alignment_needs_a_principle(model, tiny_tok):
    with pytest.raises(UserError, match="no principle"):
        greedy("linear_alignment", model, tiny_tok)


# --- run_decode arguments --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"method": "beam"}, "unknown method 'beam'"),
    ({"method": "best_of_n", "hparams": {"m": 2}}, "unknown hparam 'm'"),
    ({"method": "best_of_n", "hparams": {"n": "two"}}, "n='two' is not a int"),
    ({"method": "best_of_n"}, "needs a reward"),
    ({"method": "sample", "temperature": -1.0}, "temperature must be >= 0"),
    ({"method": "best_of_n", "reward": count_a, "temperature": 0.0}, "would make them identical"),
    ({"method": "args", "reward": count_a, "hparams": {"k": 0}}, "k must be >= 1"),
])
def test_bad_arguments_are_one_line_user_errors(model, tiny_tok, kwargs, message):
    method = kwargs.pop("method")
    with pytest.raises(UserError, match=message) as e:
        run_decode(method, model, tiny_tok, PROMPTS, max_new_tokens=2, **kwargs)
    assert "\n" not in str(e.value)


def test_hparams_from_cli_strings_and_listing(model, tiny_tok):
    out = run_decode("args", model, tiny_tok, PROMPTS[:1], reward=count_a, hparams={"k": "3", "w": "0.5"},
                     max_new_tokens=2)
    assert out.hparams == {"k": 3, "w": 0.5} and out.info[0]["k"] == 3
    assert set(method_hparams("linear_alignment")) == {"principle", "alpha", "mask_top_p"}
    assert run_decode("sample", model, tiny_tok, []).completions == []
    with pytest.raises(UserError, match="prompt 2 is empty"):
        run_decode("sample", model, tiny_tok, ["hi", ""], chat=False, max_new_tokens=2)
