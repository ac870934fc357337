"""Group rollouts (``online.rollout.generate_groups``): shared prefill, exactness, sampling law, recorded log q."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.data.batch import collate_completions
from prefalign.logps import sequence_logps
from prefalign.online.rollout import RolloutSamples, SamplingOptions, generate_groups
from prefalign.testing import tiny_model

TEXTS = ["What is the capital of France?", "cat", "Tell me a joke about a dog."]  # 3 lengths: left padding


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead (conftest)


@pytest.fixture(scope="module")
def model(tiny_tok):
    return tiny_model(tiny_tok).eval()


@pytest.fixture(scope="module")
def peaked(tiny_tok):
    """Sharper next-token distributions than a fresh init's near-uniform ones (so filters and EOS bite)."""
    m = tiny_model(tiny_tok, seed=1).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(25)
    return m


@pytest.fixture(scope="module")
def prompts(tiny_tok):
    return [tiny_tok.encode(t) for t in TEXTS]


def gen(model, prompts, g, eos, pad, seed=0, **opts) -> RolloutSamples:
    return generate_groups(model, prompts, g, SamplingOptions(**opts), eos, pad,
                           torch.Generator().manual_seed(seed))


def full_logits(model, prompt, completion) -> torch.Tensor:
    """[len(completion), V] logits predicting each completion token, from one uncached, unpadded forward."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(completion)].float()


def hf_greedy(model, prompt, n, eos, pad) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         eos_token_id=eos, pad_token_id=pad)
    return out[0, len(prompt):].tolist()


def test_greedy_and_top_k_1_equal_independent_hf_generate_with_left_padding_and_eos(model, tiny_tok, prompts):
    pad, n, g = tiny_tok.pad_token_id, 12, 3
    free = [hf_greedy(model, p, n, [], pad) for p in prompts]
    # an "EOS" that prompt 0's greedy text reaches early but some other prompt's never does: rows end at
    # different steps, and some not at all
    eos = next(t for t in free[0][1:6] if any(t not in f for f in free[1:]))
    hf = [hf_greedy(model, p, n, [eos], pad) for p in prompts]
    assert any(len(h) < n for h in hf) and any(eos not in h for h in hf)
    for opts in (dict(temperature=0), dict(temperature=1.0, top_k=1), dict(temperature=0, batch_prompts=2)):
        s = gen(model, prompts, g, [eos], pad, max_new_tokens=n, **opts)
        assert s.completion_ids == [hf[i // g] for i in range(len(prompts) * g)], opts
        assert s.truncated == [eos not in hf[i // g] for i in range(len(prompts) * g)]
        assert all(q == 0.0 for row in s.logq for q in row)  # a point mass: log q = 0 exactly


def _filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """[V] the sampling law, written out plainly: softmax(z / T) in fp64; keep the top k, renormalise; keep the
    shortest prefix (by probability) whose mass reaches top_p, renormalise."""
    p, order = torch.softmax(logits.double() / temperature, -1).sort(descending=True)  # [V] each
    if top_k:
        p = torch.where(torch.arange(len(p)) < top_k, p, 0.0)
    p = p / p.sum()
    p = torch.where(p.cumsum(-1) - p < top_p, p, 0.0)  # a token stays while the mass before it is < top_p
    return torch.zeros_like(p).scatter(0, order, p / p.sum())


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square goodness of fit; cells with expected count < 5 are pooled into one."""
    expected = probs * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    obs, exp = obs[exp > 0], exp[exp > 0]
    assert len(obs) > 2, "a degenerate law: the test would prove nothing"
    stat = ((obs - exp) ** 2 / exp).sum()
    return torch.special.gammaincc(torch.tensor((len(obs) - 1) / 2.0), stat / 2).item()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 0.9)])
def test_first_two_tokens_follow_the_exact_sampling_law(temperature, top_k, top_p):
    """4000 completions of each of 2 prompts (lengths 4 and 2): the empirical law of (y1, y2) over V² = 64 cells
    matches the exact q(y1)·q(y2 | y1) computed by uncached forwards (chi-square p > 1e-3; the seed is fixed, so
    this is a fixed check of power ~1 against the wrong law below, not a flaky one), nothing falls outside the
    support, and each sample's summed log q is log q(y1, y2) to 1e-5."""
    v, g = 8, 4000
    m = tiny_model(vocab_size=v, hidden_size=16, layers=2, seed=3).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(10)  # top-2 mass ≈ 0.6: spread, yet far from uniform
    prompts = [[1, 2, 3, 4], [5, 6]]
    s = gen(m, prompts, g, [], pad=0, seed=1, max_new_tokens=2, temperature=temperature, top_k=top_k, top_p=top_p)
    exact = []
    for p in prompts:
        with torch.no_grad():
            q1 = _filtered_probs(m(input_ids=torch.tensor([p])).logits[0, -1], temperature, top_k, top_p)
            rows = [_filtered_probs(m(input_ids=torch.tensor([p + [a]])).logits[0, -1], temperature, top_k, top_p)
                    for a in range(v)]
        exact.append(q1[:, None] * torch.stack(rows))  # [V, V]
    ids = torch.tensor(s.completion_ids)  # [P·G, 2]
    logq = s.seq_logq().double()  # [P·G]
    for i in range(len(prompts)):
        rows = slice(i * g, (i + 1) * g)
        cell = ids[rows, 0] * v + ids[rows, 1]  # [G]
        counts = torch.bincount(cell, minlength=v * v).double()
        law = exact[i].flatten()
        assert (counts[law == 0] == 0).all()  # top-k / top-p: never outside the support
        assert _chi2_pvalue(counts, law) > 1e-3
        assert _chi2_pvalue(counts, exact[1 - i].flatten()) < 1e-6  # the other prompt's law is rejected
        torch.testing.assert_close(logq[rows], law[cell].log(), atol=1e-5, rtol=0)


def likely_tokens(model, prompt, k: int) -> list[int]:
    """The k most likely first tokens after ``prompt`` (a stand-in EOS the random model actually emits)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([prompt])).logits[0, -1].topk(k).indices.tolist()


def test_same_seed_same_rollout_and_truncation_flags(peaked, tiny_tok, prompts):
    # stand-in EOS ids the random model does emit (each prompt's 2 likeliest first tokens): some rows end, some don't
    eos = sorted({t for p in prompts for t in likely_tokens(peaked, p, 2)})
    run = lambda seed, b=None: gen(peaked, prompts, 4, eos, tiny_tok.pad_token_id, seed=seed, max_new_tokens=10,
                                   top_p=0.95, batch_prompts=b)
    a, b = run(5), run(5)
    assert a.completion_ids == b.completion_ids and a.logq == b.logq and a.truncated == b.truncated
    assert run(6).completion_ids != a.completion_ids
    assert run(5, 1).completion_ids == run(5, 1).completion_ids
    assert any(a.truncated) and not all(a.truncated)  # both kinds occur, so the flags are checked
    for c, q, t in zip(a.completion_ids, a.logq, a.truncated):
        assert len(q) == len(c)
        assert not set(eos) & set(c[:-1])  # nothing after the EOS
        assert t == (c[-1] not in eos) and (not t or len(c) == 10)
    assert a.completion_mask().sum().item() == sum(len(c) for c in a.completion_ids)
    texts = a.texts(tiny_tok)
    assert texts[0] == tiny_tok.decode(a.completion_ids[0][: None if a.truncated[0] else -1],
                                       skip_special_tokens=True)


def test_logq_equals_training_path_logps_at_t1_and_scaled_logits_otherwise(model, tiny_tok, prompts):
    pad, eos = tiny_tok.pad_token_id, [tiny_tok.eos_token_id]
    s = gen(model, prompts, 2, eos, pad, seed=2, max_new_tokens=9)
    lp = sequence_logps(model, collate_completions(s.prompt_of_each(), s.completion_ids, pad))
    assert torch.equal(lp.mask, s.completion_mask())
    torch.testing.assert_close(s.logq_tensor(), lp.token_logps, atol=1e-5, rtol=0)
    t = 0.7
    s = gen(model, prompts, 2, eos, pad, seed=2, max_new_tokens=9, temperature=t)
    for p, c, q in zip(s.prompt_of_each(), s.completion_ids, s.logq):
        want = torch.log_softmax(full_logits(model, p, c) / t, -1).gather(-1, torch.tensor(c)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(q), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("top_k,top_p,temperature", [(3, 1.0, 1.0), (0, 0.5, 1.0), (20, 0.6, 0.8)])
def test_top_k_top_p_restrict_support_and_renormalise_logq(peaked, tiny_tok, prompts, top_k, top_p, temperature):
    s = gen(peaked, prompts, 4, [tiny_tok.eos_token_id], tiny_tok.pad_token_id, seed=4, max_new_tokens=6,
            top_k=top_k, top_p=top_p, temperature=temperature)
    for p, c, q in zip(s.prompt_of_each(), s.completion_ids, s.logq):
        logits = full_logits(peaked, p, c)  # [len(c), V]
        for tok, lq, z in zip(c, q, logits):
            law = _filtered_probs(z, temperature, top_k, top_p)
            assert law[tok] > 0  # in the allowed set
            assert abs(lq - math.log(law[tok].item())) < 1e-5


def test_prompt_prefilled_once_per_group(model, tiny_tok):
    """Forward passes see P·L prompt tokens once, then P·G tokens per step (not G·P·L), also with
    ``config.use_cache = False`` (as training leaves it): generation still uses the cache."""
    p, g, n, length = 2, 4, 5, 7
    prompts = [list(range(10, 10 + length)), list(range(40, 40 + length))]
    seen = []
    hook = model.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["input_ids"].numel()),
                                           with_kwargs=True)
    model.config.use_cache = False
    try:
        s = gen(model, prompts, g, [tiny_tok.eos_token_id], tiny_tok.pad_token_id, max_new_tokens=n,
                ignore_eos=True)
    finally:
        model.config.use_cache = True
        hook.remove()
    assert seen == [p * length] + [p * g] * (n - 1)  # no forward for the last token's logits
    assert sum(seen) == p * length + (n - 1) * p * g
    greedy_cached = gen(model, prompts, 1, [], tiny_tok.pad_token_id, max_new_tokens=n, temperature=0)
    greedy_hf = [hf_greedy(model, q, n, [], tiny_tok.pad_token_id) for q in prompts]
    assert greedy_cached.completion_ids == greedy_hf and len(s) == p * g


def test_ignore_eos_gives_exactly_max_new_tokens(peaked, tiny_tok, prompts):
    with torch.no_grad():  # the EOS most likely first: without ignore_eos it would end rows at once
        eos = int(peaked(input_ids=torch.tensor([prompts[0]])).logits[0, -1].argmax())
    stopped = gen(peaked, prompts[:1], 8, [eos], tiny_tok.pad_token_id, max_new_tokens=7)
    assert not all(stopped.truncated)
    s = gen(peaked, prompts, 8, [eos], tiny_tok.pad_token_id, max_new_tokens=7, ignore_eos=True)
    assert all(len(c) == 7 and eos not in c for c in s.completion_ids) and all(s.truncated)
    for p, c, q in zip(s.prompt_of_each()[:8], s.completion_ids[:8], s.logq[:8]):
        z = full_logits(peaked, p, c)
        z[:, eos] = float("-inf")  # log q is under the EOS-free law that was sampled
        want = torch.log_softmax(z, -1).gather(-1, torch.tensor(c)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(q), want, atol=1e-5, rtol=0)


def test_all_done_keeps_stepping_until_every_rank_is_done(peaked, tiny_tok, prompts):
    pad = tiny_tok.pad_token_id
    free = [hf_greedy(peaked, p, 3, [], pad) for p in prompts]
    eos = sorted({f[2] for f in free})  # every greedy row ends by its third token
    local = gen(peaked, prompts, 2, eos, pad, max_new_tokens=30, temperature=0)
    calls = []

    def other_ranks_busy_for_3_more(done: bool) -> bool:  # a stand-in for an all-reduce over ranks
        calls.append(done)
        return sum(calls) > 3

    s = generate_groups(peaked, prompts, 2, SamplingOptions(max_new_tokens=30, temperature=0), eos, pad,
                        all_done=other_ranks_busy_for_3_more)
    assert s.completion_ids == local.completion_ids and s.truncated == local.truncated
    assert not any(local.truncated)  # every row ended early, so the extra steps ran past local completion
    assert calls[-4:] == [True] * 4


def test_peft_model_and_train_state_restored(model, tiny_tok, prompts):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(tiny_model(tiny_tok), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.train()
    lora.base_model.model.lm_head.eval()  # a module in its own mode: restored as it was, not to lora.training
    opts = dict(max_new_tokens=8, temperature=0)
    s = gen(lora, prompts, 2, [tiny_tok.eos_token_id], tiny_tok.pad_token_id, **opts)
    assert lora.training and not lora.base_model.model.lm_head.training
    base = gen(model, prompts, 2, [tiny_tok.eos_token_id], tiny_tok.pad_token_id, **opts)
    assert s.completion_ids == base.completion_ids  # LoRA starts as the identity (B = 0)


def test_options_problems_and_errors(model, tiny_tok):
    assert SamplingOptions().problems() == []
    assert SamplingOptions(temperature=0).problems() and not SamplingOptions(temperature=0).problems(greedy_ok=True)
    for bad in (dict(max_new_tokens=0), dict(top_k=-1), dict(top_p=0.0), dict(batch_prompts=0),
                dict(temperature=float("nan"))):
        assert SamplingOptions(**bad).problems(), bad
    with pytest.raises(ValueError, match="top-k"):
        gen(model, [[1, 2]], 2, [], 0, top_k=-3)
    with pytest.raises(ValueError, match="empty"):
        gen(model, [[1, 2], []], 2, [], 0)
    with pytest.raises(ValueError, match="group_size"):
        gen(model, [[1, 2]], 0, [], 0)
