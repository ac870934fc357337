"""Data: rows → validated rows → token ids → batches.

    rows = load_rows("pairs.jsonl", kind="paired")          # raises UserError listing bad rows (before any model)
    examples, report = encode_rows(rows, tokenizer, max_length=1024, truncation="keep_start")
    batch = collate_pairs(examples[:4], tokenizer.pad_token_id, layout="shared_prefix")
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefalign.data.batch import SeqBatch, collate_pairs
from prefalign.data.checks import check_extras, check_paired, check_unpaired
from prefalign.data.read import read_table
from prefalign.data.report import PreprocessReport, percentiles
from prefalign.data.split import encode_pair, encode_point
from prefalign.data.types import PairExample, PointExample
from prefalign.errors import UserError

__all__ = ["PairExample", "PointExample", "PreprocessReport", "Rows", "SeqBatch", "collate_pairs", "encode_rows",
           "load_rows"]
MAX_SHOWN = 20


@dataclass
class Rows:
    path: str
    kind: str  # "paired" | "unpaired"
    rows: list[dict]  # normalised rows, each with "_row" (1-based) and "_extras"
    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # problem kind → rows dropped by --skip-invalid


def load_rows(path: str, kind: str = "paired", extra_fields: tuple[str, ...] = (), skip_invalid: bool = False) -> Rows:
    """Read and validate every row. Bad rows raise one UserError listing the first 20 (or are skipped)."""
    check = {"paired": check_paired, "unpaired": check_unpaired}.get(kind)
    if check is None:
        raise ValueError(f"kind must be 'paired' or 'unpaired', got {kind!r}")
    raw, read_problems = read_table(path)
    problems: list[tuple[str, str]] = [("unreadable line", p) for p in read_problems]
    rows = []
    for number, row in raw:
        where = f"{path}:row {number}"
        if "__not_object__" in row:
            problems.append(("wrong type", f"{where}: expected an object, got {type(row['__not_object__']).__name__}"))
            continue
        norm, found = check(where, row)
        extras, found_x = check_extras(where, row, extra_fields)
        found += found_x
        if found:
            problems += found
            continue
        rows.append({**norm, "_row": number, "_extras": extras})
    bad_rows = len(raw) + len(read_problems) - len(rows)
    if problems and not skip_invalid:
        shown = [msg for _, msg in problems[:MAX_SHOWN]]
        more = f" (first {MAX_SHOWN} shown above)" if len(problems) > MAX_SHOWN else ""
        raise UserError(path, f"{bad_rows} invalid row{'s' if bad_rows != 1 else ''}, {len(problems)} "
                        f"problem{'s' if len(problems) != 1 else ''}{more}", "fix them or pass --skip-invalid",
                        details=shown)
    skipped: dict[str, int] = {}
    seen: set[str] = set()
    for kind_, msg in problems:
        row_id = msg.split(": ")[0]
        if row_id not in seen:  # count each row once, by its first problem
            seen.add(row_id)
            skipped[kind_] = skipped.get(kind_, 0) + 1
    if not rows:
        raise UserError(path, "no valid rows", "fix the rows (run without --skip-invalid to see the problems)")
    return Rows(path, kind, rows, read=len(raw) + len(read_problems), skipped=skipped)


def encode_rows(rows: Rows, tokenizer, max_length: int | None = None, truncation: str = "keep_start"):
    """Token-space examples and a preprocessing report."""
    if truncation not in ("keep_start", "keep_end"):
        raise ValueError(f"truncation must be keep_start or keep_end, got {truncation!r}")
    encode = encode_pair if rows.kind == "paired" else encode_point
    report = PreprocessReport(rows.path, rows_read=rows.read, invalid_skipped=dict(rows.skipped))
    examples, lens = [], {"prompt": [], "completion": [], "total": []}
    for row in rows.rows:
        where = f"{rows.path}:row {row['_row']}"
        ex, cut = encode(tokenizer, where, row, row["_extras"], max_length, truncation, row["_row"])
        if isinstance(ex, str):
            report.dropped[ex] = report.dropped.get(ex, 0) + 1
            continue
        report.truncated += cut
        examples.append(ex)
        comps = [ex.chosen_ids, ex.rejected_ids] if rows.kind == "paired" else [ex.completion_ids]
        lens["prompt"].append(len(ex.prompt_ids))
        lens["completion"] += [len(c) for c in comps]
        lens["total"] += [len(ex.prompt_ids) + len(c) for c in comps]
    report.rows_kept = len(examples)
    report.tokens = {k: percentiles(v) for k, v in lens.items()}
    return examples, report
