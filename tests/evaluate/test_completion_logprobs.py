"""evaluate.completion_logprobs scores through the training path (collate_completions + sequence_logps, chunked)
and gives the old naive numbers: full [B, L, V] logits of each (prompt + completion) sequence, one at a time."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from prefalign.data.batch import collate_completions
from prefalign.decode.generate import GenOptions
from prefalign.evaluate import completion_logprobs
from prefalign.testing import tiny_model, tiny_tokenizer

PROMPTS = ["What is the capital of France?", "cat", "Tell me a joke about a dog, please.", "hi", "a b c"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok, seed=3).eval()


def completions(n: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    lengths = [7, 1, 12, 0, 4, 9, 3, 5, 2, 6][:n]
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lengths]


def naive(model, tok, prompts, comps, system=None, chat=True) -> torch.Tensor:
    """Old-style scoring: render to text, tokenize, full logits, log-softmax, one sequence at a time."""
    out = []
    for p, c in zip(prompts, comps):
        if chat:
            messages = ([{"role": "system", "content": system}] if system is not None else []) + \
                [{"role": "user", "content": p}]
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(p if system is None else f"{system}\n\n{p}")["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([ids + c])).logits[0].float().log_softmax(-1)  # [L, V]
        out.append(sum(float(logp[len(ids) - 1 + t, y]) for t, y in enumerate(c)))
    return torch.tensor(out)


@pytest.mark.parametrize("system, chat", [(None, None), ("Be kind.", None), (None, False), ("Be kind.", False)])
def test_equal_to_naive_full_logits_chat_and_plain_prompts(model, tok, system, chat):
    prompts = PROMPTS * 2
    comps = completions(len(prompts), len(tok))
    opts = GenOptions(system=system, chat=chat)
    new = completion_logprobs(model, tok, prompts, comps, opts, batch_size=3, chunk_size=4, progress=False)
    want = naive(model, tok, prompts, comps, system=system, chat=chat is not False)
    assert new.shape == (len(prompts),) and new.dtype == torch.float32
    torch.testing.assert_close(new, want, atol=1e-5, rtol=1e-5)
    assert float(new[3]) == 0.0  # an empty completion scores 0
    big = completion_logprobs(model, tok, prompts, comps, opts, batch_size=16, chunk_size=1024, progress=False)
    torch.testing.assert_close(big, new, atol=1e-5, rtol=1e-5)  # batching and chunking change nothing


def test_plain_tokenizer_model(tok):
    plain = tiny_tokenizer(chat_template=None)
    m = tiny_model(plain, seed=5).eval()
    comps = completions(len(PROMPTS), len(plain))
    new = completion_logprobs(m, plain, PROMPTS, comps, GenOptions(), batch_size=2, chunk_size=3, progress=False)
    torch.testing.assert_close(new, naive(m, plain, PROMPTS, comps, chat=False), atol=1e-5, rtol=1e-5)


def test_context_wraps_every_forward_and_disables_a_lora_adapter(model, tok):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    policy = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                             init_lora_weights=False)).eval()
    comps = completions(len(PROMPTS), len(tok))
    calls = []

    @contextlib.contextmanager
    def counting():
        calls.append(1)
        with policy.disable_adapter():
            yield

    ref = completion_logprobs(policy, tok, PROMPTS, comps, GenOptions(), batch_size=2, context=counting,
                              progress=False)
    assert len(calls) == 3  # one per batch
    torch.testing.assert_close(ref, naive(model, tok, PROMPTS, comps), atol=1e-5, rtol=1e-5)
    pol = completion_logprobs(policy, tok, PROMPTS, comps, GenOptions(), progress=False)
    torch.testing.assert_close(pol, naive(policy, tok, PROMPTS, comps), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pol, ref, atol=1e-3)  # the adapter matters


def test_collate_completions_plan_names_exactly_the_completion_tokens():
    batch = collate_completions([[5, 6, 7], [8]], [[1, 2], []], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 1, 2], [8, 0, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    sc = batch.scoring
    assert sc.pos.tolist() == [2, 3] and sc.target.tolist() == [1, 2] and sc.seq.tolist() == [0, 0]
    assert sc.num_seqs == 2 and sc.width == 2
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        collate_completions([[1], [2]], [[3]], pad_id=0)
