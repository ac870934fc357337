"""Every supported source reads the same rows with the same row numbers; bad files give one clear error."""

from __future__ import annotations

import json
import time

import pytest

from prefalign.data import load_rows
from prefalign.data.io import read_table
from prefalign.errors import UserError

ROWS = [{"prompt": f"Question {i}?", "chosen": f" Good answer {i}.", "rejected": f" Bad answer {i}."} for i in range(4)]
CHAT = [{"prompt": [{"role": "user", "content": f"Hi {i}"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": f"Go {i}."}]} for i in range(3)]


def _write_all(tmp_path, rows):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    paths = {fmt: tmp_path / f"d.{fmt}" for fmt in ("jsonl", "json", "parquet")}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["json"].write_text(json.dumps(rows))
    ds.to_parquet(str(paths["parquet"]))
    (tmp_path / "wrapped.json").write_text(json.dumps({"train": rows}))
    paths["wrapped json"] = tmp_path / "wrapped.json"
    ds.to_json(str(tmp_path / "lines.json"))  # datasets writes JSON Lines even to a .json name
    paths["datasets to_json"] = tmp_path / "lines.json"
    ds.save_to_disk(str(tmp_path / "saved"))
    paths["save_to_disk"] = tmp_path / "saved"
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved_dict"))
    paths["save_to_disk DatasetDict"] = tmp_path / "saved_dict"
    if isinstance(rows[0]["prompt"], str):  # CSV cannot hold lists of messages
        ds.to_csv(str(tmp_path / "d.csv"), index=False)
        paths["csv"] = tmp_path / "d.csv"
    return paths


@pytest.mark.parametrize("rows", [ROWS, CHAT], ids=["plain", "conversational"])
def test_every_format_reads_the_same_rows(tmp_path, rows):
    paths = _write_all(tmp_path, rows)
    assert len(paths) == (8 if rows is ROWS else 7)
    for name, path in paths.items():
        got = load_rows(str(path))
        assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in got.rows] == rows, name
        assert [r["_row"] for r in got.rows] == list(range(1, len(rows) + 1)), name


def test_csv_text_columns_stay_strings(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('prompt,chosen,rejected,score\n2+2=,4,5,0.5\n"Say ""hi"", please.",Hi,"multi\nline",1\n')
    assert [r for _, r in read_table(str(p))[0]] == [
        {"prompt": "2+2=", "chosen": "4", "rejected": "5", "score": 0.5},
        {"prompt": 'Say "hi", please.', "chosen": "Hi", "rejected": "multi\nline", "score": 1.0}]


def test_bom_blank_lines_and_crlf_are_fine_and_row_numbers_are_line_numbers(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [json.dumps(r).encode() for r in ROWS[:2]]
    p.write_bytes(b"\xef\xbb\xbf" + lines[0] + b"\r\n\r\n   \n" + lines[1] + b"\r\n")
    assert [r["_row"] for r in load_rows(str(p)).rows] == [1, 4]


def test_bad_lines_are_row_problems_not_file_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{not json}\n{"prompt": "\xff\xfe"}\n[1, 2]\n')
    rows, problems = read_table(str(p))
    assert [n for n, _ in rows] == [1]
    assert problems == [
        (2, "unreadable row", f"{p}:row 2: line is not valid JSON: Expecting property name enclosed in double "
                              "quotes (column 2)"),
        (3, "unreadable row", f"{p}:row 3: not valid UTF-8 (byte 13 of the line)"),
        (4, "unreadable row", f"{p}:row 4: expected a JSON object, got a list"),
    ]


@pytest.mark.parametrize("name,content,message", [
    ("d.jsonl", b"", "d.jsonl: file is empty: give a file with at least one row"),
    ("d.jsonl", b"\xef\xbb\xbf\n\n  \n", "d.jsonl: file is empty"),
    ("d.json", b"", "d.json: file is empty"),
    ("d.csv", b"", "d.csv: file is empty"),
    ("d.txt", b"hello", "d.txt: unsupported file type '.txt': give a .jsonl, .json, .parquet or .csv file, or a "
                        "folder written by datasets' save_to_disk"),
    ("d.json", b"{broken", "d.json: not valid JSON: Expecting property name enclosed in double quotes (line 1, "
                           "column 2): fix the file"),
    ("d.json", b'{"a": 1}', "d.json: expected a JSON list of row objects"),
    ("d.json", b"[]", "d.json: file has no rows"),
    ("d.json", b'["\xff"]', "d.json: not valid UTF-8 (byte 3): re-save the file as UTF-8"),
    ("d.parquet", b"not parquet", "d.parquet: cannot read parquet: "),
    ("d.csv", b"a,b\n1,2,3\n", "d.csv: cannot read csv: CSV parse error"),
    ("d.csv", b"a,b\n", "d.csv: dataset has no rows"),
])
def test_bad_files(tmp_path, monkeypatch, name, content, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError) as e:
        load_rows(name)
    assert e.value.line().startswith(message)
    assert "\n" not in e.value.line()


def test_missing_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^nope.jsonl: file not found: check the path \(give a .jsonl"):
        load_rows("nope.jsonl")
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="^data/train: file not found"):  # under a local folder: not a hub name
        load_rows("data/train")
    with pytest.raises(UserError, match="^saved: not a dataset folder"):
        (tmp_path / "saved").mkdir()
        load_rows("saved")


def test_datasetdict_without_train_split(tmp_path):
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "s"))
    with pytest.raises(UserError, match=r"dataset has no 'train' split \(splits: test\)"):
        load_rows(str(tmp_path / "s"))


def test_hub_name_offline_is_a_clean_error():
    """conftest sets HF_HUB_OFFLINE=1 (no network here): an owner/name that is no local path fails cleanly."""
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        load_rows("someone/some-dataset")
    assert e.value.line().startswith("someone/some-dataset: no such local file, and loading it from the Hugging "
                                     "Face hub failed: ")
    assert e.value.line().endswith(": give a local path (the hub needs a network connection)")
    assert time.monotonic() - start < 10
