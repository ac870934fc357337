"""Random unicode and random message structures: valid examples whose tokens decode back to the row's text, or a
one-line UserError — never another exception."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from prefalign.data import encode_rows, load_rows
from prefalign.data.encode import truncate
from prefalign.errors import UserError

# Words of the tokenizer's corpus (so merges happen), text that tends to break things, and random unicode.
text = st.one_of(
    st.text(min_size=1, max_size=12),
    st.lists(st.sampled_from([" cat", "The", " ca", "t", " is", "?", "\n", " ", "é", "\ud800", "<|im_end|>"]),
             max_size=5).map("".join),
)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]), "content": text}),
    st.fixed_dictionaries({}, optional={"role": st.sampled_from(["assistant", "bot", 3]),
                                        "content": st.one_of(text, st.integers(), st.none())}),
    text,
)
value = st.one_of(text, st.lists(message, max_size=4), st.integers(), st.none(), st.booleans())
row = st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "pref_prob"]),
                      st.one_of(value, st.floats(allow_nan=True)), max_size=4)
plain_row = st.fixed_dictionaries({"prompt": text, "chosen": text, "rejected": text,
                                   "pref_prob": st.floats(0, 1)})
turns = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": text}),
                 min_size=1, max_size=2)
reply = st.lists(st.fixed_dictionaries({"role": st.just("assistant"), "content": text}), min_size=1, max_size=2)
chat_row = st.one_of(
    st.fixed_dictionaries({"prompt": turns, "chosen": reply, "rejected": reply, "pref_prob": st.floats(0, 1)}),
    st.tuples(turns, reply, reply).map(lambda t: {"chosen": t[0] + t[1], "rejected": t[0] + t[2], "pref_prob": 0.5}),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(plain_row, chat_row, plain_row, chat_row, row), min_size=1, max_size=3),
       max_length=st.one_of(st.none(), st.integers(1, 40)), skip_invalid=st.booleans(),
       mode=st.sampled_from(["keep_start", "keep_end"]))
def test_random_rows_give_exact_examples_or_one_line_error(tmp_path, tiny_tok, rows, max_length, skip_invalid, mode):
    p = tmp_path / "h.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        loaded = load_rows(str(p), extra_fields=("pref_prob",), skip_invalid=skip_invalid)
        examples, report = encode_rows(loaded, tiny_tok, max_length, mode)
    except UserError as e:
        assert e.line() and "\n" not in e.line()
        event(f"UserError: {e.what.split(':')[0][:40]}")
        return
    event(f"{len(examples)} examples")
    assert report.rows_read == len(rows)
    assert report.rows_kept == len(examples) == len(loaded.rows) - sum(report.dropped.values())
    source = {r["_row"]: r for r in loaded.rows}
    for ex in examples:
        assert ex.chosen_ids and ex.rejected_ids and ex.extras.keys() == {"pref_prob"}
        if max_length is not None:
            assert len(ex.prompt_ids) + max(len(ex.chosen_ids), len(ex.rejected_ids)) <= max_length
            continue
        r = source[ex.row]  # untruncated: the tokens are exactly the row's text, split at the right place
        dec = lambda ids: tiny_tok.decode(ids, clean_up_tokenization_spaces=False)
        if isinstance(r["prompt"], str):
            assert dec(ex.prompt_ids) == r["prompt"]
            assert dec(ex.chosen_ids) in (r["chosen"], r["chosen"] + tiny_tok.eos_token)
        else:
            whole = tiny_tok.apply_chat_template(r["prompt"] + r["chosen"], tokenize=False)
            assert dec(ex.prompt_ids + ex.chosen_ids) == whole


@settings(max_examples=50, deadline=None)
@given(prompt=st.lists(st.integers(0, 9), max_size=8), comps=st.lists(st.lists(st.integers(0, 9), min_size=1,
       max_size=8), min_size=1, max_size=2), max_length=st.integers(1, 12), mode=st.sampled_from(["keep_start",
                                                                                                  "keep_end"]))
def test_truncate_keeps_a_prefix_or_suffix_within_budget(prompt, comps, max_length, mode):
    out = truncate(prompt, comps, max_length, mode)
    if isinstance(out, str):
        return
    p, cs, cut = out
    assert all(len(p) + len(c) <= max_length for c in cs) and all(cs)
    assert cut == (p != prompt or cs != comps)
    if mode == "keep_start":  # TRL keep_start: the first max_length tokens of each sequence
        assert p == prompt and all(prompt + c == (prompt + o)[:max_length] for c, o in zip(cs, comps))
    else:  # keep_end: the prompt loses its start; completions are whole
        assert cs == comps and p == prompt[len(prompt) - len(p):] and (p or not cut)
