"""Supervised fine-tuning on TRL's SFT rows, on the one engine: masking by hand, packing = no packing,
accumulation invariance, and an output folder transformers loads."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prefalign.data import encode_rows, load_rows
from prefalign.data.kinds import get
from prefalign.logps import sequence_logps
from prefalign.train.loop import train

from .helpers import config, read_metrics


def _quiet(*a, **k):
    pass


def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _encode(tmp_path, tok, rows, **kw):
    return encode_rows(load_rows(_rows(tmp_path / "s.jsonl", rows), kind="sft"), tok, **kw)[0]


def _trained_text(tok, ex) -> str:
    return tok.decode([t for t, m in zip(ex.completion_ids, ex.completion_mask) if m])


def test_messages_train_on_assistant_turns_only(tiny_tok, tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye"}]
    [ex] = _encode(tmp_path, tiny_tok, [{"messages": msgs}])
    # ChatML by hand: everything up to the first "<|im_start|>assistant\n" is the prompt; each assistant turn's
    # content and its end marker are trained; the user turn between them is not.
    assert tiny_tok.decode(ex.prompt_ids) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"
                                              "<|im_end|>\n<|im_start|>assistant\n")
    assert _trained_text(tiny_tok, ex) == "Hello<|im_end|>\nGoodbye<|im_end|>\n"
    untrained = tiny_tok.decode([t for t, m in zip(ex.completion_ids, ex.completion_mask) if not m])
    assert untrained == "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    # The whole sequence is exactly the template's rendering of the conversation (one render, split in token space).
    full = tiny_tok.apply_chat_template(msgs, tokenize=False)
    assert tiny_tok.decode(ex.prompt_ids + ex.completion_ids) == full


def test_prompt_completion_and_text_rows(tiny_tok, tmp_path):
    pc, text = _encode(tmp_path, tiny_tok, [{"prompt": "Q: 2+2?", "completion": " A: 4"}, {"text": "a cat sat"}])
    assert tiny_tok.decode(pc.prompt_ids) == "Q: 2+2?"
    assert _trained_text(tiny_tok, pc) == " A: 4" + tiny_tok.eos_token  # EOS appended to plain text, as TRL
    assert text.prompt_ids == tiny_tok("a cat sat")["input_ids"][:1]  # the first token has nothing before it
    assert _trained_text(tiny_tok, text) == tiny_tok.decode(tiny_tok("a cat sat")["input_ids"][1:]) + tiny_tok.eos_token
    [all_tokens] = _encode(tmp_path, tiny_tok, [{"prompt": "Q: 2+2?", "completion": " A: 4"}],
                           completion_only_loss=False)
    assert _trained_text(tiny_tok, all_tokens) == tiny_tok.decode(pc.prompt_ids[1:]) + " A: 4" + tiny_tok.eos_token


def test_bad_sft_rows_are_one_line_errors(tiny_tok, tmp_path):
    from prefalign.errors import UserError

    rows = [{"text": ""}, {"messages": [{"role": "user", "content": "hi"}]}, {"foo": 1}]
    with pytest.raises(UserError) as e:
        load_rows(_rows(tmp_path / "bad.jsonl", rows), kind="sft")
    details = "\n".join(e.value.details)
    assert "row 1: field 'text': empty" in details
    assert "row 2: field 'messages': has no assistant turn" in details
    assert "row 3: field 'text': missing" in details


def test_packing_equals_no_packing(tiny_tok, tmp_path):
    from prefalign.testing import tiny_model

    rows = [{"prompt": f"Q{i}: tell me", "completion": f" a {'long ' * i}answer"} for i in range(4)]
    rows.append({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    examples = _encode(tmp_path, tiny_tok, rows)
    model = tiny_model(tiny_tok)
    out = {}
    for pack in (False, True):
        model.zero_grad()
        batch = get("sft").collate(examples, tiny_tok.pad_token_id, "separate", pack)
        lp = sequence_logps(model, batch, chunk_size=7)
        loss = -lp.seq_logps.sum() / lp.n_tokens.sum()
        loss.backward()
        out[pack] = (lp.seq_logps.detach(), lp.n_tokens, {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-5, rtol=0)
    assert torch.equal(out[True][1], out[False][1])
    assert int(out[False][1].sum()) == sum(sum(e.completion_mask) for e in examples)
    for n, g in out[False][2].items():
        torch.testing.assert_close(out[True][2][n], g, atol=1e-6, rtol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def _sft_data(tmp_path, n=8):
    rows = [{"prompt": f"Write about item {i}.", "completion": f" Item {i} is {'very ' * (i % 3)}good."}
            for i in range(n)]
    return _rows(tmp_path / "sft.jsonl", rows)


def test_sft_trains_and_loads_in_transformers(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = train(config(tiny_model_dir, _sft_data(tmp_path), tmp_path / "out", objective="sft", max_steps=4,
                       learning_rate=1e-2), log=_quiet)
    losses = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert math.isclose(losses[0], read_metrics(out)[0]["nll"])
    assert json.loads((out / "run_complete.json").read_text())["method"] == "sft"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == model.config.vocab_size


@pytest.mark.parametrize("kw", [dict(batch_size=1, gradient_accumulation_steps=4), dict(batch_size=4, pack=True)])
def test_sft_token_mean_is_split_invariant(tiny_model_dir, tmp_path, kw):
    """A global-batch token mean: 4 × 1 accumulation and packing give the same update as one batch of 4."""
    from safetensors.torch import load_file

    data = _sft_data(tmp_path)
    # adam_epsilon = 1: the first Adam step is then ≈ lr·g/(|g| + 1), linear in the gradient, so comparing weights
    # compares gradients (with the default ε a near-zero gradient's sign decides a full lr-sized step).
    base = dict(objective="sft", max_steps=1, learning_rate=1e-2, shuffle=False, adam_epsilon=1.0)
    a = train(config(tiny_model_dir, data, tmp_path / "a", batch_size=4, **base), log=_quiet)
    b = train(config(tiny_model_dir, data, tmp_path / "b", **{**base, **kw}), log=_quiet)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-8, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert not torch.equal(wa["model.norm.weight"], load_file(str(tiny_model_dir / "model.safetensors"))
                           ["model.norm.weight"])  # it did train
    assert read_metrics(a)[0]["loss"] == pytest.approx(read_metrics(b)[0]["loss"], abs=1e-6)
