"""Metrics to ``metrics.jsonl`` (one JSON object per logged step), TensorBoard, and W&B when asked.

Both files are appended to in whole records by the calling thread: a write cut short (a full disk) is cut off
again, so ``metrics.jsonl`` never ends in half a line nor the event file in half an event, and the error goes to
``on_error`` (the engine's: one line naming the intact checkpoint, the run stops). TensorBoard's ``SummaryWriter``
is not used for that reason: it writes from a background thread, which on a full disk prints a traceback to
stderr, dies, and has its error raised at some later call. The event file is the same format (tensorboard's
``Event`` records, ``events.out.tfevents.*``). On ``--resume`` the lines logged after the checkpoint (and a torn
last line) are cut off, and the new event file starts by purging the steps after it (``SummaryWriter``'s
``purge_step``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import time
from pathlib import Path


class MetricsLogger:
    """``on_error(what, exc) -> Exception``: what to raise when a write fails with an ``OSError`` (the logger is
    closed first); without it the ``OSError`` itself propagates."""

    def __init__(self, folder: Path, report_to: list, config: dict, enabled: bool = True, resume_step: int = 0,
                 on_error=None):
        self.enabled, self.on_error = enabled, on_error
        self.file = self.tb = self.wandb = None
        if not enabled:
            return
        path = folder / "metrics.jsonl"
        with self._writing("metrics.jsonl"):
            if resume_step > 0 and path.exists():  # drop lines logged after the checkpoint we resume from
                _cut(path, resume_step)
            self.file = _Appender(path, truncate=resume_step <= 0)
        if "tensorboard" in report_to:
            with self._writing("TensorBoard events"):
                self.tb = _EventFile(folder / "tensorboard", resume_step + 1 if resume_step > 0 else None)
        if "wandb" in report_to:
            import wandb  # only when the user asks for it

            self.wandb = wandb.init(config=config, dir=str(folder))

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        with self._writing("metrics.jsonl"):
            self.file.write((json.dumps({"step": step, **metrics}) + "\n").encode())
        if self.tb is not None:
            with self._writing("TensorBoard events"):
                self.tb.scalars(step, metrics)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        """Idempotent; closing never writes (every record is written when logged)."""
        if not self.enabled:
            return
        for sink in (self.file, self.tb):
            if sink is not None:
                sink.close()
        self.file = self.tb = None
        if self.wandb is not None:
            wandb, self.wandb = self.wandb, None
            wandb.finish()

    @contextlib.contextmanager
    def _writing(self, what: str):
        try:
            yield
        except OSError as e:
            self.close()
            if self.on_error is None:
                raise
            raise self.on_error(f"writing {what}", e) from None


class _Appender:
    """A file appended to in whole records: one cut short by an error (ENOSPC after part of it landed) is
    truncated away again, which needs no free space."""

    def __init__(self, path: Path, truncate: bool):
        self.file = open(path, "wb" if truncate else "ab", buffering=0)  # noqa: SIM115 — closed by close()
        self.size = self.file.seek(0, os.SEEK_END)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[self.file.write(view):]
        except BaseException:
            with contextlib.suppress(OSError):
                self.file.truncate(self.size)
            raise
        self.size += len(data)

    def flush(self) -> None:  # for tensorboard's RecordWriter: every write goes straight to the file
        pass

    def close(self) -> None:
        self.file.close()


_uid = itertools.count()


class _EventFile:
    """A TensorBoard event file (``SummaryWriter``'s format), written by the calling thread."""

    def __init__(self, folder: Path, purge_step: int | None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.Event = Event
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_uid)}"
        path = folder / name
        self.file = _Appender(path, truncate=True)
        self.records = RecordWriter(self.file)
        try:
            self._event(file_version="brain.Event:2")
            if purge_step is not None:  # TensorBoard hides the events of steps >= purge_step written before it
                self._event(step=purge_step, session_log=SessionLog(status=SessionLog.START))
        except BaseException:
            self.close()
            path.unlink(missing_ok=True)  # not even its first record fitted: no empty event file left behind
            raise

    def scalars(self, step: int, metrics: dict) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()
                  if isinstance(v, (int, float))]
        if values:
            self._event(step=step, summary=Summary(value=values))

    def _event(self, **fields) -> None:
        self.records.write(self.Event(wall_time=time.time(), **fields).SerializeToString())

    def close(self) -> None:
        self.file.close()


def _cut(path: Path, step: int) -> None:
    """Keep the lines logged up to ``step``. Those after it (and a torn last line) are the file's tail, since
    steps only grow: cut off in place, which needs no free space. Otherwise the kept lines are rewritten."""
    lines = path.read_bytes().splitlines(keepends=True)
    n = 0
    while n < len(lines) and _step(lines[n]) <= step:
        n += 1
    if all(_step(ln) > step for ln in lines[n:]):
        size = sum(map(len, lines[:n]))
        with open(path, "r+b") as f:
            f.truncate(size)
            if n and not lines[n - 1].endswith(b"\n"):
                f.seek(size)
                f.write(b"\n")
        return
    kept = b"".join(ln if ln.endswith(b"\n") else ln + b"\n" for ln in lines if _step(ln) <= step)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(kept)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _step(line: bytes | str) -> float:
    """A line's step; infinity for one that is not a JSON object with a numeric step (a line cut by a kill)."""
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return float("inf")
    step = record.get("step", 0) if isinstance(record, dict) else None
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else float("inf")
