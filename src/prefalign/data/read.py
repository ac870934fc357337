"""Reading rows from local files: .jsonl, .json, .parquet, .csv, or a ``datasets.save_to_disk`` folder.

Rows keep their 1-based row number (line number for JSONL, counting blank lines) for error messages.
Problems that belong to one row (a line that is not JSON, not UTF-8) are returned, not raised, so that the
caller can report every bad row at once.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefalign.errors import UserError

FORMATS = ".jsonl, .json, .parquet, .csv, or a folder written by datasets' save_to_disk"


def read_table(path: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """(row number, row) pairs and row-level problems (``path:row N: ...``)."""
    p = Path(path)
    if p.is_dir():
        return _read_saved(p), []
    if not p.exists():
        if path.count("/") == 1 and not path.startswith((".", "/")) and not p.suffix:
            return _read_hub(path), []
        raise UserError(path, "file not found", "check the path")
    if p.stat().st_size == 0:
        raise UserError(path, "file is empty", "give a file with at least one row")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(p)
    if suffix == ".json":
        return _read_json(p), []
    if suffix in (".parquet", ".csv"):
        return _read_with_datasets(p, suffix[1:]), []
    raise UserError(path, f"unsupported file type '{suffix or p.name}'", f"use {FORMATS}")


def _read_jsonl(p: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    rows, problems = [], []
    raw = p.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is harmless
        raw = raw[3:]
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{p}:row {n}: not valid UTF-8 (byte {e.start})")
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(f"{p}:row {n}: line is not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{p}:row {n}: expected a JSON object, got {type(obj).__name__}")
            continue
        rows.append((n, obj))
    if not rows and not problems:
        raise UserError(str(p), "file has no rows", "give a file with at least one row")
    return rows, problems


def _read_json(p: Path) -> list[tuple[int, dict]]:
    try:
        data = json.loads(p.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise UserError(str(p), "not valid UTF-8", "re-save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise UserError(str(p), f"not valid JSON ({e.msg} at line {e.lineno})", "fix the file") from None
    if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
        lists = [v for k, v in data.items() if k in ("train", "data", "rows") and isinstance(v, list)]
        data = lists[0] if lists else None
    if not isinstance(data, list):
        raise UserError(str(p), "expected a JSON list of row objects", "write [ {...}, {...} ] or use .jsonl")
    if not data:
        raise UserError(str(p), "file has no rows", "give a file with at least one row")
    return [(i, row if isinstance(row, dict) else {"__not_object__": row}) for i, row in enumerate(data, 1)]


def _read_with_datasets(p: Path, kind: str) -> list[tuple[int, dict]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(kind, data_files=str(p), split="train")
    except Exception as e:  # pyarrow / csv parser errors: one line is enough
        raise UserError(str(p), f"cannot read {kind} ({str(e).splitlines()[0][:160]})", "fix the file") from None
    return _rows(ds)


def _read_saved(p: Path) -> list[tuple[int, dict]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(p))
    except Exception as e:
        raise UserError(str(p), f"not a dataset folder ({str(e).splitlines()[0][:160]})",
                        f"give {FORMATS}") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise UserError(str(p), f"dataset has no 'train' split (splits: {', '.join(ds)})", "save a train split")
        ds = ds["train"]
    return _rows(ds)


def _read_hub(name: str) -> list[tuple[int, dict]]:
    from datasets import load_dataset

    try:
        return _rows(load_dataset(name, split="train"))
    except Exception as e:
        raise UserError(name, f"not a local file, and loading it from the hub failed ({str(e).splitlines()[0][:120]})",
                        "give a local path (the hub needs a network)") from None


def _rows(ds) -> list[tuple[int, dict]]:
    if len(ds) == 0:
        raise UserError("data", "dataset has no rows", "give at least one row")
    return [(i, dict(row)) for i, row in enumerate(ds, start=1)]
