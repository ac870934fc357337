"""Prompt/completion split in token space: the completion tokens are exactly the expected ones, or the row is
refused with an error naming it — never a shifted boundary."""

from __future__ import annotations

import json

import pytest

from prefalign.data import PairExample, PointExample, Rows, encode_rows, load_rows
from prefalign.errors import UserError


def _rows(*rows, kind="paired"):
    return Rows("d.jsonl", kind, [{**r, "_row": i} for i, r in enumerate(rows, start=1)])


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def _text(tok, ids):
    return tok.decode(ids, clean_up_tokenization_spaces=False)


@pytest.fixture
def tok(tiny_tok):
    """The shared tokenizer, with its chat template restored after tests that swap it."""
    saved = tiny_tok.chat_template
    yield tiny_tok
    tiny_tok.chat_template = saved


def test_plain_strings_completion_is_the_completion_tokens_plus_eos(tok):
    """The byte-level pre-tokenizer starts a new piece at ' A' (after '.') and BPE never merges across pieces, so
    the completion's own tokens are the expected ones; EOS is appended, as TRL does for plain text."""
    row = {"prompt": "Write one sentence about a cat.", "chosen": " A cat is happy.", "rejected": " Bad."}
    [ex], _ = encode_rows(_rows(row), tok)
    assert ex.prompt_ids == tok.encode(row["prompt"], add_special_tokens=False)
    assert ex.chosen_ids == tok.encode(row["chosen"], add_special_tokens=False) + [tok.eos_token_id]
    assert ex.rejected_ids == tok.encode(row["rejected"], add_special_tokens=False) + [tok.eos_token_id]
    assert _text(tok, ex.chosen_ids) == " A cat is happy.<|im_end|>"


def test_plain_completion_ending_with_eos_gets_no_second_eos(tok):
    [ex], _ = encode_rows(_rows({"prompt": "Hi.", "chosen": " Yes.<|im_end|>", "rejected": " No."}), tok)
    assert ex.chosen_ids[-2:] != [tok.eos_token_id] * 2 and ex.chosen_ids[-1] == tok.eos_token_id


def test_plain_strings_with_a_tokenizer_that_adds_bos_and_eos():
    """Special tokens are off for both pieces (an EOS added by default must not end the prompt); BOS is put back."""
    from tokenizers import processors

    from prefalign.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.bos_token = "<|endoftext|>"
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A <|im_end|>", special_tokens=[("<|endoftext|>", 0), ("<|im_end|>", 2)])
    assert tok("Hi.")["input_ids"] == [0, *tok("Hi.", add_special_tokens=False)["input_ids"], 2]
    [ex], _ = encode_rows(_rows({"prompt": "Hi.", "chosen": " Yes.", "rejected": " No."}), tok)
    assert ex.prompt_ids == [tok.bos_token_id, *tok.encode("Hi.", add_special_tokens=False)]
    assert ex.chosen_ids == [*tok.encode(" Yes.", add_special_tokens=False), tok.eos_token_id]


def test_chatml_template_appends_tokens_after_the_assistant_turn(tok):
    """ChatML appends '<|im_end|>\\n' after each turn: those tokens belong to the completion (TRL trains on them
    too), and the generation prompt '<|im_start|>assistant\\n' to the prompt. The completion text starts after a
    newline, where the pre-tokenizer always splits, so encoding it alone gives the expected ids."""
    row = {"prompt": _msgs(("system", "Be kind."), ("user", "Hello world"), ("assistant", "Hi."), ("user", "Joke?")),
           "chosen": _msgs(("assistant", "Paris is nice")), "rejected": _msgs(("assistant", "No"))}
    [ex], _ = encode_rows(_rows(row), tok)
    prompt_text = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    assert prompt_text.endswith("<|im_start|>assistant\n")
    assert ex.prompt_ids == tok.encode(prompt_text, add_special_tokens=False)
    assert ex.chosen_ids == tok.encode("Paris is nice<|im_end|>\n", add_special_tokens=False)
    assert _text(tok, ex.rejected_ids) == "No<|im_end|>\n"
    whole = tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True)["input_ids"]
    assert ex.prompt_ids + ex.chosen_ids == list(whole)


def test_multi_turn_completion(tok):
    row = {"prompt": _msgs(("user", "Hi")), "chosen": _msgs(("assistant", "Hello!"), ("assistant", "Yes.")),
           "rejected": _msgs(("assistant", "Go."))}
    [ex], _ = encode_rows(_rows(row), tok)
    assert _text(tok, ex.chosen_ids) == "Hello!<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n"


def test_implicit_prompt_form_gives_the_explicit_examples(tok, tmp_path):
    shared = _msgs(("system", "Be kind."), ("user", "Hi"))
    explicit = {"prompt": shared, "chosen": _msgs(("assistant", "Hello!")), "rejected": _msgs(("assistant", "Go."))}
    implicit = {"chosen": shared + explicit["chosen"], "rejected": shared + explicit["rejected"]}
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(explicit) + "\n" + json.dumps(implicit) + "\n")
    [a, b], _ = encode_rows(load_rows(str(p)), tok)
    assert (a.prompt_ids, a.chosen_ids, a.rejected_ids) == (b.prompt_ids, b.chosen_ids, b.rejected_ids)
    assert _text(tok, b.chosen_ids) == "Hello!<|im_end|>\n"


def test_template_rendering_the_prompt_differently_alone_is_refused(tok):
    """This template ends the last user turn with ' ||' only when a generation prompt follows, so the prompt's
    text is not a prefix of the whole: cutting the whole text (or ids) at the prompt's length would put
    'assistant: Ye' in the 'completion'. The row is refused instead."""
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}"
                         "{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ ' ||\\nassistant: ' }}{% endif %}")
    row = {"prompt": _msgs(("user", "Hi")), "chosen": _msgs(("assistant", "Yes")), "rejected": _msgs(("assistant", "No"))}
    prompt_text = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    whole_text = tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    assert whole_text[len(prompt_text):] != "Yes"  # what naive slicing would train on
    with pytest.raises(UserError) as e:
        encode_rows(_rows(row), tok)
    assert e.value.line() == (
        "d.jsonl:row 1: field 'chosen': the chat template does not render the prompt as a token prefix of "
        "prompt+completion: cannot split prompt and completion safely: use a chat template that renders the prompt "
        "(with add_generation_prompt) as the start of the whole conversation, or give the rows as plain strings")
    assert e.value.details[0].endswith("first different token is #7; prompt alone renders ': Hi ||\\nass'")
    assert e.value.details[1].endswith("... while prompt+completion renders ': Hi\\nassistan'")


def test_text_prefix_whose_tokens_merge_across_the_boundary_is_refused(tok):
    """Here the prompt's text *is* a prefix of the whole, but the template's trailing space merges with the reply
    ('assistant: ' + 'the answer' tokenizes ' the' as one token): string slicing would silently train on a
    tokenization the model never sees. The token-prefix check refuses it."""
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    row = {"prompt": _msgs(("user", "Hi")), "chosen": _msgs(("assistant", "the answer")),
           "rejected": _msgs(("assistant", "no"))}
    prompt_text = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    assert tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False).startswith(prompt_text)
    with pytest.raises(UserError, match=r"^d.jsonl:row 1: field 'chosen': the chat template does not render"):
        encode_rows(_rows(row), tok)


def test_plain_prompt_merging_with_the_completion_is_refused(tok):
    """'The ca' + 't is nice.': 'cat' would be split across prompt and completion; never shift the boundary."""
    row = {"prompt": "The ca", "chosen": "t is nice.", "rejected": "r is bad."}
    prompt = tok.encode(row["prompt"], add_special_tokens=False)
    assert tok.encode(row["prompt"] + row["chosen"], add_special_tokens=False)[: len(prompt)] != prompt
    with pytest.raises(UserError) as e:
        encode_rows(_rows(row), tok)
    assert e.value.line() == (
        "d.jsonl:row 1: field 'chosen': the prompt's tokens are not a prefix of the tokens of prompt+completion "
        "(a token spans the boundary): cannot split prompt and completion safely: end the prompt on a token "
        "boundary, e.g. start the completion with a space ('Question?' + ' Answer') or end the prompt with a newline")


def test_no_chat_template_for_chat_rows():
    from prefalign.testing import tiny_tokenizer

    row = {"prompt": _msgs(("user", "Hi")), "chosen": _msgs(("assistant", "Yes")), "rejected": _msgs(("assistant", "No"))}
    with pytest.raises(UserError, match=r"^d.jsonl:row 1: rows are conversations but the model folder has no chat "
                                        r"template: use a chat model's tokenizer"):
        encode_rows(_rows(row), tiny_tokenizer(chat_template=None))


def test_a_template_that_raises_names_the_row(tok):
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    row = {"prompt": _msgs(("system", "Be kind."), ("user", "Hi")), "chosen": _msgs(("assistant", "Yes")),
           "rejected": _msgs(("assistant", "No"))}
    with pytest.raises(UserError, match=r"^d.jsonl:row 1: the chat template failed on this row: System role not "
                                        r"supported: fix the messages"):
        encode_rows(_rows(row), tok)


def test_unpaired_rows_and_extras(tok):
    rows = _rows({"prompt": "Hi.", "completion": " Yes.", "label": False, "score": 0.5}, kind="unpaired")
    [ex], report = encode_rows(rows, tok)
    assert ex == PointExample(1, tok.encode("Hi."), tok.encode(" Yes.") + [tok.eos_token_id], False, {"score": 0.5})
    [pair], _ = encode_rows(_rows({"prompt": "Hi.", "chosen": " Yes.", "rejected": " No.", "pref_prob": 0.8}), tok)
    assert isinstance(pair, PairExample) and pair.extras == {"pref_prob": 0.8}
    assert report.tokens["completion"]["max"] == len(ex.completion_ids)
