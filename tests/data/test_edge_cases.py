"""Issue 16, class 3: data edge cases — json.loads' RecursionError/ValueError, named pipes, chat turns out of order,
declared field ranges. Each is a problem naming row and field (through ``load_rows``) and, through
``prefalign train``, exit 2 with one ``error:`` line, no traceback, no output folder."""

from __future__ import annotations

import json
import os
import threading

import pytest

from prefalign.cli import main
from prefalign.data import load_rows
from prefalign.data.io import _STREAMS, read_table
from prefalign.errors import UserError

GOOD = {"prompt": "Say hi.", "chosen": " Hi there!", "rejected": " Go away."}


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def _problems(path, **kw) -> list[str]:
    with pytest.raises(UserError) as e:
        load_rows(str(path), **kw)
    return e.value.details


def _fifo_with_writer(path, payload: bytes, delay: float = 0.0) -> threading.Thread:
    os.mkfifo(path)

    def write():
        import time

        time.sleep(delay)
        with open(path, "wb") as f:
            f.write(payload)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def _in_thread(fn, timeout: float = 30):
    """fn() in a thread; fails the test instead of hanging when it does not return within ``timeout``."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 — handed back to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hung"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---- json.loads beyond JSONDecodeError ------------------------------------------------------------------------------
@pytest.mark.parametrize("line, expected", [
    (b"[" * 100_000, "row 2: line is not valid JSON: nested too deeply to parse"),
    (b'{"prompt": "a", "chosen": " b", "rejected": " c", "n": 9' + b"9" * 5000 + b"}",
     "row 2: line is not valid JSON: an integer with too many digits"),
    (b'{"prompt": "a", "chosen": ' + b'{"x": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
     "row 2: line is not valid JSON: nested too deeply to parse"),
], ids=["deep-list", "huge-int", "deep-object"])
def test_jsonl_recursion_and_huge_integers_name_the_row(tmp_path, line, expected):
    p = tmp_path / "d.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n" + line + b"\n")
    rows, problems = read_table(str(p))
    assert [n for n, _ in rows] == [1]
    [(n, _, msg)] = problems
    assert n == 2 and msg.startswith(f"{p}:{expected}")


@pytest.mark.parametrize("content, expected", [
    (b"[" * 100_000, "not valid JSON: nested too deeply to parse"),
    (b'[{"prompt": 1' + b"0" * 5000 + b"}]", "not valid JSON: an integer with too many digits"),
], ids=["deep-list", "huge-int"])
def test_json_file_recursion_and_huge_integers(tmp_path, content, expected):
    p = tmp_path / "d.json"
    p.write_bytes(content)
    with pytest.raises(UserError, match=expected) as e:
        read_table(str(p))
    assert "\n" not in str(e.value)


# ---- named pipes ----------------------------------------------------------------------------------------------------
def test_named_pipe_is_read_once_and_again_from_memory(tmp_path):
    fifo = tmp_path / "pairs"  # no suffix, like /dev/fd/63 from <(zcat pairs.jsonl.gz)
    payload = "".join(json.dumps({**GOOD, "prompt": f"Say hi {i}."}) + "\n" for i in range(3)).encode()
    writer = _fifo_with_writer(fifo, payload, delay=0.2)
    rows, problems = _in_thread(lambda: read_table(str(fifo)))
    writer.join(5)
    assert len(rows) == 3 and not problems
    again = _in_thread(lambda: load_rows(str(fifo)), timeout=10)  # the pipe is drained: the bytes read are kept
    assert [r["prompt"] for r in again.rows] == [f"Say hi {i}." for i in range(3)]
    _STREAMS.clear()


def test_named_pipe_json_list_and_bad_rows(tmp_path):
    fifo = tmp_path / "pairs.json"
    _fifo_with_writer(fifo, json.dumps([GOOD, {**GOOD, "chosen": 3}]).encode())
    problems = _in_thread(lambda: _problems(fifo))
    assert problems == [f"{fifo}:row 2: field 'chosen': expected a string or a list of messages, got int"]
    _STREAMS.clear()


def test_named_pipe_without_a_writer_is_refused_not_waited_on(tmp_path, monkeypatch):
    fifo = tmp_path / "nobody.jsonl"
    os.mkfifo(fifo)
    monkeypatch.setenv("PREFALIGN_PIPE_TIMEOUT", "0.3")
    with pytest.raises(UserError, match="a named pipe that nothing wrote to within 0.3 s") as e:
        _in_thread(lambda: read_table(str(fifo)), timeout=10)
    assert "\n" not in str(e.value)


def test_named_pipe_with_unknown_content_is_refused(tmp_path):
    fifo = tmp_path / "stream"
    _fifo_with_writer(fifo, b"prompt,chosen,rejected\na,b,c\n")
    with pytest.raises(UserError, match="cannot tell the format of the pipe's content"):
        _in_thread(lambda: read_table(str(fifo)))
    _STREAMS.clear()


def test_train_reads_data_from_a_named_pipe(tiny_model_dir, tmp_path, capsys):
    fifo = tmp_path / "pairs"
    payload = "".join(json.dumps({**GOOD, "prompt": f"Say hi {i}."}) + "\n" for i in range(4)).encode()
    _fifo_with_writer(fifo, payload, delay=0.2)
    out = tmp_path / "out"
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(fifo), "--output_dir", str(out), "--max_steps",
            "1", "--batch_size", "2", "--report_to", "[]", "--progress", "false"]
    rc = _in_thread(lambda: main(argv), timeout=120)
    _STREAMS.clear()
    assert rc == 0, capsys.readouterr().err
    assert (out / "run_complete.json").is_file() or any(out.iterdir())


# ---- chat turns out of order ---------------------------------------------------------------------------------------
TWO_USERS = {"prompt": _msgs(("user", "Hi."), ("user", "Hello?")), "chosen": _msgs(("assistant", "Hi!")),
             "rejected": _msgs(("assistant", "No."))}
PROMPT_ENDS_IN_ASSISTANT = {"prompt": _msgs(("user", "Hi."), ("assistant", "Hello.")),
                            "chosen": _msgs(("assistant", "How are you?")), "rejected": _msgs(("assistant", "Bye."))}
USER_AFTER_USER_PROMPT = {"prompt": _msgs(("user", "Hi.")), "chosen": _msgs(("user", "Again."), ("assistant", "Hi!")),
                          "rejected": _msgs(("assistant", "No."))}
IMPLICIT_TWO_USERS = {"chosen": _msgs(("user", "a"), ("user", "b"), ("assistant", "c")),
                      "rejected": _msgs(("user", "a"), ("user", "b"), ("assistant", "d"))}
ORDER = "the chat template never renders that boundary at inference"


@pytest.mark.parametrize("row, expected", [
    (TWO_USERS, "row 1: field 'prompt': message 2 is a second user turn in a row (after message 1)"),
    (PROMPT_ENDS_IN_ASSISTANT, "row 1: field 'chosen': message 1 is a second assistant turn in a row (after the "
                               "last turn of 'prompt')"),
    (USER_AFTER_USER_PROMPT, "row 1: field 'chosen': message 1 is a second user turn in a row (after the last "
                             "turn of 'prompt')"),
    (IMPLICIT_TWO_USERS, "row 1: field 'chosen': message 2 is a second user turn in a row (after message 1)"),
])
def test_paired_turns_out_of_order(tmp_path, row, expected):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(row) + "\n")
    problems = _problems(p)
    assert problems[0].startswith(f"{p}:{expected}") and ORDER in problems[0], problems


def test_multi_turn_assistant_completion_after_a_user_turn_is_still_accepted(tmp_path):
    row = {"prompt": _msgs(("user", "Hi")), "chosen": _msgs(("assistant", "Hello!"), ("assistant", "Yes.")),
           "rejected": _msgs(("assistant", "Go."))}
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(row) + "\n")
    assert len(load_rows(str(p)).rows) == 1


def test_unpaired_and_cross_prompt_rows_are_checked_too(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_text(json.dumps({"prompt": PROMPT_ENDS_IN_ASSISTANT["prompt"], "completion": _msgs(("assistant", "x")),
                             "label": True}) + "\n")
    assert "row 1: field 'completion': message 1 is a second assistant turn" in _problems(p, kind="unpaired")[0]
    c = tmp_path / "c.jsonl"
    c.write_text(json.dumps({"chosen_prompt": TWO_USERS["prompt"], "chosen": _msgs(("assistant", "x")),
                             "rejected_prompt": _msgs(("user", "q")), "rejected": _msgs(("assistant", "y"))}) + "\n")
    assert "field 'chosen_prompt': message 2 is a second user turn" in _problems(c, cross_prompt=True)[0]


@pytest.mark.parametrize("msgs, expected", [
    (_msgs(("user", "a"), ("user", "b"), ("assistant", "c")), "message 2 is a second user turn in a row"),
    (_msgs(("user", "a"), ("assistant", "b"), ("assistant", "c")), "message 3 is a second assistant turn in a row"),
])
def test_sft_messages_out_of_order(tmp_path, msgs, expected):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps({"messages": _msgs(("user", "ok"), ("assistant", "fine"))}) + "\n"
                 + json.dumps({"messages": msgs}) + "\n")
    [problem] = _problems(p, kind="sft")
    assert problem.startswith(f"{p}:row 2: field 'messages': {expected}") and ORDER in problem


# ---- declared ranges ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, ok", [(0, True), (1, True), (0.25, True), (1.5, False), (-0.01, False)])
def test_pref_prob_range_from_the_objective(tmp_path, value, ok):
    from prefalign.data.validate import declared_ranges

    assert declared_ranges(("pref_prob",)) == {"pref_prob": (0.0, 1.0)}
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({**GOOD, "pref_prob": 0.9}) + "\n" + json.dumps({**GOOD, "pref_prob": value}) + "\n")
    if ok:
        assert [r["pref_prob"] for r in load_rows(str(p), extra_fields=("pref_prob",)).rows] == [0.9, value]
    else:
        assert _problems(p, extra_fields=("pref_prob",)) == [
            f"{p}:row 2: field 'pref_prob': must be in [0, 1], got {value!r}"]


# ---- through `prefalign train` ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows, extra, expected", [
    ([GOOD, {**GOOD, "pref_prob": 2}], ["--objective", "iregression"], "row 2: field 'pref_prob': must be in [0, 1]"),
    ([TWO_USERS], [], "row 1: field 'prompt': message 2 is a second user turn in a row"),
    ([PROMPT_ENDS_IN_ASSISTANT], [], "row 1: field 'chosen': message 1 is a second assistant turn in a row"),
])
def test_train_refuses_with_the_row_named(tiny_model_dir, tmp_path, capsys, rows, extra, expected):
    data = tmp_path / "d.jsonl"
    rows = [{**r, "pref_prob": r.get("pref_prob", 0.7)} for r in rows] if extra else rows
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    rc = main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--output_dir", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert expected in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists()
