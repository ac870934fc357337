"""Log-probs of completion tokens: exact against a naive log-softmax, padding invariant, layout invariant."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

from prefalign import objectives
from prefalign.data.batch import collate_pairs
from prefalign.data.types import PairExample
from prefalign.logps import Chunk, register_feature, sequence_logps
from prefalign.model import enable_checkpointing
from prefalign.testing import tiny_model


def _examples(vocab: int, lengths, seed: int = 0) -> list[PairExample]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(4, vocab, (n,), generator=g).tolist()
    return [PairExample(i + 1, rand(p), rand(c), rand(r)) for i, (p, c, r) in enumerate(lengths)]


def _naive(model, ex: PairExample, side: str) -> torch.Tensor:
    comp = ex.chosen_ids if side == "chosen" else ex.rejected_ids
    ids = torch.tensor([ex.prompt_ids + comp])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)  # [L-1, V]
    tok = logp.gather(1, ids[0, 1:, None]).squeeze(1)  # [L-1]
    return tok[len(ex.prompt_ids) - 1 :]  # completion tokens


MIXED = [(5, 3, 7), (9, 6, 2), (2, 4, 4)]


@pytest.mark.parametrize("layout", ["separate", "shared_prefix"])
def test_matches_naive_log_softmax(tiny_tok, layout):
    model = tiny_model(tiny_tok, seed=1)
    exs = _examples(len(tiny_tok), MIXED)
    batch = collate_pairs(exs, tiny_tok.pad_token_id, layout)
    out = sequence_logps(model, batch, chunk_size=5)
    b = len(exs)
    for i, ex in enumerate(exs):
        for s, side in ((i, "chosen"), (b + i, "rejected")):
            want = _naive(model, ex, side)
            n = len(want)
            assert int(out.n_tokens[s]) == n and bool(out.mask[s, :n].all()) and not out.mask[s, n:].any()
            torch.testing.assert_close(out.token_logps[s, :n], want, atol=1e-5, rtol=1e-5)


def test_padding_invariance(tiny_tok):
    """A row's log-probs do not change with the other rows in its batch (right padding)."""
    model = tiny_model(tiny_tok, seed=2).eval()
    short, *others = _examples(len(tiny_tok), [(3, 2, 2), (20, 9, 11), (15, 12, 3)], seed=5)
    for layout in ("separate", "shared_prefix"):
        alone = sequence_logps(model, collate_pairs([short], tiny_tok.pad_token_id, layout))
        batched = sequence_logps(model, collate_pairs([short, *others], tiny_tok.pad_token_id, layout))
        torch.testing.assert_close(batched.seq_logps[0], alone.seq_logps[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.seq_logps[3], alone.seq_logps[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo"])
@pytest.mark.parametrize("layout,pack,ckpt", [("shared_prefix", False, False), ("separate", True, False),
                                              ("shared_prefix", True, False), ("shared_prefix", False, True)])
def test_techniques_equal_plain_batches_loss_and_gradients(tiny_tok, name, layout, pack, ckpt):
    """Prefix sharing, packing and gradient checkpointing are exact: same loss and gradients (fp32, 1e-5) on rows
    of mixed lengths."""
    exs = _examples(len(tiny_tok), MIXED + [(11, 1, 8)], seed=3)
    obj = objectives.get(name)
    ref_model = tiny_model(tiny_tok, seed=7).eval()
    results = []
    for lay, pk, ck in (("separate", False, False), (layout, pack, ckpt)):
        model = tiny_model(tiny_tok, seed=4).train()  # checkpointing only acts in training mode
        if ck:
            enable_checkpointing(model)
            assert model.is_activation_checkpointing
        batch = collate_pairs(exs, tiny_tok.pad_token_id, lay, pack=pk)
        pol = sequence_logps(model, batch, chunk_size=4)
        with torch.no_grad():
            ref = sequence_logps(ref_model, batch).seq_logps
        b = len(exs)
        out = obj(objectives.PairLogps(pol.seq_logps[:b], pol.seq_logps[b:], ref[:b], ref[b:],
                                       pol.n_tokens[:b].float(), pol.n_tokens[b:].float()))
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in ga.values())


def test_shared_prefix_runs_fewer_tokens_and_packing_has_no_padding(tiny_tok):
    exs = _examples(len(tiny_tok), [(50, 5, 5), (10, 3, 2)])
    sep = collate_pairs(exs, tiny_tok.pad_token_id, "separate")
    shr = collate_pairs(exs, tiny_tok.pad_token_id, "shared_prefix")
    assert sep.num_tokens == 2 * 55 + 13 + 12 and shr.num_tokens == 60 + 15
    packed = collate_pairs(exs, tiny_tok.pad_token_id, "shared_prefix", pack=True)
    assert packed.input_ids.shape == (1, 75) and packed.num_tokens == 75
    assert packed.position_ids[0, 55:60].tolist() == [50, 51, 52, 53, 54]  # rejected restarts after the prompt
    assert packed.position_ids[0, 60:63].tolist() == [0, 1, 2]  # the next pair starts over


@pytest.mark.parametrize("layout,pack", [("separate", False), ("shared_prefix", False), ("separate", True),
                                         ("shared_prefix", True)])
def test_cross_prompt_pairs_match_each_sequence_alone(tiny_tok, layout, pack):
    """Cross-prompt pairs (JPO: chosen after x₁, rejected after x₂) mixed with same-prompt pairs: every sequence's
    per-token log-probs equal the sequence run alone, in every layout; same-prompt pairs still share their prompt."""
    model = tiny_model(tiny_tok, seed=4)
    exs = _examples(len(tiny_tok), [(5, 3, 7), (9, 6, 2), (2, 4, 4), (7, 1, 5)], seed=6)
    for e, n in ((exs[0], 8), (exs[2], 3), (exs[3], 1)):  # pairs 0, 2, 3 cross-prompt; pair 1 same-prompt
        e.rejected_prompt_ids = _examples(len(tiny_tok), [(n, 1, 1)], seed=n)[0].prompt_ids
    batch = collate_pairs(exs, tiny_tok.pad_token_id, layout, pack)
    out = sequence_logps(model, batch, chunk_size=5)
    b = len(exs)
    for i, ex in enumerate(exs):
        x2 = ex.rejected_prompt_ids if ex.cross_prompt else ex.prompt_ids
        for s, prompt, comp in ((i, ex.prompt_ids, ex.chosen_ids), (b + i, x2, ex.rejected_ids)):
            want = _naive(model, PairExample(0, prompt, comp, comp), "chosen")
            n = len(want)
            assert int(out.n_tokens[s]) == n and bool(out.mask[s, :n].all()) and not out.mask[s, n:].any()
            torch.testing.assert_close(out.token_logps[s, :n], want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.seq_logps[s], want.sum(), atol=1e-5, rtol=1e-5)
    if layout == "shared_prefix" and not pack:  # pair 1 shares x once; each cross pair runs both prompts
        sizes = [len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) + len(e.rejected_prompt_ids or ())
                 for e in exs]
        assert batch.real.sum(1).tolist() == sizes


# ---------------------------------------------------------------------------------------------------------------
# Registered per-token features: a reducer registered here, in a test file, with no edit under src/.


@register_feature("test_entropy")
def _entropy(chunk: Chunk) -> torch.Tensor:
    """H_t = −Σ_v π(v) log π(v), from the chunk's fp32 logits [C, V] and log-normaliser [C] (with gradient)."""
    logp = chunk.logp()  # [C, V]
    return -(logp.exp() * logp).sum(-1)  # [C]


def _naive_full(model, prompt, comp) -> torch.Tensor:
    ids = torch.tensor([prompt + comp])
    return model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)[len(prompt) - 1 :]  # [T, V]


@pytest.mark.parametrize("layout,pack,plain_head", [("separate", False, True), ("shared_prefix", True, True),
                                                    ("separate", False, False), ("shared_prefix", False, False)])
def test_registered_feature_matches_full_logits(tiny_tok, monkeypatch, layout, pack, plain_head):
    """A toy reducer (per-token entropy) registered in this file, and the built-in log Σπ², requested from
    ``sequence_logps``: equal to the naive full-vocabulary values (1e-5), zero past each end, in every layout and
    through the non-linear-head fallback; the entropy's gradient equals the naive one; the target log-probs are
    bitwise those without features."""
    if not plain_head:
        monkeypatch.setattr("prefalign.logps._plain_head", lambda m: None)
    model = tiny_model(tiny_tok, seed=1).train()
    exs = _examples(len(tiny_tok), MIXED)
    batch = collate_pairs(exs, tiny_tok.pad_token_id, layout, pack=pack)
    out = sequence_logps(model, batch, chunk_size=4, features=("test_entropy", "log_sum_sq"))
    plain = sequence_logps(model, batch, chunk_size=4)
    assert torch.equal(out.token_logps, plain.token_logps) and set(out.features) == {"test_entropy", "log_sum_sq"}
    assert not out.features["log_sum_sq"].requires_grad
    out.features["test_entropy"].sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    b, want_sum = len(exs), 0.0
    for i, ex in enumerate(exs):
        for s, comp in ((i, ex.chosen_ids), (b + i, ex.rejected_ids)):
            logp, n = _naive_full(model, ex.prompt_ids, comp), len(comp)  # [n, V]
            ent = -(logp.exp() * logp).sum(-1)
            torch.testing.assert_close(out.features["test_entropy"][s, :n], ent.detach(), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.features["log_sum_sq"][s, :n], (2 * logp).logsumexp(-1).detach(),
                                       atol=1e-5, rtol=1e-5)
            assert not out.features["test_entropy"][s, n:].any() and not out.features["log_sum_sq"][s, n:].any()
            want_sum = want_sum + ent.sum()
    want_sum.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


def test_unknown_feature_and_missing_context_are_errors(tiny_tok):
    model = tiny_model(tiny_tok, seed=1)
    batch = collate_pairs(_examples(len(tiny_tok), MIXED), tiny_tok.pad_token_id)
    with pytest.raises(ValueError, match="unknown per-token feature 'no_such'"):
        sequence_logps(model, batch, features=("no_such",))
    with pytest.raises(ValueError, match="ref_hidden"):
        sequence_logps(model, batch, features=("token_kl",))  # the reference's states and head were not given


@dataclass
class _MeanEntropy(objectives.Objective):
    """A toy objective that asks for the test's feature: loss = mean over chosen tokens of H_t (not registered)."""

    name = "test_mean_entropy"
    needs_reference = False

    def needs(self) -> objectives.Needs:
        return replace(super().needs(), policy_features=("test_entropy",))

    def compute(self, lp: objectives.PairLogps) -> objectives.ObjectiveOutput:
        ent, mask = lp.features["chosen_test_entropy"], lp.chosen_mask  # [B, T]
        per_example = (ent * mask).sum(1) / mask.sum(1)
        return objectives.ObjectiveOutput(per_example.mean(), per_example)


def test_objective_gets_its_feature_through_the_forward_step(tiny_tok):
    """The training loop's forward step (train/forward.py) serves the toy objective's request: the view holds
    ``chosen_test_entropy`` / ``rejected_test_entropy`` and the loss equals the naive mean entropy."""
    from prefalign.data import kinds
    from prefalign.reference import Reference
    from prefalign.train import forward

    model = tiny_model(tiny_tok, seed=1)
    exs = _examples(len(tiny_tok), MIXED)
    batch = collate_pairs(exs, tiny_tok.pad_token_id, "shared_prefix")
    obj = _MeanEntropy()
    out, pol, ref = forward.forward(obj, obj.needs(), model, Reference("none"), batch, kinds.get(obj.row_kind).view,
                                    chunk_size=3, grad=False)
    assert ref is None and "test_entropy" in pol.features
    want = []
    for ex in exs:
        logp = _naive_full(model, ex.prompt_ids, ex.chosen_ids)
        want.append(-(logp.exp() * logp).sum(-1).mean())
    torch.testing.assert_close(out.per_example, torch.stack(want).detach(), atol=1e-5, rtol=1e-5)
