"""Prompt/completion split in token space: the completion tokens are exactly the expected ones."""

from __future__ import annotations

import pytest

from prefalign.data import Rows, encode_rows
from prefalign.errors import UserError


def _rows(*rows, kind="paired"):
    return Rows("d.jsonl", kind, [{**r, "_row": i + 1, "_extras": {}} for i, r in enumerate(rows)], read=len(rows))


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def test_plain_strings_completion_is_suffix_plus_eos(tiny_tok):
    row = {"prompt": "Write one sentence about a cat.", "chosen": " A cat is happy.", "rejected": " Bad."}
    [ex], _ = encode_rows(_rows(row), tiny_tok)
    assert tiny_tok.decode(ex.prompt_ids) == row["prompt"]
    assert ex.chosen_ids[-1] == tiny_tok.eos_token_id
    assert tiny_tok.decode(ex.chosen_ids[:-1]) == row["chosen"]
    assert tiny_tok.decode(ex.rejected_ids[:-1]) == row["rejected"]
    assert ex.prompt_ids + ex.chosen_ids[:-1] == tiny_tok(row["prompt"] + row["chosen"])["input_ids"]


def test_chat_template_that_appends_tokens_after_the_assistant_turn(tiny_tok):
    """ChatML appends '<|im_end|>\\n' after each turn: those tokens belong to the completion, and the generation
    prompt '<|im_start|>assistant\\n' to the prompt."""
    row = {"prompt": _msgs(("system", "Be kind."), ("user", "Hello world")),
           "chosen": _msgs(("assistant", "Paris is nice")), "rejected": _msgs(("assistant", "No"))}
    [ex], _ = encode_rows(_rows(row), tiny_tok)
    assert tiny_tok.decode(ex.prompt_ids).endswith("<|im_start|>assistant\n")
    assert tiny_tok.decode(ex.chosen_ids) == "Paris is nice<|im_end|>\n"
    assert tiny_tok.decode(ex.rejected_ids) == "No<|im_end|>\n"
    whole = tiny_tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True)["input_ids"]
    assert ex.prompt_ids + ex.chosen_ids == list(whole)


def test_implicit_prompt_form(tiny_tok):
    shared = _msgs(("user", "Hi"))
    row = {"prompt": shared, "chosen": _msgs(("assistant", "Hello!")), "rejected": _msgs(("assistant", "Go."))}
    [explicit], _ = encode_rows(_rows(row), tiny_tok)
    from prefalign.data.checks import check_paired

    norm, problems = check_paired("x", {"chosen": shared + row["chosen"], "rejected": shared + row["rejected"]})
    assert not problems
    [implicit], _ = encode_rows(_rows(norm), tiny_tok)
    assert (implicit.prompt_ids, implicit.chosen_ids, implicit.rejected_ids) == (
        explicit.prompt_ids, explicit.chosen_ids, explicit.rejected_ids)


def test_string_slicing_would_be_wrong_here(tiny_tok):
    """A template that renders the prompt differently alone (it ends the last user turn with a marker only when a
    generation prompt follows): slicing the rendered text at len(prompt text) would shift the boundary; the
    token-prefix check refuses the row instead."""
    tok = tiny_tok
    template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}"
                "{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ ' ||\\nassistant: ' }}{% endif %}")
    saved, tok.chat_template = tok.chat_template, template
    try:
        row = {"prompt": _msgs(("user", "Hi")), "chosen": _msgs(("assistant", "Yes")),
               "rejected": _msgs(("assistant", "No"))}
        with pytest.raises(UserError, match="row 1: field 'chosen'.*not an exact token prefix"):
            encode_rows(_rows(row), tok)
    finally:
        tok.chat_template = saved


def test_token_merging_across_the_boundary_is_refused(tiny_tok):
    """'cat' + 's are nice' tokenizes as one piece across the boundary: never split inside it."""
    row = {"prompt": "The ca", "chosen": "t is nice.", "rejected": "r is bad."}
    full = tiny_tok(row["prompt"] + row["chosen"])["input_ids"]
    prompt = tiny_tok(row["prompt"])["input_ids"]
    assert full[: len(prompt)] != prompt  # the merge really happens with this tokenizer
    with pytest.raises(UserError, match="not an exact token prefix"):
        encode_rows(_rows(row), tiny_tok)


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_truncation_and_drops(tiny_tok, mode):
    long_prompt = "word " * 40
    rows = _rows({"prompt": "Hi.", "chosen": " ok " * 30, "rejected": " no."},
                 {"prompt": long_prompt, "chosen": " a.", "rejected": " b."},
                 {"prompt": "Hi.", "chosen": " fine.", "rejected": " bad."})
    examples, report = encode_rows(rows, tiny_tok, max_length=24, truncation=mode)
    assert report.rows_read == 3
    for ex in examples:
        assert len(ex.prompt_ids) + max(len(ex.chosen_ids), len(ex.rejected_ids)) <= 24
        assert ex.chosen_ids and ex.rejected_ids
    if mode == "keep_start":
        assert report.rows_kept == 2 and report.dropped == {"prompt fills max_length": 1}
        assert report.truncated == 1
    else:  # the long completion would leave no prompt; the long prompt loses its start
        assert report.rows_kept == 2 and report.truncated == 1
        assert list(report.dropped.values()) == [1] and "completion fills max_length" in next(iter(report.dropped))
    assert report.tokens["total"]["max"] <= 24 and "p50" in report.tokens["prompt"]


def test_no_chat_template_for_chat_rows():
    from prefalign.testing import tiny_tokenizer

    tok = tiny_tokenizer(chat_template=None)
    row = {"prompt": _msgs(("user", "Hi")), "chosen": _msgs(("assistant", "Yes")),
           "rejected": _msgs(("assistant", "No"))}
    with pytest.raises(UserError, match="no chat template"):
        encode_rows(_rows(row), tok)
