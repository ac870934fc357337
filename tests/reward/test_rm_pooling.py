"""Where a reward model's score is read: the last token that is not pad, whatever the padding side, the batch, the
layout (separate / shared_prefix / packed) — and the same number Hugging Face's own forward and ``ModelReward``
(`prefalign label --reward`) read for the same (prompt, completion), so training and use agree."""

from __future__ import annotations

import json

import pytest
import torch

from prefalign.data import encode_rows, load_rows
from prefalign.data.kinds import reward_pairs, steps  # noqa: F401  (register the kinds)
from prefalign.data.render import Renderer
from prefalign.reward import ModelReward
from prefalign.reward.model import fit_sequence, reward_ids, step_ids
from prefalign.reward.scoring import (
    build_reward_model,
    collate_pair_sequences,
    collate_single_sequences,
    reward_forward,
    score_sequences,
    score_steps,
)
from prefalign.testing import save_tiny, tiny_tokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared CPU, two OpenMP threads on tiny matrices wait on each other (×20 slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

ATOL = RTOL = 1e-6  # fp32: scores of magnitude ~1 agree to float rounding


def _rm(folder, num_labels=1, pad=None):
    tok = tiny_tokenizer()
    model, _ = build_reward_model(str(folder), num_labels, "fp32", pad_token_id=pad if pad is not None else
                                  tok.pad_token_id)
    with torch.no_grad():  # random init is N(0, 0.02²): make scores differ visibly
        model.score.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    return model.eval()


@pytest.fixture(scope="module")
def rm(tiny_model_dir):
    return _rm(tiny_model_dir, num_labels=2)


def _hf(model, seqs):
    """Hugging Face's own pooled logits, one unpadded sequence at a time (the reference)."""
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([s])).logits for s in seqs])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."},
    {"prompt": "Tell me a joke.", "chosen": "Why did the chicken cross the road?", "rejected": "No."},
    {"prompt": "hi", "chosen": "hello there, how are you", "rejected": "h"},
    {"prompt": "Write one sentence about a cat.", "chosen": "A cat is a small happy animal.",
     "rejected": "A cat is a small happy animal!"},  # differ only in the last tokens: a long shared prefix
    {"prompt": [{"role": "user", "content": "yes or no?"}], "chosen": [{"role": "assistant", "content": "yes"}],
     "rejected": [{"role": "assistant", "content": "maybe 7"}]},
]


def test_pooling_is_invariant_to_padding_side_and_batch_composition(rm, tiny_tok):
    seqs = [tiny_tok("The quick brown fox jumps over the lazy dog.")["input_ids"][: n] for n in (3, 11, 7, 1, 12, 5)]
    ref = _hf(rm, seqs)  # [6, 2]
    pad = tiny_tok.pad_token_id
    for bs in (1, 2, 4, 6):
        for side in ("right", "left"):
            torch.testing.assert_close(score_sequences(rm, seqs, pad, bs, side).scores, ref, atol=ATOL, rtol=RTOL)
    perm = [4, 0, 5, 2, 1, 3]  # another batch composition: the same sequence gets the same score
    out = score_sequences(rm, [seqs[i] for i in perm], pad, 3, "left").scores
    torch.testing.assert_close(out, ref[perm], atol=ATOL, rtol=RTOL)
    assert len({round(float(x), 4) for x in ref[:, 0]}) == len(seqs)  # scores do differ


def test_every_layout_scores_like_hugging_face(rm, tiny_tok, tmp_path):
    rows = load_rows(_write(tmp_path / "p.jsonl", ROWS), kind="reward_pairs")
    ex, _ = encode_rows(rows, tiny_tok, None)
    seqs = [e.prompt_ids + e.chosen_ids for e in ex] + [e.prompt_ids + e.rejected_ids for e in ex]
    ref = _hf(rm, seqs)
    assert ex[3].prompt_ids and len(ex[3].chosen_ids) <= 3  # the shared prefix reaches into the completion
    for layout in ("separate", "shared_prefix"):
        for pack in (False, True):
            b = collate_pair_sequences(ex, tiny_tok.pad_token_id, layout, pack)
            with torch.no_grad():
                out = reward_forward(rm, b, features=True)
            torch.testing.assert_close(out.scores, ref, atol=ATOL, rtol=RTOL, msg=f"{layout} pack={pack}")
            assert out.features.shape == (2 * len(ex), rm.config.hidden_size)
            torch.testing.assert_close(rm.score(out.features), out.scores, atol=ATOL, rtol=RTOL)
    shared = collate_pair_sequences(ex, tiny_tok.pad_token_id, "shared_prefix").num_tokens
    assert shared < collate_pair_sequences(ex, tiny_tok.pad_token_id, "separate").num_tokens


@pytest.mark.parametrize("template", [True, False])
def test_training_scores_what_model_reward_scores(tiny_model_dir, tmp_path, template):
    """A row's training sequence is the sequence `ModelReward` (prefalign label --reward) scores: the same ids and
    the same score, with and without a chat template; chat rows equal their plain-string form."""
    folder = save_tiny(tmp_path / "lm", chat_template=None) if not template else tiny_model_dir
    tok = tiny_tokenizer(chat_template=None) if not template else tiny_tokenizer()
    model = _rm(folder, pad=tok.pad_token_id)
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    plain = [r for r in ROWS if isinstance(r["prompt"], str)]
    rows = load_rows(_write(tmp_path / "p.jsonl", plain), kind="reward_pairs")
    ex, _ = encode_rows(rows, tok, None)
    with torch.no_grad():
        train_scores = reward_forward(model, collate_pair_sequences(ex, tok.pad_token_id, "shared_prefix")).scores
    use = ModelReward(tmp_path / "rm", batch_size=3)
    prompts = [r["prompt"] for r in plain]
    got = torch.cat([use(prompts, [r["chosen"] for r in plain]), use(prompts, [r["rejected"] for r in plain])])
    torch.testing.assert_close(train_scores[:, 0], got, atol=ATOL, rtol=RTOL)
    renderer = Renderer(tok)
    for e, r in zip(ex, plain):
        assert e.prompt_ids + e.chosen_ids == reward_ids(renderer, "t", r["prompt"], r["chosen"])
    if template:  # the conversational form of a row is the same sequence
        chat = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in plain]
        ex2, _ = encode_rows(load_rows(_write(tmp_path / "c.jsonl", chat), kind="reward_pairs"), tok, None)
        assert [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in ex2] == \
            [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in ex]


def test_pad_equal_to_eos_scores_where_hugging_face_pools(tmp_path):
    """pad = EOS (the trl#937 set-up): a sequence ending in EOS is scored at the token before it, which is where
    AutoModelForSequenceClassification pools it — not at the EOS, and not at a pad position."""
    tok = tiny_tokenizer(chat_template=None)
    tok.pad_token = tok.eos_token
    folder = save_tiny(tmp_path / "lm", chat_template=None)
    model = _rm(folder, pad=tok.eos_token_id)
    ids = tok("Paris is the capital of France.")["input_ids"]
    with_eos = ids + [tok.eos_token_id]
    kept, _ = fit_sequence(with_eos, tok.pad_token_id, None, "keep_start")
    assert kept == ids
    hf = _hf(model, [with_eos])  # HF pools at the last non-pad token: the one before EOS
    torch.testing.assert_close(score_sequences(model, [kept], tok.pad_token_id).scores, hf, atol=ATOL, rtol=RTOL)
    assert fit_sequence([tok.eos_token_id], tok.pad_token_id, None, "keep_start") == "sequence is only padding tokens"


def test_truncation_keeps_the_scored_end():
    ids = list(range(10, 20))
    assert fit_sequence(ids, 0, 4, "keep_end") == ([16, 17, 18, 19], True)
    assert fit_sequence(ids, 0, 4, "keep_start") == ([10, 11, 12, 13], True)
    assert fit_sequence(ids, 0, None, "keep_end") == (ids, False)


def test_step_rows_are_scored_at_each_step_separator(rm, tiny_tok, tmp_path):
    rows = [{"prompt": "What is 2 + 3?", "steps": ["2 + 3 = 5", "so 5"], "labels": [True, 1]},
            {"prompt": "hi", "steps": ["a", "b", "c"], "labels": [0.5, False, True]}]
    data = load_rows(_write(tmp_path / "s.jsonl", rows), kind="steps")
    ex, _ = encode_rows(data, tiny_tok, None)
    nl = tiny_tok("\n", add_special_tokens=False)["input_ids"][-1]
    for e, r in zip(ex, rows):
        assert len(e.ends) == len(r["steps"]) and all(e.ids[j] == nl for j in e.ends)
        assert e.ends[-1] == len(e.ids) - 1
    assert (ex[0].ids, ex[0].ends) == step_ids(Renderer(tiny_tok), "t", rows[0]["prompt"], rows[0]["steps"])
    ref = torch.cat([_hf(rm, [e.ids[: j + 1] for j in e.ends]) for e in ex])  # a step's prefix, pooled by HF
    for pack in (False, True):
        b = collate_single_sequences(ex, tiny_tok.pad_token_id, pack, rows_kind="steps")
        with torch.no_grad():
            out = reward_forward(rm, b).scores  # [5 steps, 2]
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL, msg=f"pack={pack}")
        assert b.pool_seq.tolist() == [0, 0, 1, 1, 1]
    torch.testing.assert_close(score_steps(rm, tiny_tok, rows[1]["prompt"], rows[1]["steps"]), out[2:],
                               atol=ATOL, rtol=RTOL)  # the inference helper reads the same scores
    short, _ = encode_rows(data, tiny_tok, ex[0].ends[0] + 1, "keep_start")
    assert len(short[0].ends) == 1 and short[0].labels == [1.0]
