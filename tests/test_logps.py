"""Log-probs of completion tokens: exact against a naive log-softmax, and padding invariant."""

from __future__ import annotations

import torch

from prefalign.logps import sequence_logps
from prefalign.testing import tiny_model


def _naive(model, ids, am, cm):
    logp = model(input_ids=ids, attention_mask=am).logits[:, :-1].float().log_softmax(-1)  # [N, L-1, V]
    tok = logp.gather(2, ids[:, 1:, None]).squeeze(2)  # [N, L-1]
    return (tok * cm[:, 1:]).sum(-1)


def test_matches_naive_log_softmax_and_gradients(tiny_tok):
    model = tiny_model(tiny_tok, seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(tiny_tok), (3, 17), generator=g)
    am = torch.ones_like(ids)
    am[1, 12:] = 0
    cm = torch.zeros_like(ids)
    cm[:, 9:] = 1
    cm *= am
    out = sequence_logps(model, ids, am, cm, chunk_size=5)
    ref = _naive(model, ids, am, cm)
    torch.testing.assert_close(out.seq_logps, ref, atol=1e-4, rtol=1e-6)
    assert out.n_tokens.tolist() == [8, 3, 8]
    ga = torch.autograd.grad(out.seq_logps.sum(), model.lm_head.weight)[0]
    gb = torch.autograd.grad(ref.sum(), model.lm_head.weight)[0]
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)


def test_padding_invariance(tiny_tok):
    """A row's log-probs do not change with the other rows in its batch (right padding)."""
    model = tiny_model(tiny_tok, seed=2).eval()
    row = torch.tensor([[10, 11, 12, 13, 14, 15, 16]])
    cm_row = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    alone = sequence_logps(model, row, torch.ones_like(row), cm_row)
    long = torch.randint(4, len(tiny_tok), (2, 25), generator=torch.Generator().manual_seed(3))
    ids = torch.full((3, 25), tiny_tok.pad_token_id)
    ids[0, :7], ids[1:] = row[0], long
    am = torch.zeros_like(ids)
    am[0, :7], am[1:] = 1, 1
    cm = torch.zeros_like(ids)
    cm[0, :7], cm[1:, 20:] = cm_row[0], 1
    batched = sequence_logps(model, ids, am, cm)
    torch.testing.assert_close(batched.seq_logps[0], alone.seq_logps[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.token_logps[0, :6], alone.token_logps[0], atol=1e-5, rtol=0)
