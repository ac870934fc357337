"""Reading rows: a local .jsonl, .json, .parquet or .csv file, a ``datasets`` save_to_disk folder, or a hub name.

Every row keeps its 1-based row number for error messages: the line number in a JSONL file (blank lines count,
so the number matches an editor's), the position in a JSON list, the data row of a CSV/Parquet file or dataset.
A problem that belongs to one row (a line that is not JSON or not UTF-8, nested too deeply for the parser, or
holding an integer of more digits than Python converts) is returned, not raised, so that the caller can report
every bad row at once; a problem with the whole file raises ``UserError``.

A named pipe (``--data <(zcat pairs.jsonl.gz)``, or an ``os.mkfifo`` path) is read once, to its end; its format comes
from its name's suffix when it has one, else from its first bytes (``[`` JSON, ``{`` JSON Lines, ``PAR1`` Parquet).
What was read is kept for the process, so a second reader of the same path (the method check, then the loader) gets
the same bytes instead of an empty, already-drained pipe. A pipe that no program opens for writing within
``PREFALIGN_PIPE_TIMEOUT`` seconds (default 60) is refused in one line instead of waiting forever.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from prefalign.errors import UserError

FORMATS = "a .jsonl, .json, .parquet or .csv file, or a folder written by datasets' save_to_disk"
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
TEXT_COLUMNS = ("prompt", "chosen", "rejected", "completion")  # CSV: never let type inference turn "42" into 42
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

RowProblem = tuple[int, str, str]  # (row number, kind, message); the kind counts rows skipped by --skip-invalid
Table = tuple[list[tuple[int, dict]], list[RowProblem]]  # (row number, row) pairs, and rows that could not be read


def read_table(path: str) -> Table:
    """Rows of ``path`` with their 1-based numbers, and the problems of rows that could not be read."""
    p = Path(path)
    if p.is_dir():
        return _read_saved(path), []
    suffix = p.suffix.lower()
    if is_stream(path):
        raw = read_stream(path)
        if suffix not in SUFFIXES:
            suffix = _sniff(path, raw)
        if suffix in (".parquet", ".csv"):
            import pyarrow as pa

            return _rows(path, _read_arrow(pa.BufferReader(raw), suffix, path).to_pylist()), []
    else:
        if not p.is_file():
            if _looks_like_hub_name(path):
                return _read_hub(path), []
            raise UserError(path, "file not found", f"check the path (give {FORMATS})")
        if suffix not in SUFFIXES:
            raise UserError(path, f"unsupported file type '{suffix or p.name}'", f"give {FORMATS}")
        if p.stat().st_size == 0:
            raise UserError(path, "file is empty", "give a file with at least one row")
        if suffix in (".parquet", ".csv"):
            return _rows(path, _read_arrow(path, suffix, path).to_pylist()), []
        raw = _read_file(path)
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Windows editors) is harmless
        raw = raw[3:]
    if not raw.strip():
        raise UserError(path, "file is empty", "give a file with at least one row")
    return _read_jsonl(path, raw) if suffix == ".jsonl" else _read_json(path, raw)


# ---- files and named pipes -------------------------------------------------------------------------------------
_STREAMS: dict[str, bytes] = {}  # a named pipe's content, by absolute path: a pipe can be read only once


def is_stream(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a named pipe (a FIFO, or ``/dev/fd/N`` of a shell's process substitution)."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def pipe_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get("PREFALIGN_PIPE_TIMEOUT", "60")))
    except ValueError:
        return 60.0


def read_stream(path: str | os.PathLike, timeout: float | None = None) -> bytes:
    """All bytes of the named pipe ``path``, read once (later calls in the process return the same bytes); a
    ``UserError`` when no writer opens it within ``timeout`` seconds (default ``PREFALIGN_PIPE_TIMEOUT``, 60)."""
    import select

    key = os.path.abspath(os.fspath(path))
    if key in _STREAMS:
        return _STREAMS[key]
    timeout = pipe_timeout() if timeout is None else timeout
    try:  # non-blocking: opening a FIFO for reading would otherwise wait for a writer, forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UserError(str(path), f"cannot open the pipe ({e.strerror})", "check the path") from None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI | select.POLLHUP)
        if not poller.poll(int(timeout * 1000)):
            raise UserError(str(path), f"a named pipe that nothing wrote to within {timeout:g} s",
                            "start the program that writes it first, or give a regular file "
                            "(PREFALIGN_PIPE_TIMEOUT sets the wait)")
        os.set_blocking(fd, True)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except OSError as e:
        raise UserError(str(path), f"cannot read the pipe ({e.strerror})", "check the program writing it") from None
    finally:
        os.close(fd)
    _STREAMS[key] = b"".join(chunks)
    return _STREAMS[key]


def read_bytes(path: str | os.PathLike, what: str = "file", todo: str = "check the path") -> bytes:
    """The bytes of a regular file or a named pipe (``read_stream``); one-line errors for a missing path or a
    folder."""
    if is_stream(path):
        return read_stream(path)
    p = Path(path)
    if p.is_dir():
        raise UserError(str(path), f"is a folder, not a {what}", todo)
    if not p.is_file():
        raise UserError(str(path), f"{what} not found", todo)
    return _read_file(path)


def _read_file(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:  # permission denied, an I/O error
        raise UserError(str(path), f"cannot read the file ({e.strerror or e})", "check its permissions") from None


def _sniff(path: str, raw: bytes) -> str:
    """The format of a pipe's content without a telling name."""
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"PAR1"):
        return ".parquet"
    if head.startswith(b"["):
        return ".json"
    if head.startswith(b"{"):
        return ".jsonl" if len([line for line in raw.split(b"\n") if line.strip()]) > 1 else ".json"
    if not head:
        raise UserError(path, "the pipe gave no data", "check the program writing it")
    raise UserError(path, "cannot tell the format of the pipe's content (not JSON, JSON Lines or Parquet)",
                    "write JSON Lines to it, or give a path ending in .jsonl, .json, .parquet or .csv")


def json_problem(e: Exception) -> str:
    """What is wrong with a JSON text, for ``json.loads``' JSONDecodeError, RecursionError and ValueError alike."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} (column {e.colno})"
    if isinstance(e, RecursionError):
        return "nested too deeply to parse"
    text = str(e)
    if "digits" in text and "int" in text:  # Python's integer-string conversion limit (4300 digits by default)
        return "an integer with too many digits (over Python's 4300-digit limit)"
    return _first_line(e)


def _looks_like_hub_name(path: str) -> bool:
    """``owner/name`` that is no local path: not a missing file with a known suffix, nor under an existing folder."""
    owner = path.split("/")[0]
    return bool(_HUB_NAME.match(path)) and not path.lower().endswith(SUFFIXES) and not Path(owner).exists()


def _read_jsonl(path: str, raw: bytes) -> Table:
    rows, problems = [], []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:  # decode line by line, so that one bad byte names its row instead of failing the file
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append((n, "unreadable row", f"{path}:row {n}: not valid UTF-8 (byte {e.start + 1} of the line)"))
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; deep nesting, huge integers
            problems.append((n, "unreadable row", f"{path}:row {n}: line is not valid JSON: {json_problem(e)}"))
            continue
        _add(path, n, obj, rows, problems)
    return rows, problems


def _read_json(path: str, raw: bytes) -> Table:
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(path, f"not valid UTF-8 (byte {e.start + 1})", "re-save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and raw.lstrip().startswith(b"{"):
            return _read_jsonl(path, raw)  # datasets' to_json writes JSON Lines, even to a .json name
        raise UserError(path, f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})", "fix the file") from None
    except (ValueError, RecursionError) as e:  # nested too deeply, an integer of too many digits
        raise UserError(path, f"not valid JSON: {json_problem(e)}", "fix the file") from None
    if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
        data = next((data[k] for k in ("train", "data") if isinstance(data.get(k), list)), None)
    if not isinstance(data, list):
        raise UserError(path, "expected a JSON list of row objects (or {\"train\": [...]})",
                        "write [{...}, {...}], or one object per line in a .jsonl file")
    if not data:
        raise UserError(path, "file has no rows", "give a file with at least one row")
    rows: list[tuple[int, dict]] = []
    problems: list[RowProblem] = []
    for n, obj in enumerate(data, start=1):
        _add(path, n, obj, rows, problems)
    return rows, problems


def _add(path: str, n: int, obj, rows: list, problems: list) -> None:
    if isinstance(obj, dict):
        rows.append((n, obj))
    else:
        problems.append((n, "unreadable row", f"{path}:row {n}: expected a JSON object, got {_json_type(obj)}"))


def _json_type(v) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(v), "a number")


def _read_arrow(source, suffix: str, path: str):
    """Parquet and CSV through pyarrow directly: no ``datasets`` cache is written for a file read once."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if suffix == ".parquet":
            return pq.read_table(source)
        # Text columns stay strings; an empty cell stays "" (reported as empty, not missing).
        opts = pcsv.ConvertOptions(column_types={c: pa.string() for c in TEXT_COLUMNS})
        table = pcsv.read_csv(source, convert_options=opts)
        return table.rename_columns([c.lstrip("\ufeff") for c in table.column_names])
    except (pa.ArrowException, OSError) as e:  # parser errors: the first line says enough
        raise UserError(path, f"cannot read {suffix[1:]}: {_first_line(e)}", "fix the file") from None


def _read_saved(path: str):
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(path)
    except Exception as e:  # noqa: BLE001 — whatever datasets raises, the folder is not a dataset
        raise UserError(path, f"not a dataset folder ({_first_line(e)})", f"give {FORMATS}") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise UserError(path, f"dataset has no 'train' split (splits: {', '.join(ds)})",
                            "save the rows to train on as split 'train'")
        ds = ds["train"]
    return _rows(path, ds.to_list())


def _read_hub(name: str):
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split="train")
    except Exception as e:  # noqa: BLE001 — offline, unknown name, no 'train' split: all one answer
        raise UserError(name, f"no such local file, and loading it from the Hugging Face hub failed: "
                        f"{_first_line(e)}", "give a local path (the hub needs a network connection)") from None
    return _rows(name, ds.to_list())


def _rows(path: str, rows: list[dict]) -> list[tuple[int, dict]]:
    if not rows:
        raise UserError(path, "dataset has no rows", "give at least one row")
    return list(enumerate(rows, start=1))


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
