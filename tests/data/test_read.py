"""Every supported format reads the same rows; bad files give one clear error; random input never crashes."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefalign.data import encode_rows, load_rows
from prefalign.errors import UserError

ROWS = [{"prompt": f"Question {i}?", "chosen": f" Good answer {i}.", "rejected": f" Bad answer {i}."} for i in range(4)]


def _write_all(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    paths = {"jsonl": tmp_path / "d.jsonl", "json": tmp_path / "d.json", "parquet": tmp_path / "d.parquet",
             "csv": tmp_path / "d.csv", "saved": tmp_path / "saved"}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    paths["json"].write_text(json.dumps(ROWS))
    ds.to_parquet(str(paths["parquet"]))
    ds.to_csv(str(paths["csv"]), index=False)
    ds.save_to_disk(str(paths["saved"]))
    return paths


def test_every_format_reads_the_same_rows(tmp_path):
    for name, path in _write_all(tmp_path).items():
        rows = load_rows(str(path))
        got = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows.rows]
        assert got == ROWS, name
        assert [r["_row"] for r in rows.rows] == [1, 2, 3, 4]


def test_bom_and_blank_lines_are_fine(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n\n" + json.dumps(ROWS[1]).encode() + b"\n")
    assert [r["_row"] for r in load_rows(str(p)).rows] == [1, 3]


@pytest.mark.parametrize("name,content,message", [
    ("d.txt", "hello", "unsupported file type '.txt'"),
    ("d.json", "{broken", "not valid JSON"),
    ("d.json", '{"a": 1}', "expected a JSON list of row objects"),
])
def test_bad_files(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(UserError, match=message):
        load_rows(str(p))


def test_missing_file_and_unpaired_labels(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_rows(str(tmp_path / "nope.jsonl"))
    p = tmp_path / "u.jsonl"
    p.write_text(json.dumps({"prompt": "a", "completion": " b", "label": "true"}) + "\n" +
                 json.dumps({"prompt": "a", "completion": " c", "label": True}) + "\n")
    with pytest.raises(UserError) as e:
        load_rows(str(p), kind="unpaired")
    assert e.value.details == [f"{p}:row 1: field 'label': expected a boolean (true/false), got str"]
    assert len(load_rows(str(p), kind="unpaired", skip_invalid=True).rows) == 1


def test_declared_extra_fields_are_validated(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({**ROWS[0], "pref_prob": 0.8}) + "\n" + json.dumps({**ROWS[1], "pref_prob": "x"}) + "\n")
    with pytest.raises(UserError) as e:
        load_rows(str(p), extra_fields=("pref_prob",))
    assert "row 2: field 'pref_prob': expected a finite number" in e.value.details[0]
    rows = load_rows(str(p), extra_fields=("pref_prob",), skip_invalid=True)
    assert rows.rows[0]["_extras"] == {"pref_prob": 0.8}


text = st.text(max_size=30)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot"]), "content": text})
value = st.one_of(text, st.lists(message, max_size=3), st.integers(), st.none())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected"]), value), min_size=1,
                     max_size=4), max_length=st.one_of(st.none(), st.integers(2, 40)))
def test_random_rows_give_examples_or_one_line_error(tmp_path, tiny_tok, rows, max_length):
    """Random unicode and message structures: valid examples, or a UserError — never another exception."""
    p = tmp_path / "h.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        examples, report = encode_rows(load_rows(str(p), skip_invalid=True), tiny_tok, max_length)
    except UserError as e:
        assert "\n" not in e.line()
        return
    for ex in examples:
        assert ex.chosen_ids and ex.rejected_ids
        if max_length:
            assert len(ex.prompt_ids) + max(len(ex.chosen_ids), len(ex.rejected_ids)) <= max_length
    assert report.rows_kept == len(examples)
