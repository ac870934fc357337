"""One prompt renderer: the ids a sampler continues are the ids training puts before a completion of that prompt.

``old_encode`` is the sampler's previous path (render to text with the chat template, or prepend the system text,
then tokenize the text again, with the tokenizer's own special tokens for plain text), kept here to show where the
renderer's ids equal it (chat templates; plain text on tokenizers that add no specials or only BOS) and where they
differ (plain text on a tokenizer that appends EOS: the old prompt ended with EOS, the new one is the training
path's, without it).
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import processors

from prefalign.data.encode import _Splitter
from prefalign.data.render import Renderer, fold_system, prompt_row
from prefalign.decode.generate import GenOptions, encode_prompts, prompt_ids, render_prompts
from prefalign.errors import UserError
from prefalign.pairs import make_pairs
from prefalign.testing import CHATML_TEMPLATE, tiny_tokenizer

PROMPTS = ["What is the capital of France?", "cat", "Tell me a joke about a dog, please.", " hi\n", "a <|im_end|> b"]
STRICT = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
          "{% endif %}[{{ m['role'] }}]\n{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant]\n"
          "{% endif %}")


def old_encode(tokenizer, prompts, system=None, chat=None) -> list[list[int]]:
    """The sampler's ids before the renderer (decode.generate.render_prompts + encode_prompts), unpadded."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if not use_chat:
        texts = [p if system is None else f"{system}\n\n{p}" for p in prompts]
    else:
        texts = []
        for p in prompts:
            messages = [{"role": "user", "content": p}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
            try:
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception:
                if system is None:
                    raise
                merged = [{"role": "user", "content": f"{system}\n\n{p}"}]
                text = tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
            texts.append(text)
    return [tokenizer(t, add_special_tokens=not use_chat)["input_ids"] for t in texts]


def with_specials(eos_too: bool, chat_template: str | None = None):
    """The tiny tokenizer with a post-processor adding BOS (Llama-style), and EOS too when ``eos_too``."""
    tok = tiny_tokenizer(chat_template=chat_template)
    bos, eos = "<|endoftext|>", "<|im_end|>"
    tok.bos_token, tok.eos_token = bos, eos
    single = f"{bos} $A" + (f" {eos}" if eos_too else "")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} $B", special_tokens=[(t, tok.convert_tokens_to_ids(t)) for t in (bos, eos)])
    return tok


def chatml():
    return tiny_tokenizer()


def plain():
    return tiny_tokenizer(chat_template=None)


def strict():
    tok = tiny_tokenizer()
    tok.chat_template = STRICT
    return tok


def bos_chat():
    return with_specials(False, "{{ bos_token }}" + CHATML_TEMPLATE)


CASES = [  # (tokenizer, system, chat)
    (chatml, None, None), (chatml, "Be kind.", None), (chatml, "", None), (chatml, "Be kind.", False),
    (chatml, None, False), (plain, None, None), (plain, "Be kind.", None), (strict, "Be kind.", None),
    (strict, None, None), (bos_chat, "Be kind.", None), (bos_chat, None, False),
    (lambda: with_specials(False), "Be kind.", None), (lambda: with_specials(False), None, None),
]


@pytest.mark.parametrize("make_tok, system, chat", CASES)
def test_sampling_ids_equal_the_old_sampler_ids_and_the_training_split(make_tok, system, chat):
    tok = make_tok()
    opts = GenOptions(chat=chat, system=system)
    new = prompt_ids(tok, PROMPTS, opts)
    assert new == old_encode(tok, PROMPTS, system=system, chat=chat)
    # The training path: the row make_pairs writes for this prompt, split by encode_rows' splitter.
    use_chat = bool(tok.chat_template) if chat is None else chat
    pairs, _ = make_pairs(PROMPTS, [["good", "bad"]] * len(PROMPTS), torch.tensor([[1.0, 0.0]] * len(PROMPTS)),
                          use_chat, system=system, tokenizer=tok)
    split = _Splitter(tok)
    for row, ids in zip(pairs, new):
        p, _ = split("row", row["prompt"], {"chosen": row["chosen"], "rejected": row["rejected"]})
        assert p == ids
    # Left-padded for the token loop, the same ids.
    batch, mask = encode_prompts(tok, PROMPTS, opts)
    assert [r[m.bool()].tolist() for r, m in zip(batch, mask)] == new
    assert render_prompts(tok, PROMPTS[:1], system=system, chat=chat)[1] == use_chat


def test_a_tokenizer_that_appends_eos_no_longer_ends_the_prompt_with_it():
    tok = with_specials(True)
    old, new = old_encode(tok, PROMPTS), prompt_ids(tok, PROMPTS, GenOptions())
    for o, n, p in zip(old, new, PROMPTS):
        assert o[-1] == tok.eos_token_id and n == o[:-1]  # old: BOS + text + EOS, a prompt that says "stop"
        assert n == [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
        assert n == Renderer(tok).prompt("row", p)  # what training puts before the completion


def test_conversation_prompts_and_system_turns():
    tok, r = chatml(), Renderer(chatml())
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes?"},
             {"role": "user", "content": "Go on"}]
    assert r.sampling_prompt(convo) == r.prompt("row", convo)
    with_sys = r.sampling_prompt(convo, system="Be kind.")
    assert with_sys == r.prompt("row", [{"role": "system", "content": "Be kind."}, *convo])
    own = [{"role": "system", "content": "Mine."}, *convo]
    assert r.sampling_prompt(own, system="Be kind.") == r.prompt("row", own)  # the row's own system turn wins
    assert prompt_ids(tok, [convo], GenOptions()) == [r.prompt("row", convo)]
    with pytest.raises(UserError, match=r"^decode: prompt 1: the prompt is a conversation .* chat rendering is off"):
        prompt_ids(tok, [convo], GenOptions(chat=False))


def test_a_template_without_a_system_role_gets_the_system_text_in_the_user_turn():
    r = Renderer(strict())
    assert r.prompt_row("Hi", "Be kind.") == [{"role": "user", "content": "Be kind.\n\nHi"}]
    assert r.sampling_text("Hi", "Be kind.") == "[user]\nBe kind.\n\nHi\n[assistant]\n"
    assert fold_system([{"role": "user", "content": "Hi"}]) is None
    assert prompt_row("Hi", "S", chat=False) == "S\n\nHi" and prompt_row("Hi", None, chat=False) == "Hi"
    # Training keeps its own rule for a row's own system turn: the template's error, naming the row.
    with pytest.raises(UserError, match=r"^row: the chat template failed on this row: System role not supported"):
        r.prompt("row", [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])


def test_plain_pairs_carry_the_system_text_the_sampler_saw():
    pairs, _ = make_pairs(["Hi"], [["good", "bad"]], torch.tensor([[1.0, 0.0]]), chat=False, system="Be kind.")
    assert pairs[0]["prompt"] == "Be kind.\n\nHi" and pairs[0]["chosen"] == "good"


def test_errors_are_one_line_user_errors():
    with pytest.raises(UserError, match="no chat template") as e:
        prompt_ids(plain(), ["Hi"], GenOptions(chat=True))
    assert "\n" not in str(e.value)
    bad = tiny_tokenizer()
    bad.chat_template = "{{ raise_exception('nope') }}"
    with pytest.raises(UserError, match=r"^decode: prompt 1: the chat template failed on this row: nope") as e:
        prompt_ids(bad, ["Hi"], GenOptions(system="S"))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="prompt 2 is empty"):
        prompt_ids(plain(), ["Hi", ""], GenOptions())
