"""A reward-model folder: a tiny random LlamaForSequenceClassification (num_labels=1) saved to tmp_path."""

from __future__ import annotations

import pytest
import torch

from prefalign.errors import UserError
from prefalign.reward import ModelReward, load_reward, render_pair
from prefalign.testing import CHATML_TEMPLATE, tiny_tokenizer


def _save_rm(folder, num_labels=1, chat_template=CHATML_TEMPLATE):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny_tokenizer(chat_template=chat_template)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      num_labels=num_labels, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # random init is near 0; make scores differ visibly
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return _save_rm(tmp_path_factory.mktemp("rm"))


PROMPTS = ["What is the capital of France?", "Tell me a joke.", "hi", "Write one sentence about a cat."]
COMPLETIONS = ["Paris.", "Why did the chicken cross the road? To get to the other side.", "hello", "A cat."]


def test_folder_spec_scores_each_pair_like_the_model_alone(rm_dir):
    reward = load_reward(str(rm_dir), batch_size=3)
    assert isinstance(reward, ModelReward)
    out = reward(PROMPTS, COMPLETIONS)
    assert out.shape == (4,) and out.dtype == torch.float32
    # One pair at a time, straight through the model, with the chat template rendered by hand.
    expected = []
    for p, c in zip(PROMPTS, COMPLETIONS):
        text = reward.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False)
        ids = reward.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected.append(float(reward.model(input_ids=ids).logits[0, 0]))
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    assert len(set(out.tolist())) == 4


def test_batching_and_padding_do_not_change_scores(rm_dir):
    one = load_reward(str(rm_dir), batch_size=1)(PROMPTS, COMPLETIONS)
    all_ = load_reward(str(rm_dir), batch_size=16)(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(one, all_, atol=1e-5, rtol=1e-5)


def test_chat_template_used_when_present_else_plain_concatenation(tmp_path):
    tok = tiny_tokenizer()
    text, templated = render_pair(tok, "Q?", "A.")
    assert templated and "<|im_start|>user\nQ?<|im_end|>" in text and "<|im_start|>assistant\nA.<|im_end|>" in text
    plain = tiny_tokenizer(chat_template=None)
    assert render_pair(plain, "Q?", " A.") == ("Q? A.", False)
    reward = load_reward(str(_save_rm(tmp_path / "plain", chat_template=None)))
    assert reward(["Q?"], [" A."]).shape == (1,)


def test_more_than_one_label_is_a_user_error(tmp_path):
    folder = _save_rm(tmp_path / "two", num_labels=2)
    with pytest.raises(UserError, match="num_labels=2"):
        load_reward(str(folder))


def test_folder_without_a_model_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load"):
        load_reward(str(tmp_path / "empty"))


@pytest.mark.parametrize("chat_template", [CHATML_TEMPLATE, None])
@pytest.mark.parametrize("max_length", [None, 9])
def test_renderer_ids_are_the_old_text_path_ids_with_truncation(tmp_path, chat_template, max_length):
    """The ids scored (renderer, in token space) are those of the old render-to-text + tokenizer(...) path."""
    reward = ModelReward(_save_rm(tmp_path / "rm", chat_template=chat_template), batch_size=16,
                         max_length=max_length)
    tok = reward.tokenizer
    rendered = [render_pair(tok, p, c) for p, c in zip(PROMPTS, COMPLETIONS)]
    enc = tok([t for t, _ in rendered], return_tensors="pt", padding=True, add_special_tokens=not rendered[0][1],
              truncation=max_length is not None, max_length=max_length)
    with torch.no_grad():
        old = reward.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(reward(PROMPTS, COMPLETIONS), old, atol=1e-6, rtol=1e-6)
    if chat_template:
        ids = reward.renderer.conversation("r", [{"role": "user", "content": "Q?"},
                                                 {"role": "assistant", "content": "A."}])
        assert ids == tok(render_pair(tok, "Q?", "A.")[0], add_special_tokens=False)["input_ids"]
