"""Cross-prompt pair rows (JPO): chosen_prompt/chosen/rejected_prompt/rejected — one-line validation errors, each
side split in token space after its own prompt, truncation per side and refusal without ``cross_prompt`` (training:
tests/train/test_cross_prompt_train.py; log-prob exactness: tests/test_logps.py)."""

from __future__ import annotations

import json

import pytest

from prefalign.data import Rows, encode_rows, load_rows
from prefalign.errors import UserError

X1, X2 = "Write one sentence about a cat.", "Name a colour."
CROSS = {"chosen_prompt": X1, "chosen": " A cat is happy.", "rejected_prompt": X2, "rejected": " Blue."}
SAME = {"prompt": X1, "chosen": " A cat is happy.", "rejected": " Bad."}


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def _write(path, *rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _problems(tmp_path, *rows) -> list[str]:
    with pytest.raises(UserError) as e:
        load_rows(str(_write(tmp_path / "d.jsonl", *rows)), cross_prompt=True)
    return e.value.details


def test_mixed_file_loads_and_a_row_with_equal_prompts_is_an_ordinary_pair(tmp_path):
    equal = {**CROSS, "rejected_prompt": X1}
    rows = load_rows(str(_write(tmp_path / "d.jsonl", CROSS, SAME, equal)), cross_prompt=True).rows
    assert rows[0]["prompt"] == X1 and rows[0]["rejected_prompt"] == X2
    assert "rejected_prompt" not in rows[1] and "rejected_prompt" not in rows[2]
    assert rows[2] == {"prompt": X1, "chosen": CROSS["chosen"], "rejected": CROSS["rejected"], "_row": 3}


@pytest.mark.parametrize("row,line", [
    ({k: v for k, v in CROSS.items() if k != "rejected_prompt"}, "row 1: field 'rejected_prompt': missing"),
    ({**CROSS, "chosen_prompt": 3}, "row 1: field 'chosen_prompt': expected a string or a list of messages, got int"),
    ({**CROSS, "prompt": X1}, "row 1: field 'chosen_prompt': give either 'prompt' (a same-prompt pair) or "
                              "'chosen_prompt'/'rejected_prompt' (a cross-prompt pair), not both"),
    ({**CROSS, "rejected_prompt": X1, "rejected": CROSS["chosen"]},
     "row 1: field 'chosen': identical to 'rejected', and 'chosen_prompt' to 'rejected_prompt'"),
    ({**CROSS, "rejected": _msgs(("assistant", "Blue."))},
     "row 1: field 'rejected': expected a string like 'rejected_prompt', got a list"),
    ({**CROSS, "chosen": "   "}, "row 1: field 'chosen': empty or whitespace-only completion"),
    ({**CROSS, "rejected_prompt": [], "rejected": _msgs(("assistant", "Blue."))},
     "row 1: field 'rejected_prompt': empty list of messages"),
])
def test_validation_errors_are_one_line_each(tmp_path, row, line):
    details = _problems(tmp_path, row)
    assert details == [f"{tmp_path / 'd.jsonl'}:{line}"]


def test_same_completion_under_different_prompts_is_a_valid_pair(tmp_path):
    row = {**CROSS, "rejected": CROSS["chosen"]}
    assert load_rows(str(_write(tmp_path / "d.jsonl", row)), cross_prompt=True).rows[0]["rejected_prompt"] == X2


def test_refused_without_cross_prompt_in_one_line_naming_file_row_field(tmp_path):
    path = _write(tmp_path / "d.jsonl", SAME, CROSS)
    with pytest.raises(UserError) as e:
        load_rows(str(path), cross_prompt_hint="objective 'dpo' reads same-prompt pairs only")
    assert str(e.value) == (f"{path}:row 2: field 'chosen_prompt': a cross-prompt pair, which this objective does "
                            "not accept: objective 'dpo' reads same-prompt pairs only")
    assert e.value.details == [] and "\n" not in str(e.value)
    with pytest.raises(UserError):  # a wrong objective is not a bad row: --skip-invalid does not hide it
        load_rows(str(path), skip_invalid=True)


def _rows(*rows):
    return Rows("d.jsonl", "paired", [{**r, "_row": i} for i, r in enumerate(rows, start=1)])


def test_plain_strings_each_side_split_after_its_own_prompt(tiny_tok):
    row = {"prompt": X1, "chosen": CROSS["chosen"], "rejected_prompt": X2, "rejected": CROSS["rejected"]}
    [ex, same], report = encode_rows(_rows(row, SAME), tiny_tok)
    enc = lambda s: tiny_tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert ex.cross_prompt and not same.cross_prompt
    assert ex.prompt_ids == enc(X1) and ex.rejected_prompt_ids == enc(X2)
    assert ex.chosen_ids == enc(CROSS["chosen"]) + [tiny_tok.eos_token_id]
    assert ex.rejected_ids == enc(CROSS["rejected"]) + [tiny_tok.eos_token_id]
    assert ex.prompt_ids + ex.chosen_ids[:-1] == enc(X1 + CROSS["chosen"])
    assert ex.rejected_prompt_ids + ex.rejected_ids[:-1] == enc(X2 + CROSS["rejected"])
    assert report.rows_kept == 2 and report.tokens["prompt"]["max"] == len(enc(X1))


def test_chat_each_side_split_after_its_own_rendered_prompt(tiny_tok):
    x1, x2 = _msgs(("user", "Say hi.")), _msgs(("system", "Be brief."), ("user", "Count to two."))
    y1, y2 = _msgs(("assistant", "Hi!")), _msgs(("assistant", "One, two."))
    [ex], _ = encode_rows(_rows({"prompt": x1, "chosen": y1, "rejected_prompt": x2, "rejected": y2}), tiny_tok)
    render = lambda m, gen: list(tiny_tok.apply_chat_template(m, add_generation_prompt=gen, tokenize=True,  # noqa: E731
                                                               return_dict=False))
    assert ex.prompt_ids == render(x1, True) and ex.rejected_prompt_ids == render(x2, True)
    assert ex.prompt_ids + ex.chosen_ids == render(x1 + y1, False)
    assert ex.rejected_prompt_ids + ex.rejected_ids == render(x2 + y2, False)
    assert "One, two." in tiny_tok.decode(ex.rejected_ids) and "Count" not in tiny_tok.decode(ex.rejected_ids)


def test_truncation_per_side_and_dropped_rows_counted(tiny_tok):
    long_x2 = "Name a colour, please, any colour at all that you like to name here."
    row = {"prompt": X1, "chosen": CROSS["chosen"], "rejected_prompt": long_x2, "rejected": CROSS["rejected"]}
    [full], _ = encode_rows(_rows(row), tiny_tok)
    n1, n2 = len(full.prompt_ids), len(full.rejected_prompt_ids)
    assert n2 > n1 + 3
    m = n1 + 3  # keep_start: the chosen side loses its end; the rejected prompt fills the budget → dropped
    kept, report = encode_rows(_rows(row, SAME), tiny_tok, max_length=m)
    assert [e.row for e in kept] == [2] and report.dropped == {"prompt fills max_length": 1}
    m = n2 + 2  # keep_start: each side cut to fit after its own prompt
    [ex], report = encode_rows(_rows(row), tiny_tok, max_length=m)
    assert ex.prompt_ids == full.prompt_ids and ex.rejected_prompt_ids == full.rejected_prompt_ids
    assert len(ex.rejected_ids) == 2 and ex.rejected_ids == full.rejected_ids[:2]
    assert len(ex.prompt_ids) + len(ex.chosen_ids) <= m and report.truncated == 1
    # keep_end: each prompt loses its start by what its own completion needs
    [ex], report = encode_rows(_rows(row), tiny_tok, max_length=m, truncation="keep_end")
    assert ex.rejected_ids == full.rejected_ids and ex.chosen_ids == full.chosen_ids
    assert ex.rejected_prompt_ids == full.rejected_prompt_ids[-(m - len(full.rejected_ids)):]
    assert len(ex.prompt_ids) + len(ex.chosen_ids) <= m and report.truncated == 1
    _, report = encode_rows(_rows(row), tiny_tok, max_length=len(full.chosen_ids), truncation="keep_end")
    assert report.dropped == {"completion fills max_length": 1} and report.rows_kept == 0
