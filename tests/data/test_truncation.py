"""Truncation (TRL's keep_start / keep_end per sequence), drops counted by reason, and the preprocessing report."""

from __future__ import annotations

import json

import pytest

from prefalign.data import PreprocessReport, Rows, encode_rows
from prefalign.data.encode import percentiles, truncate

SHORT = {"prompt": "Hi.", "chosen": " fine.", "rejected": " bad."}
LONG_COMPLETION = {"prompt": "Tell me a joke.", "chosen": " ok" * 9, "rejected": " no."}
LONG_PROMPT = {"prompt": "word " * 40 + "?", "chosen": " a.", "rejected": " b."}
HUGE_COMPLETION = {"prompt": "Hi.", "chosen": " no" * 60, "rejected": " b."}


def _rows(*rows, skipped=None):
    return Rows("d.jsonl", "paired", [{**r, "_row": i} for i, r in enumerate(rows, start=1)], skipped or {})


def test_keep_start_cuts_completion_ends(tiny_tok):
    [full], _ = encode_rows(_rows(LONG_COMPLETION), tiny_tok)
    [ex], report = encode_rows(_rows(LONG_COMPLETION), tiny_tok, max_length=24, truncation="keep_start")
    room = 24 - len(full.prompt_ids)
    assert ex.prompt_ids == full.prompt_ids
    assert ex.chosen_ids == full.chosen_ids[:room] and len(full.chosen_ids) > room  # chosen lost its end (and EOS)
    assert ex.rejected_ids == full.rejected_ids  # rejected fits: untouched
    assert report.truncated == 1 and report.dropped == {}


def test_keep_end_cuts_the_prompt_start_by_what_the_longer_completion_needs(tiny_tok):
    [full], _ = encode_rows(_rows(LONG_PROMPT), tiny_tok)
    [ex], report = encode_rows(_rows(LONG_PROMPT), tiny_tok, max_length=24, truncation="keep_end")
    longest = max(len(full.chosen_ids), len(full.rejected_ids))
    assert ex.prompt_ids == full.prompt_ids[-(24 - longest):]  # the last max_length tokens of the longer sequence
    assert (ex.chosen_ids, ex.rejected_ids) == (full.chosen_ids, full.rejected_ids)
    assert len(ex.prompt_ids) + longest == 24
    assert report.truncated == 1


@pytest.mark.parametrize("mode,dropped", [
    ("keep_start", {"prompt fills max_length": 1}),  # LONG_PROMPT: no room left for any completion token
    ("keep_end", {"completion fills max_length": 1}),  # HUGE_COMPLETION: no prompt token would be left
])
def test_drops_are_counted_by_reason(tiny_tok, mode, dropped):
    rows = _rows(SHORT, LONG_COMPLETION, LONG_PROMPT, HUGE_COMPLETION, skipped={"missing field": 2})
    examples, report = encode_rows(rows, tiny_tok, max_length=24, truncation=mode)
    assert report.dropped == dropped and report.invalid_skipped == {"missing field": 2}
    assert report.rows_read == 6 and report.rows_kept == len(examples) == 3 and report.truncated == 2
    assert report.rows_read == report.rows_kept + sum(report.invalid_skipped.values()) + sum(report.dropped.values())
    for ex in examples:
        assert len(ex.prompt_ids) >= 1 and ex.chosen_ids and ex.rejected_ids
        assert len(ex.prompt_ids) + max(len(ex.chosen_ids), len(ex.rejected_ids)) <= 24


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_truncate_boundaries(mode):
    p, c = [1, 2, 3], [4, 5]
    assert truncate(p, [c], None, mode) == (p, [c], False)
    assert truncate(p, [c], 5, mode) == (p, [c], False)  # exactly max_length: untouched
    expected = (p, [[4]], True) if mode == "keep_start" else ([2, 3], [c], True)
    assert truncate(p, [c], 4, mode) == expected
    assert truncate(p, [c], 3 if mode == "keep_start" else 2, mode) == (
        "prompt fills max_length" if mode == "keep_start" else "completion fills max_length")


def test_percentiles_are_nearest_rank():
    assert percentiles(list(range(100, 0, -1))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7}
    assert percentiles([1, 2, 3, 10]) == {"p50": 2, "p90": 10, "p99": 10, "max": 10}
    assert percentiles([]) == {}


def test_report_token_lengths_render_and_atomic_save(tiny_tok, tmp_path):
    examples, report = encode_rows(_rows(SHORT, LONG_COMPLETION, skipped={"empty": 1}), tiny_tok)
    prompts = sorted(len(e.prompt_ids) for e in examples)
    completions = sorted(len(c) for e in examples for c in (e.chosen_ids, e.rejected_ids))
    assert report.tokens["prompt"] == {"p50": prompts[0], "p90": prompts[1], "p99": prompts[1], "max": prompts[1]}
    assert report.tokens["completion"]["p50"] == completions[1] and report.tokens["completion"]["max"] == completions[3]
    assert report.tokens["total"]["max"] == len(examples[1].prompt_ids) + len(examples[1].chosen_ids)

    text = report.render()
    assert text.splitlines()[0] == "data d.jsonl: 3 rows read, 2 kept, 0 truncated"
    assert "  skipped as invalid: 1 (empty)" in text.splitlines()
    assert text.splitlines()[2].split() == ["tokens", "p50", "p90", "p99", "max"]

    path = report.save(tmp_path / "out")
    assert path == tmp_path / "out" / "preprocess_report.json"
    assert json.loads(path.read_text()) == report.to_dict()
    report.rows_kept = 1
    report.save(tmp_path / "out")  # overwrites in place
    assert json.loads(path.read_text())["rows_kept"] == 1
    assert [f.name for f in (tmp_path / "out").iterdir()] == ["preprocess_report.json"]  # no temp file left


def test_report_to_dict_keys():
    assert list(PreprocessReport("d").to_dict()) == ["path", "rows_read", "rows_kept", "invalid_skipped", "dropped",
                                                     "ties", "truncated", "tokens"]


def test_bad_truncation_settings_are_programming_errors(tiny_tok):
    with pytest.raises(ValueError, match="truncation must be one of"):
        encode_rows(_rows(SHORT), tiny_tok, 10, "middle")
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        encode_rows(_rows(SHORT), tiny_tok, 0)
