"""``collate_groups``'s completions per row: the same log-probs and gradients for every k, and the cost model's
choices (``online.rows``)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefalign.data.batch import collate_completions, collate_groups
from prefalign.logps import sequence_logps
from prefalign.online.rows import attention_ratio, completions_per_row
from prefalign.testing import tiny_model

PROMPTS = [[5, 9, 13, 2, 7], [11, 4]]
COMPS = [[3, 8, 1], [6], [9, 9, 2, 4], [7, 3], [12, 5, 5], [2], [8, 8], [4, 6, 1, 3]]  # G = 4, mixed lengths


def logps_and_grads(model, batch):
    model.zero_grad()
    out = sequence_logps(model, batch, chunk_size=3)
    weights = torch.arange(1.0, 1.0 + out.seq_logps.shape[0])  # a different weight per sequence
    (out.seq_logps * weights).sum().backward()
    return out.token_logps.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("per_row,pack", [(None, False), (3, False), (1, False), (2, True)])
def test_every_completions_per_row_gives_the_separate_log_probs_and_gradients(tiny_tok, per_row, pack):
    model = tiny_model(tiny_tok).train()
    plain = collate_completions([p for p in PROMPTS for _ in range(4)], COMPS, tiny_tok.pad_token_id)
    batch = collate_groups(PROMPTS, COMPS, 4, tiny_tok.pad_token_id, "shared_prefix", pack, per_row)
    rows = {None: 2, 3: 4, 1: 8, 2: 1}[per_row]  # a prompt per row, ⌈G / k⌉ rows per group (packed: one row)
    assert batch.input_ids.shape[0] == rows
    assert (batch.attention_mask.dim() == 2) == (per_row == 1 and not pack)  # a plain causal row needs no 4D mask
    a, ga = logps_and_grads(model, plain)
    b, gb = logps_and_grads(model, batch)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    prompt_copies = sum(len(p) * -(-4 // (per_row or 4)) for p in PROMPTS)  # ⌈G / k⌉ copies of each prompt
    assert batch.num_tokens == prompt_copies + sum(len(c) for c in COMPS)


def test_cost_model_shares_long_prompts_and_splits_long_completions():
    model = LlamaForCausalLM(LlamaConfig(hidden_size=512, num_hidden_layers=1, num_attention_heads=8,
                                         num_key_value_heads=8, intermediate_size=1408, vocab_size=100))
    layer = model.model.layers[0]
    rho = attention_ratio(model)
    assert rho == pytest.approx(2 * 512 / sum(p.numel() for p in layer.parameters()))  # 2·H·d / params
    assert completions_per_row([256] * 4, [64] * 32, 8, rho) == 8  # G1: the prompt once per group
    assert completions_per_row([32] * 4, [256] * 32, 8, rho) == 1  # G2: (32 + 8·256)² attention costs more
    assert completions_per_row([10], [10] * 8, 8, 0.0) == 8  # no attention cost: always share
    # the choice is the argmin of the stated cost
    cost = lambda k, L=32, T=128, G=8: -(-G // k) * ((L + k * T) + rho * (L + k * T) ** 2)  # noqa: E731
    assert completions_per_row([32] * 4, [128] * 32, 8, rho) == min(range(8, 0, -1), key=cost)
