"""Reading prompts and writing/reading the JSONL files that ``prefalign sample`` and ``prefalign label`` pass on."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from prefalign.errors import UserError


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a ``.jsonl`` file (a ``prompt`` string per row) or a ``.txt`` file (one prompt per line)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(str(path), "prompt file not found", "check the path given to --prompts")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".txt":
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        prompts = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:row {number}", f"not valid JSON ({e.msg})", "one JSON object per line") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise UserError(f"{path}:row {number}", "expected an object with a non-empty 'prompt' string",
                                'write {"prompt": "..."} per line (or use a .txt file, one prompt per line)')
            prompts.append(row["prompt"])
    if not prompts:
        raise UserError(str(path), "no prompts", "write one prompt per row")
    return prompts


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise UserError(str(path), "file not found", "check the path")
    rows = []
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:row {number}", f"not valid JSON ({e.msg})",
                                "one JSON object per line") from None
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows atomically (a temp file, then rename), creating the parent folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, p)
    return p
