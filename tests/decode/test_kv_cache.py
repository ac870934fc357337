"""Decoding caches: ``kv_cache.ReservedLayer`` (in-place writes) and ``grouped_attention`` (one prompt KV per group)
decode exactly what transformers' ``DynamicCache`` decodes."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers.cache_utils import DynamicLayer

from prefalign.decode import grouped_attention
from prefalign.decode.generate import Stream, cache_kwarg, new_cache
from prefalign.decode.kv_cache import ReservedLayer, reserve_layers
from prefalign.online.rollout import SamplingOptions, generate_groups

PROMPTS = [[5, 9, 13, 2, 7, 7, 30], [11, 4], [8, 8, 21, 3, 40]]  # 3 lengths: left padding


def llama(kv_heads: int = 4, attn: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
                      attn_implementation=attn)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(8)  # peaked distributions: sampled ids depend on the logits
    return m


def rollout(model, kv_cache: str, g: int = 3, n: int = 9, seed: int = 0, **opts):
    return generate_groups(model, PROMPTS, g, SamplingOptions(max_new_tokens=n, kv_cache=kv_cache, **opts), [1],
                           0, torch.Generator().manual_seed(seed))


@pytest.fixture
def count_grouped(monkeypatch):
    """How often the grouped attention function ran (so a test sees the path it checks was taken)."""
    calls = []
    inner = grouped_attention.grouped_attention

    def counting(*a, **k):
        calls.append(1)
        return inner(*a, **k)

    monkeypatch.setitem(grouped_attention.ALL_ATTENTION_FUNCTIONS._global_mapping, grouped_attention.NAME, counting)
    return calls


@pytest.mark.parametrize("kv_heads,attn", [(4, "sdpa"), (2, "sdpa"), (1, "eager"), (2, "eager")])
def test_grouped_rollout_equals_the_repeated_cache(kv_heads, attn, count_grouped):
    model = llama(kv_heads, attn)
    assert grouped_attention.supported(model, new_cache(model))
    on = rollout(model, "grouped", top_k=20)
    assert len(count_grouped) == 2 * (9 - 1)  # 2 layers × every decoding step after the prefill
    for other in ("in_place", "dynamic"):
        off = rollout(model, other, top_k=20)
        assert len(count_grouped) == 2 * (9 - 1)  # not grouped: never
        assert on.completion_ids == off.completion_ids, other
        torch.testing.assert_close(on.logq_tensor(), off.logq_tensor(), atol=1e-5, rtol=0)
    assert model.config._attn_implementation == attn  # switched back after every step


def test_grouped_logits_equal_uncached_forward_per_row():
    """Each row's last-step logits, from the grouped cache, equal one uncached forward of prompt + its tokens."""
    model = llama(2)
    s = rollout(model, "grouped", g=2, n=6)
    for n, (comp, q) in enumerate(zip(s.completion_ids, s.logq)):
        prompt = PROMPTS[n // 2]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + comp])).logits[0, len(prompt) - 1 : -1]  # [t, V]
        expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(comp)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(q), expected, atol=1e-5, rtol=0)


def test_sliding_window_model_is_not_grouped_and_still_exact(count_grouped):
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=4, max_position_embeddings=128)
    model = MistralForCausalLM(cfg).eval()
    assert not grouped_attention.supported(model, new_cache(model))
    on, off = rollout(model, "grouped"), rollout(model, "dynamic")
    assert not count_grouped and on.completion_ids == off.completion_ids


def test_grouped_layer_refuses_edits_it_cannot_do_exactly():
    layer = grouped_attention.GroupedLayer(4)
    k = torch.randn(2, 1, 3, 8)
    layer.update(k, k)
    layer.batch_repeat_interleave(2)
    layer.update(torch.randn(4, 1, 1, 8), torch.randn(4, 1, 1, 8))
    assert layer.get_seq_length() == 4
    full_k, _ = layer.full()
    assert full_k.shape == (4, 1, 4, 8) and torch.equal(full_k[1, :, :3], k[0])
    with pytest.raises(RuntimeError, match="expands only"):
        layer.batch_repeat_interleave(2)
    for edit in (lambda: layer.crop(-1), lambda: layer.batch_select_indices(torch.tensor([0]))):
        with pytest.raises(NotImplementedError):
            edit()


def test_kv_cache_option_is_checked():
    assert SamplingOptions(kv_cache="paged").problems() == ["kv_cache must be one of grouped, in_place, dynamic, "
                                                           "got 'paged'"]


def test_reserved_layer_decodes_like_dynamic_layer_also_past_its_reserve():
    model = llama(2)
    ids = torch.tensor([[0, 0, 5, 9, 13], [4, 8, 8, 21, 3]])
    mask = (ids != 0).long()
    plain, reserved = Stream(model, ids, mask), Stream(model, ids, mask)
    reserved.reserve(2)  # room for 7 positions; 8 steps go past it (the buffer doubles)
    assert all(isinstance(layer, ReservedLayer) for layer in reserved.cache.layers)
    a, b = plain.prefill(), reserved.prefill()
    for _ in range(8):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        tok = a.argmax(-1)
        a, b = plain.step(tok), reserved.step(tok)
    assert reserved.cache.get_seq_length() == plain.cache.get_seq_length() == 13


def test_reserved_layer_batch_edits_match_dynamic_layer():
    kv = torch.randn(3, 2, 5, 4)
    dyn, res = DynamicLayer(), ReservedLayer(16)
    for layer in (dyn, res):
        layer.update(kv, kv + 1)
    for edit in (lambda x: x.batch_repeat_interleave(2), lambda x: x.batch_select_indices(torch.tensor([5, 0, 2])),
                 lambda x: x.crop(-2), lambda x: x.reorder_cache(torch.tensor([2, 1, 0]))):
        edit(dyn), edit(res)
        assert torch.equal(dyn.keys, res.keys) and torch.equal(dyn.values, res.values)
        assert dyn.get_seq_length() == res.get_seq_length()
    new = torch.randn(3, 2, 1, 4)
    assert torch.equal(dyn.update(new, new)[0], res.update(new, new)[0])


def test_hf_generate_with_a_reserved_cache_equals_its_own_including_beam_search():
    model = llama(2)
    ids = torch.tensor([[0, 5, 9, 13], [4, 8, 21, 3]])
    mask = (ids != 0).long()
    for kw in (dict(do_sample=False), dict(do_sample=False, num_beams=2)):
        expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0, **kw)
        cache = reserve_layers(DynamicCache(config=model.config), ids.shape[1] + 6)
        got = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0,
                             **{cache_kwarg(model): cache}, **kw)
        assert torch.equal(expected, got), kw
