"""Issue 16 class 4 (a full disk, for real) on the write paths besides checkpoints and the final model, and class 5's
damaged reference cache.

The full disk is a real tmpfs mounted in the test (``tmpfs.py``; root only, skipped otherwise), filled with a file
when the test wants it full; runs go through the CLI in-process (``prefalign.cli.main``): exit code 2, one line
``error: …``, no traceback. tmpfs gives whole 4 KiB pages, which makes the failing write predictable: a run's lock
file takes the first free page, run_config.json the next, then config.yaml, then preprocess_report.json; a metrics
line fails when it crosses into a new page.
"""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import struct
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prefalign.cli import main
from prefalign.reference import read_cache, save_cache
from prefalign.train.config import save
from prefalign.train.logger import MetricsLogger
from prefalign.train.loop import build

from .helpers import config, write_pairs
from .tmpfs import fill, mount, small_disk, tmp_files


@pytest.fixture
def disk(tmp_path):
    """A 2 MiB tmpfs at ``tmp_path/disk`` (root only; skipped otherwise)."""
    with small_disk(tmp_path / "disk") as path:
        yield path


def _quiet(*a, **k):
    pass


def _run(capsys, yaml: Path, *flags) -> tuple[int, str]:
    rc = main(["train", "--config", str(yaml), *flags])
    return rc, capsys.readouterr().err


def _refused(capsys, yaml: Path, *flags) -> str:
    rc, err = _run(capsys, yaml, *flags)
    assert rc == 2, err
    assert "Traceback" not in err and "Exception in thread" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _ok(capsys, yaml: Path, *flags) -> str:
    rc, err = _run(capsys, yaml, *flags)
    assert rc == 0, err
    return err


def _yaml(path: Path, *args, **kw) -> Path:
    save(config(*args, **{"memory_probe": False, **kw}), path)
    return path


def _metric_steps(out: Path) -> list[int]:
    """The steps of metrics.jsonl, asserting that every line is whole JSON ending in a newline."""
    raw = (out / "metrics.jsonl").read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), raw[-200:]
    return [json.loads(line)["step"] for line in raw.decode().splitlines()]


def _events(path: Path) -> list:
    """The Event records of a TensorBoard event file, asserting each record's CRCs and that none is cut."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    data, pos, events = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (n,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
        body = data[pos + 12:pos + 12 + n]
        assert len(body) == n and len(data) >= pos + 16 + n, f"{path.name}: a cut record at byte {pos}"
        assert struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] == masked_crc32c(body)
        events.append(Event.FromString(body))
        pos += 16 + n
    return events


# --- the first files: run_config.json, config.yaml, preprocess_report.json -------------------------------------
@pytest.mark.parametrize("pages, what", [(0, "run_config.json"), (2, "config.yaml"), (3, "preprocess_report.json")])
def test_first_files_on_a_full_disk_leave_no_run_behind(capsys, disk, tiny_model_dir, tmp_path, pages, what):
    """With ``pages`` free pages the write of ``what`` fails: one line saying so and how much is free; the folder
    is left empty (no temp file, nothing that looks like a run), so --resume says there is nothing to resume, and
    the same command runs once space is freed."""
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    yaml = _yaml(tmp_path / "run.yaml", tiny_model_dir, data, disk / "run", max_steps=2)
    filler = fill(disk, pages)
    line = _refused(capsys, yaml)
    assert f"writing {what} failed (disk full: " in line and " KiB free; No space left on device)" in line, line
    assert "run the same command again (the output folder was left empty: there is nothing to resume)" in line
    assert list((disk / "run").iterdir()) == [] and tmp_files(disk) == []
    line = _refused(capsys, yaml, "--resume")
    assert "nothing to resume: no checkpoint" in line, line
    filler.unlink()  # space freed
    _ok(capsys, yaml)
    assert (disk / "run" / "run_complete.json").is_file() and tmp_files(disk) == []


# --- metrics.jsonl and TensorBoard mid-run ------------------------------------------------------------------------
# One checkpoint, at step 10 (the next would be step 20); the disk is filled right after it. metrics.jsonl's first
# 4 KiB page fills up at line 12 or 13 (lines of 300-400 bytes), before step 14 ends the run: that line needs a page
# the disk cannot give. (A TensorBoard event is shorter: its file's first page lasts past step 14.)
RUN = dict(max_steps=14, save_steps=10, batch_size=2, logging_steps=1)


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run (its data file and final weights), shared by the metrics tests."""
    root = tmp_path_factory.mktemp("straight")
    data = write_pairs(root / "d.jsonl", n=16)
    assert main(["train", "--config", str(_yaml(root / "run.yaml", tiny_model_dir, data, root / "out", **RUN))]) == 0
    return data, load_file(str(root / "out" / "model.safetensors"))


@contextlib.contextmanager
def _fill_on_sigusr1(path: Path):
    """Fill the disk when the run signals SIGUSR1 (``PREFALIGN_FAULT=after_checkpoint:10:SIGUSR1``)."""
    filled = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: filled.append(fill(path)))
    try:
        yield filled
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize("report_to", [[], ["tensorboard"]], ids=["jsonl", "tensorboard"])
def test_metrics_on_a_full_disk_mid_run_then_resume(capsys, monkeypatch, disk, tiny_model_dir, straight, tmp_path,
                                                    report_to):
    """The disk fills up after the step-10 checkpoint: the metrics line that needs a new page fails; the run stops
    with one line naming step-10 as intact; metrics.jsonl (and the event file) end in a whole record, no temp file.
    --resume on the still-full disk fails at config.yaml and leaves it whole; after the tmpfs is grown it finishes
    with the uninterrupted run's weights and every step logged once (TensorBoard: the steps after 10 purged)."""
    data, want = straight
    out = disk / "run"
    yaml = _yaml(tmp_path / "run.yaml", tiny_model_dir, data, out, report_to=report_to, **RUN)
    monkeypatch.setenv("PREFALIGN_FAULT", "after_checkpoint:10:SIGUSR1")
    with _fill_on_sigusr1(disk) as filled:
        line = _refused(capsys, yaml)
    monkeypatch.delenv("PREFALIGN_FAULT")
    assert filled, "the fault hook did not fire"
    assert "writing metrics.jsonl failed (disk full: 0 KiB free; No space left on device)" in line, line
    assert "free disk space and rerun with --resume; the checkpoint step-10 is intact" in line, line
    steps = _metric_steps(out)
    assert steps == list(range(1, len(steps) + 1)) and 10 <= len(steps) < 14, steps
    if report_to:
        (first,) = (out / "tensorboard").iterdir()
        assert [e.step for e in _events(first) if e.summary.value] == steps
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-10"] and tmp_files(disk) == []
    assert not (out / "run_complete.json").exists()

    if not report_to:
        before = (out / "config.yaml").read_bytes()
        line = _refused(capsys, yaml, "--resume")  # the disk is still full
        assert "writing config.yaml failed (disk full: 0 KiB free" in line and "step-10 is intact" in line, line
        assert (out / "config.yaml").read_bytes() == before and _metric_steps(out) == steps
        assert tmp_files(disk) == []

    assert mount(disk, "16m", remount=True)  # "free disk space"
    _ok(capsys, yaml, "--resume")
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert _metric_steps(out) == list(range(1, RUN["max_steps"] + 1))
    if report_to:
        second = next(p for p in (out / "tensorboard").iterdir() if p != first)
        events = _events(second)
        assert events[1].session_log.status == events[1].session_log.START and events[1].step == 11
        assert [e.step for e in events if e.summary.value] == list(range(11, RUN["max_steps"] + 1))
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(out / "tensorboard"))
        acc.Reload()  # TensorBoard's own reader: steps 11… of the first file purged, each step once
        assert [s.step for s in acc.Scalars("loss")] == list(range(1, RUN["max_steps"] + 1))
    assert tmp_files(disk) == []


def test_tensorboard_on_a_full_disk_at_the_start(capsys, disk, tiny_model_dir, tmp_path):
    """The event file's first record does not fit (the fourth free page): one line, no thread's traceback, no
    empty event file; the folder was set up, so --resume after freeing space starts from step 0 and finishes."""
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    yaml = _yaml(tmp_path / "run.yaml", tiny_model_dir, data, disk / "run", max_steps=2, report_to=["tensorboard"])
    filler = fill(disk, 4)
    line = _refused(capsys, yaml)
    assert "writing TensorBoard events failed (disk full: 0 KiB free; No space left on device)" in line, line
    assert "free disk space and rerun with --resume; no checkpoint was written yet" in line, line
    assert list((disk / "run" / "tensorboard").iterdir()) == [] and tmp_files(disk) == []
    filler.unlink()
    err = _ok(capsys, yaml, "--resume")
    assert "--resume starts from step 0" in err
    (events,) = (disk / "run" / "tensorboard").iterdir()
    assert [e.step for e in _events(events) if e.summary.value] == [1, 2] and _metric_steps(disk / "run") == [1, 2]


def test_logger_on_a_full_disk_fails_in_the_calling_thread_and_leaves_whole_records(disk):
    """No writer thread (TensorBoard's SummaryWriter writes from one, which prints a traceback on a full disk and
    raises at some later call): the failing log() call itself reports ENOSPC, both files end in a whole record,
    and closing writes nothing."""
    threads = threading.active_count()
    failed = []
    logger = MetricsLogger(disk, ["tensorboard"], {}, on_error=lambda what, e: failed.append((what, e)) or
                           RuntimeError(what))
    assert threading.active_count() == threads
    fill(disk)
    metrics = {"loss": 0.693, "grad_norm": 1.5, "lr": 1e-3, "rewards/accuracies": 0.5, "step_time": 0.123456789}
    with pytest.raises(RuntimeError):
        for step in range(1, 10_000):
            logger.log(step, metrics)
    (what, e), = failed
    assert what in ("writing metrics.jsonl", "writing TensorBoard events") and e.errno == errno.ENOSPC
    assert threading.active_count() == threads
    logger.close()
    # log() writes the line, then the event: a failed line has no event; a failed event follows its line
    tb_failed = what == "writing TensorBoard events"
    assert _metric_steps(disk) == list(range(1, step + tb_failed))
    (events,) = (disk / "tensorboard").iterdir()
    assert [e.step for e in _events(events) if e.summary.value] == list(range(1, step))


def test_resume_cuts_metrics_after_the_checkpoint_and_a_torn_last_line(tmp_path):
    lines = [json.dumps({"step": s, "loss": 0.5}) + "\n" for s in range(1, 7)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(lines) + '{"step": 7, "lo')  # torn by a full disk or a kill
    MetricsLogger(tmp_path, [], {}, resume_step=4).close()
    assert path.read_text() == "".join(lines[:4])
    path.write_text("".join(lines[:2]) + "\x00garbage\n" + "".join(lines[2:]))  # not a tail: rewritten
    MetricsLogger(tmp_path, [], {}, resume_step=4).close()
    assert path.read_text() == "".join(lines[:4]) and tmp_files(tmp_path) == []
    path.write_text("".join(lines[:3]) + lines[3].rstrip("\n"))  # a whole last line without its newline
    MetricsLogger(tmp_path, [], {}, resume_step=4).close()
    assert path.read_text() == "".join(lines[:4])


# --- the reference cache -----------------------------------------------------------------------------------------
def test_reference_cache_on_a_full_disk(capsys, disk, tiny_model_dir, tmp_path):
    """The cache (default folder: .prefalign-cache next to output_dir) does not fit: one line, no temp file, the
    output folder not created; after the tmpfs is grown the same command computes and caches it."""
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    yaml = _yaml(tmp_path / "run.yaml", tiny_model_dir, data, disk / "run", max_steps=2, reference="precompute")
    cache = disk / ".prefalign-cache"
    fill(disk)
    line = _refused(capsys, yaml)
    assert (f"{cache}: writing the reference log-prob cache failed (disk full: 0 KiB free; No space left on device)"
            in line), line
    assert "run the same command again (the output folder is untouched)" in line, line
    assert list(cache.iterdir()) == [] and not (disk / "run").exists() and tmp_files(disk) == []
    assert mount(disk, "16m", remount=True)
    err = _ok(capsys, yaml)
    assert "reference log-probs: computed and cached" in err
    (path,) = cache.iterdir()
    key = path.name.removeprefix("ref-logps-").removesuffix(".safetensors")
    assert read_cache(path, key, 8)[1] is None


def test_a_damaged_reference_cache_is_said_and_computed_again(tiny_model_dir, tmp_path):
    """Truncated, empty, garbage, garbled values, wrong shape or dtype, another fingerprint's, an unchecked (older)
    file: found when read, said in one log line, computed again to the same values, and replaced."""
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    cfg = config(tiny_model_dir, data, tmp_path / "out", reference="precompute", memory_probe=False,
                 reference_cache_dir=str(tmp_path / "cache"))
    good = build(cfg, log=_quiet).method.ref_cache.clone()
    (path,) = (tmp_path / "cache").iterdir()
    sound, key = path.read_bytes(), path.name.removeprefix("ref-logps-").removesuffix(".safetensors")
    damage = {
        "truncated": lambda: path.write_bytes(sound[: len(sound) // 2]),
        "empty": lambda: path.write_bytes(b""),
        "garbage": lambda: path.write_bytes(bytes(range(256)) * 4),
        "garbled values": lambda: path.write_bytes(sound[:-8] + b"\x7f" * 8),
        "wrong shape": lambda: save_cache(path, torch.zeros(9, 2), key),
        "wrong dtype": lambda: save_file({"ref_logps": good.double()}, str(path)),
        "another fingerprint": lambda: save_cache(path, good, "0" * 32),
        "unchecked": lambda: save_file({"ref_logps": good}, str(path)),
        "no tensor": lambda: save_file({"other": good}, str(path)),
    }
    for name, spoil in damage.items():
        spoil()
        lines: list[str] = []
        method = build(cfg, log=lines.append).method
        said = [ln for ln in lines if "is unusable" in ln]
        assert len(said) == 1 and said[0].endswith("): computing them again") and "\n" not in said[0], (name, lines)
        assert method.ref_cache_hit is False and torch.equal(method.ref_cache, good), name
        assert read_cache(path, key, len(good))[1] is None, name  # replaced by a sound file
    assert build(cfg, log=_quiet).method.ref_cache_hit is True and tmp_files(tmp_path / "cache") == []


def test_reference_cache_paths_of_the_wrong_kind(capsys, tiny_model_dir, tmp_path):
    """The default cache folder is a file, or the cache file is a folder: one line, before any training."""
    data = write_pairs(tmp_path / "d.jsonl", n=8)
    (tmp_path / ".prefalign-cache").write_text("keep me")
    yaml = _yaml(tmp_path / "run.yaml", tiny_model_dir, data, tmp_path / "out", reference="precompute")
    line = _refused(capsys, yaml)
    assert "the reference cache folder is a file" in line, line
    assert (tmp_path / ".prefalign-cache").read_text() == "keep me" and not (tmp_path / "out").exists()
    (tmp_path / ".prefalign-cache").unlink()
    build(config(tiny_model_dir, data, tmp_path / "first", reference="precompute", memory_probe=False), log=_quiet)
    (path,) = (tmp_path / ".prefalign-cache").iterdir()
    path.unlink()
    path.mkdir()
    line = _refused(capsys, yaml)
    assert f"{path}: the reference cache file is a folder" in line, line
    assert not (tmp_path / "out").exists()
