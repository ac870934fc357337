"""Reading prompts and writing/reading the JSONL files that ``prefalign sample`` and ``prefalign label`` pass on.

Every reader takes a regular file or a named pipe (read once, ``data.io.read_stream``); a line that is not UTF-8
or not JSON (also too deeply nested, or an integer of too many digits) is a one-line ``UserError`` naming its row.
``check_out_file`` / ``check_out_dir`` refuse an output path that cannot be written before any work is done, and
``write_jsonl`` writes atomically (a temp file, then rename), removing the temp file when the write fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from prefalign.errors import UserError


def _lines(path: str | Path, what: str, todo: str) -> list[tuple[int, str]]:
    """(1-based line number, text) of every line of a file or pipe; invalid UTF-8 names its line."""
    from prefalign.data.io import read_bytes

    raw = read_bytes(path, what, todo)
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        raw = raw[3:]
    out = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            out.append((number, line.decode("utf-8")))
        except UnicodeDecodeError as e:
            raise UserError(f"{path}:row {number}", f"not valid UTF-8 (byte {e.start + 1} of the line)",
                            "re-save the file as UTF-8") from None
    return out


def _json_line(path, number: int, line: str):
    from prefalign.data.io import json_problem

    try:
        return json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, deep nesting, an integer of too many digits
        raise UserError(f"{path}:row {number}", f"not valid JSON ({json_problem(e)})",
                        "one JSON object per line") from None


def _is_text_prompts(path: str | Path, lines: list[tuple[int, str]]) -> bool:
    """A .txt file, or a pipe without a .jsonl/.json name whose first non-blank line is not a JSON object."""
    suffix = Path(path).suffix.lower()
    if suffix == ".txt":
        return True
    from prefalign.data.io import is_stream

    if is_stream(path) and suffix not in (".jsonl", ".json"):
        first = next((text.lstrip() for _, text in lines if text.strip()), "")
        return not first.startswith("{")
    return False


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a ``.jsonl`` file (a ``prompt`` string per row) or a ``.txt`` file (one prompt per line)."""
    lines = _lines(path, "prompt file", "check the path given to --prompts")
    if _is_text_prompts(path, lines):
        prompts = [line.strip() for _, line in lines if line.strip()]
    else:
        prompts = []
        for number, line in lines:
            if not line.strip():
                continue
            row = _json_line(path, number, line)
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise UserError(f"{path}:row {number}", "expected an object with a non-empty 'prompt' string",
                                'write {"prompt": "..."} per line (or use a .txt file, one prompt per line)')
            prompts.append(row["prompt"])
    for number, prompt in enumerate(prompts, start=1):
        try:  # a JSON escape can smuggle in a lone surrogate, which no tokenizer accepts
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{path}:prompt {number}", "not valid Unicode (a lone surrogate escape)",
                            "fix the prompt") from None
    if not prompts:
        raise UserError(str(path), "no prompts", "write one prompt per row")
    return prompts


def read_jsonl(path: str | Path) -> list[dict]:
    return [_json_line(path, number, line) for number, line in _lines(path, "file", "check the path")
            if line.strip()]


def check_out_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, an output file path that is a folder, lies under a file, or whose folder cannot
    be written; returns it as a Path."""
    p = Path(path)
    if p.is_dir():
        raise UserError(str(path), f"{flag} is a folder", f"give a file path for {flag} (e.g. {p / 'out.jsonl'})")
    _check_parent(p, flag)
    return p


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder path that is a file, lies under a file, or cannot be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(str(path), f"{flag} is a file, not a folder", f"give a folder path for {flag}")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(str(path), f"{flag} folder is not writable", "choose another folder")
        return p
    _check_parent(p, flag)
    return p


def _check_parent(p: Path, flag: str) -> None:
    """The nearest existing folder above ``p`` must be a writable folder (not a file)."""
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(str(p), f"{flag} lies under '{parent}', which is a file", f"choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(str(p), f"cannot write in '{parent}' (permission denied or a read-only filesystem)",
                        f"choose another {flag}")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows atomically (a temp file, then rename), creating the parent folder; a failed write (a full disk)
    is a one-line ``UserError`` and leaves neither the temp file nor a partial ``path``."""
    p = check_out_file(path, "output")
    tmp = p.with_name(p.name + ".tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(str(p), f"cannot write ({e.strerror or e})", "free space or choose another path") from None
    return p
