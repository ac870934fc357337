"""Verifiable rewards and the columns / None contract: answer extraction on a hand table, each checker, and how
columns reach a user's callable."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.errors import UserError
from prefalign.reward import (
    CallableReward,
    ExactReward,
    FormatReward,
    LengthReward,
    MathReward,
    RegexReward,
    expand_columns,
    extract_answer,
    load_reward,
    parse_number,
)

NAN = float("nan")

# (completion, gold answer, expected math reward); None: the row has no answer to judge against.
MATH = [
    ("The answer is \\boxed{42}.", 42, 1.0),
    ("so \\boxed{\\frac{3}{4}}", "3/4", 1.0),  # LaTeX fraction vs a plain one
    ("\\boxed{-\\dfrac{1}{2}}", -0.5, 1.0),
    ("first \\boxed{3}, on reflection \\boxed{5}", 5, 1.0),  # the last box counts
    ("\\boxed{\\{1\\}} then \\boxed{x^{2}} and 7", "7", 0.0),  # the last (balanced) box holds no 7
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "#### 72", 1.0),  # GSM8K style on both sides
    ("#### 1,234", 1234, 1.0),  # thousands separator
    ("Final Answer: $1,234.50$", "1234.5", 1.0),
    ("Answer: 3/4", 0.75, 1.0),
    ("answer: 0.75", "\\frac{3}{4}", 1.0),
    ("The answer is 12, because 3 * 4 = 12", 12, 1.0),  # first number of the stated answer
    ("The answer is 12.0", "12", 1.0),  # trailing .0
    ("The answer is −5", -5, 1.0),  # Unicode minus
    ("Answer: -5", 5, 0.0),  # the sign matters
    ("I think 3, then 4, finally 9 apples.", 9, 1.0),  # no marker: the last number
    ("I think 3, then 4, finally 9 apples.", 3, 0.0),
    ("No idea.", 3, 0.0),  # no number at all
    ("", 0, 0.0),
    ("Answer: 50%", "50%", 1.0),
    ("Answer: 1e3", 1000, 1.0),
    ("Answer: 0.33333", 1 / 3, 0.0),  # outside the default relative tolerance 1e-6
    ("The answer is 1\\,000", 1000, 1.0),  # LaTeX thin space
    ("\\boxed{x^2 + 1}", "x^2+1", 1.0),  # a symbolic gold answer: normalised strings
    ("\\boxed{x^2 + 2}", "x^2 + 1", 0.0),
    ("Answer: 7", None, None),
    ("Answer: 7", "   ", None),
    ("Answer: 7", NAN, None),
]


@pytest.mark.parametrize("completion, gold, expected", MATH)
def test_math_reward_table(completion, gold, expected):
    out = MathReward()(["q"], [completion], columns={"answer": [gold]}, allow_none=True)
    if expected is None:
        assert math.isnan(float(out[0]))
    else:
        assert float(out[0]) == expected


@pytest.mark.parametrize("text, explicit, number", [
    ("a \\boxed{1{,}234} b", "1{,}234", 1234.0),
    ("#### 8\nmore text", "8", 8.0),
    ("The answer is: 2/5.", "2/5.", 0.4),
    ("nothing stated, 17", None, 17.0),
    ("\\boxed{unclosed", None, None),
])
def test_extract_answer_and_parse_number(text, explicit, number):
    assert extract_answer(text) == explicit
    got = parse_number(explicit if explicit is not None else text, last=explicit is None)
    assert got == (pytest.approx(number) if number is not None else None)


def test_math_tolerance_from_the_spec():
    r = load_reward("math:1e-3")
    assert r.name == "math:0.001"
    assert r(["q"], ["Answer: 0.3333"], columns={"answer": [1 / 3]}).tolist() == [1.0]


def test_exact_reward_normalises_case_space_and_latex_text():
    out = ExactReward()(["q"] * 4, ["\\boxed{\\text{Paris}}", "The answer is  paris.", "London", "answer: Paris"],
                        columns={"answer": ["PARIS", "Paris", "Paris", "#### paris"]})
    assert out.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_regex_format_and_length_rewards():
    assert RegexReward("^Answer")(["p"] * 2, ["Answer: 4", "I say Answer"]).tolist() == [1.0, 0.0]
    think = FormatReward("think")
    answer = FormatReward("answer")
    comps = ["<think>a\nb</think> 42", "<think>a</think><answer>42</answer>", "42", "<think>a<think>b</think> 4",
             "<think>a</think>", " <think>x</think>\n<answer>y</answer> "]
    assert think(["p"] * 6, comps).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert answer(["p"] * 6, comps).tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    # −|len − 4| / 4 in characters.
    torch.testing.assert_close(LengthReward(4)(["p"] * 4, ["abcd", "", "abcdefgh", "ab"]),
                               torch.tensor([0.0, -1.0, -1.0, -0.5]))


def test_missing_column_is_one_line_error_naming_reward_and_column():
    with pytest.raises(UserError, match=r"reward math: needs the column 'answer' \(columns given: solution\)") as e:
        load_reward("math")(["q"], ["4"], columns={"solution": ["4"]})
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="^reward math: needs the column 'answer'"):  # the component, named
        load_reward("0.5*vader + normalize(math, mean=0, std=1)")(["q"], ["4"])


def test_none_is_an_error_unless_allowed():
    r = load_reward("math")
    with pytest.raises(UserError, match="returned None for item 2, not a number \\(the row has no 'answer' value\\)"):
        r(["q"] * 2, ["1", "2"], columns={"answer": [1, None]})
    assert torch.isnan(r(["q"] * 2, ["1", "2"], columns={"answer": [1, None]}, allow_none=True)).tolist() == \
        [False, True]


def test_callable_receives_the_columns_it_names_or_all_with_kwargs():
    seen = {}

    def named(prompts, completions, answer):
        seen["named"] = answer
        return [float(c == a) for c, a in zip(completions, answer)]

    def optional(prompts, completions, answer=None, level=None):
        seen["optional"] = (answer, level)
        return [0.0] * len(completions)

    def kwargs(prompts, completions, **cols):
        seen["kwargs"] = sorted(cols)
        return [None, 1.0]

    def old(prompts, completions):
        return [1.0] * len(completions)

    cols = {"answer": ["a", "b"], "level": [1, 2], "extra": [0, 0]}
    assert load_reward(named)(["p", "q"], ["a", "x"], cols).tolist() == [1.0, 0.0]
    assert seen["named"] == ["a", "b"]
    load_reward(optional)(["p", "q"], ["a", "x"], {"answer": ["a", "b"]})
    assert seen["optional"] == (["a", "b"], None)  # an absent optional column is not passed
    out = load_reward(kwargs)(["p", "q"], ["a", "x"], cols, allow_none=True)
    assert seen["kwargs"] == ["answer", "extra", "level"] and math.isnan(out[0]) and out[1] == 1.0
    assert load_reward(old)(["p", "q"], ["a", "x"], cols).tolist() == [1.0, 1.0]
    assert CallableReward(named).requires == ("answer",)
    with pytest.raises(UserError, match="reward named: needs the column 'answer'"):
        load_reward(named)(["p"], ["a"])


def test_columns_are_chunked_with_the_rows():
    calls = []

    def f(prompts, completions, answer):
        calls.append(list(answer))
        return [float(a) for a in answer]

    out = CallableReward(f, batch_size=2)(["p"] * 5, ["c"] * 5, {"answer": [1, 2, 3, 4, 5]})
    assert out.tolist() == [1, 2, 3, 4, 5] and calls == [[1, 2], [3, 4], [5]]
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 5"):
        CallableReward(f)(["p"] * 5, ["c"] * 5, {"answer": [1, 2]})


def test_a_computed_nan_is_still_an_error_with_allow_none():
    with pytest.raises(UserError, match="non-finite score"):
        load_reward(lambda p, c: [NAN] * len(c))(["p"], ["c"], allow_none=True)


def test_expand_columns_repeats_row_fields_over_completions():
    rows = [{"prompt": "a", "completions": ["x", "y"], "answer": 1}, {"prompt": "b", "completions": ["z"]}]
    assert expand_columns(rows, [2, 1]) == {"answer": [1, 1, None]}
