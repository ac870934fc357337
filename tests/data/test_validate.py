"""Every row problem has one exact line ``path:row N: field 'x': problem``; --skip-invalid drops and counts."""

from __future__ import annotations

import json

import pytest

import prefalign.data
from prefalign.data import load_rows
from prefalign.errors import UserError

GOOD = {"prompt": "Say hi.", "chosen": " Hi there!", "rejected": " Go away."}


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CHAT = {"prompt": _msgs(("user", "Say hi.")), "chosen": _msgs(("assistant", "Hi!")),
        "rejected": _msgs(("assistant", "No."))}
USER, HI, NO = _msgs(("user", "Say hi.")), _msgs(("assistant", "Hi!")), _msgs(("assistant", "No."))


def _write(tmp_path, *rows):
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _problems(tmp_path, row, kind="paired", extra_fields=()):
    """The problem lines of a one-row file, with the path left out."""
    p = _write(tmp_path, row)
    with pytest.raises(UserError) as e:
        load_rows(str(p), kind=kind, extra_fields=extra_fields)
    assert e.value.line() == f"{p}: 1 invalid row: fix them or pass --skip-invalid"
    return [d.removeprefix(f"{p}:") for d in e.value.details]


PAIRED = [
    ("missing", {"prompt": "x", "chosen": " a"}, "field 'rejected': missing"),
    ("null is missing", {**GOOD, "chosen": None}, "field 'chosen': missing"),
    ("wrong type", {**GOOD, "chosen": 5}, "field 'chosen': expected a string or a list of messages, got int"),
    ("prompt wrong type", {**GOOD, "prompt": {"text": "x"}},
     "field 'prompt': expected a string or a list of messages, got dict"),
    ("empty", {**GOOD, "rejected": "  \n"}, "field 'rejected': empty or whitespace-only completion"),
    ("identical", {**GOOD, "rejected": GOOD["chosen"]}, "field 'chosen': identical to 'rejected'"),
    ("no content", {**CHAT, "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user"}]},
     "field 'prompt': message 2 has no 'content'"),
    ("no role", {**CHAT, "chosen": [{"content": "Hi!"}]}, "field 'chosen': message 1 has no 'role'"),
    ("unknown role", {**CHAT, "prompt": _msgs(("bot", "hi"))},
     "field 'prompt': message 1 has unknown role 'bot' (known: system, user, assistant, tool)"),
    ("content not a string", {**CHAT, "chosen": [{"role": "assistant", "content": ["Hi"]}]},
     "field 'chosen': message 1 content must be a string, got list"),
    ("message not an object", {**CHAT, "prompt": ["hi"]},
     "field 'prompt': message 1 is not an object with role and content, got str"),
    ("empty conversation", {**CHAT, "prompt": []}, "field 'prompt': empty list of messages"),
    ("no assistant turn", {**CHAT, "chosen": _msgs(("user", "Hi!"))}, "field 'chosen': has no assistant turn"),
    ("blank assistant turn", {**CHAT, "rejected": _msgs(("assistant", " "))},
     "field 'rejected': empty or whitespace-only completion"),
    ("string prompt, chat completion", {**GOOD, "chosen": HI},
     "field 'chosen': expected a string like 'prompt', got a list"),
    ("chat prompt, string completion", {**CHAT, "rejected": "No."},
     "field 'rejected': expected a list of messages like 'prompt', got a string"),
    ("completion repeats the prompt", {**CHAT, "chosen": USER + HI},
     "field 'chosen': starts with the prompt's turns, which would appear twice; keep only the reply (or drop "
     "'prompt' to use the implicit-prompt form)"),
    ("lone surrogate", {**GOOD, "chosen": " \ud800"}, "field 'chosen': not valid Unicode (a lone surrogate escape)"),
    ("implicit prompt needs conversations", {"chosen": " a", "rejected": " b"},
     "field 'prompt': missing (only conversations may leave the prompt implicit)"),
    ("implicit: differ before the last turn", {"chosen": USER + HI + USER + HI, "rejected": USER + NO + USER + HI},
     "field 'chosen': 'chosen' and 'rejected' differ before their last turn (at turn 2); without a 'prompt' field "
     "they must share every turn but the final assistant turn(s)"),
    ("implicit: nothing shared", {"chosen": _msgs(("user", "a")) + HI, "rejected": USER + HI},
     "field 'chosen': 'chosen' and 'rejected' differ before their last turn (at turn 1); without a 'prompt' field "
     "they must share every turn but the final assistant turn(s)"),
    ("implicit: one is a prefix of the other", {"chosen": USER + HI, "rejected": USER + HI + NO},
     "field 'chosen': has no turns after those it shares with 'rejected' (an implicit prompt needs a completion)"),
    ("implicit: identical", {"chosen": USER + HI, "rejected": USER + HI}, "field 'chosen': identical to 'rejected'"),
]


@pytest.mark.parametrize("row,expected", [c[1:] for c in PAIRED], ids=[c[0] for c in PAIRED])
def test_paired_problem(tmp_path, row, expected):
    assert _problems(tmp_path, row) == [f"row 1: {expected}"]


UNPAIRED = [
    ("label string", {"label": "true"}, "field 'label': expected a boolean, got str"),
    ("label int", {"label": 1}, "field 'label': expected a boolean, got int"),
    ("label missing", {"label": None}, "field 'label': missing"),
    ("completion missing", {"completion": None}, "field 'completion': missing"),
    ("completion blank", {"completion": ""}, "field 'completion': empty or whitespace-only completion"),
    ("chat completion without assistant", {"prompt": USER, "completion": USER},
     "field 'completion': starts with the prompt's turns, which would appear twice; keep only the reply (or drop "
     "'prompt' to use the implicit-prompt form)"),
]


@pytest.mark.parametrize("change,expected", [c[1:] for c in UNPAIRED], ids=[c[0] for c in UNPAIRED])
def test_unpaired_problem(tmp_path, change, expected):
    row = {"prompt": "Say hi.", "completion": " Hi!", "label": True, **change}
    assert _problems(tmp_path, row, kind="unpaired") == [f"row 1: {expected}"]


EXTRAS = [
    ("missing", {}, "field 'pref_prob': missing"),
    ("string", {"pref_prob": "0.8"}, "field 'pref_prob': expected a finite number, got str"),
    ("boolean", {"pref_prob": True}, "field 'pref_prob': expected a finite number, got bool"),
    ("nan", {"pref_prob": float("nan")}, "field 'pref_prob': expected a finite number, got nan"),
    ("infinite", {"pref_prob": float("-inf")}, "field 'pref_prob': expected a finite number, got -inf"),
    ("huge integer", {"pref_prob": 10**400}, "field 'pref_prob': expected a finite number, got 1000000000"),
]


@pytest.mark.parametrize("change,expected", [c[1:] for c in EXTRAS], ids=[c[0] for c in EXTRAS])
def test_declared_extra_field_problem(tmp_path, change, expected):
    [line] = _problems(tmp_path, {**GOOD, **change}, extra_fields=("pref_prob",))
    assert line.startswith(f"row 1: {expected}")


def test_good_rows_are_normalised(tmp_path):
    rows = [{**GOOD, "pref_prob": 1, "source": "web"},  # unknown columns are ignored, declared ones kept as float
            {"chosen": USER + HI, "rejected": USER + NO, "pref_prob": 0.25},  # implicit prompt
            {"chosen": USER + HI + _msgs(("assistant", "More?")), "rejected": USER + NO, "pref_prob": 0.5}]
    got = load_rows(str(_write(tmp_path, *rows)), extra_fields=("pref_prob",))
    assert got.rows == [
        {**GOOD, "pref_prob": 1.0, "_row": 1},
        {"prompt": USER, "chosen": HI, "rejected": NO, "pref_prob": 0.25, "_row": 2},
        {"prompt": USER, "chosen": HI + _msgs(("assistant", "More?")), "rejected": NO, "pref_prob": 0.5, "_row": 3},
    ]
    assert isinstance(got.rows[0]["pref_prob"], float) and got.read == 3 and got.skipped == {}
    unpaired = load_rows(str(_write(tmp_path, {"prompt": USER, "completion": HI, "label": False})), kind="unpaired")
    assert unpaired.rows == [{"prompt": USER, "completion": HI, "label": False, "_row": 1}]


def test_error_lists_the_first_20_problems_in_row_order_and_counts_rows(tmp_path):
    p = tmp_path / "data.jsonl"
    lines = [json.dumps({**GOOD, "chosen": 5, "rejected": 6})] + ["{bad"] + [json.dumps({"x": i}) for i in range(12)]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        load_rows(str(p))
    assert e.value.line() == (f"{p}: 14 invalid rows (27 problems, the first 20 listed): fix them or pass "
                              "--skip-invalid")
    assert len(e.value.details) == 20
    assert [d.split(": ")[0] for d in e.value.details[:6]] == [f"{p}:row {n}" for n in (1, 1, 2, 3, 3, 4)]


def test_skip_invalid_drops_and_counts_each_row_once_by_its_first_problem(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text("\n".join([json.dumps(GOOD), "{bad", json.dumps({"prompt": "x"}),
                            json.dumps({**GOOD, "rejected": " "}), json.dumps({**GOOD, "chosen": 5})]) + "\n")
    rows = load_rows(str(p), skip_invalid=True)
    assert [r["_row"] for r in rows.rows] == [1]
    assert rows.skipped == {"unreadable row": 1, "missing field": 1, "empty": 1, "wrong type": 1}
    assert rows.read == 5


def test_no_valid_rows_left(tmp_path):
    with pytest.raises(UserError, match="no valid rows: fix the rows"):
        load_rows(str(_write(tmp_path, {"prompt": "x"})), skip_invalid=True)


def test_unknown_kind_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="unknown row kind"):
        load_rows(str(_write(tmp_path, GOOD)), kind="pairs")


def test_public_api():
    assert sorted(prefalign.data.__all__) == ["PairExample", "PointExample", "PreprocessReport", "Rows", "SeqBatch",
                                              "collate_pairs", "encode_rows", "load_rows"]
