"""The preprocessing report: rows read, dropped by reason, truncated, token-length percentiles."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


def percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    s = sorted(values)
    pick = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": s[-1]}


@dataclass
class PreprocessReport:
    path: str
    rows_read: int = 0
    rows_kept: int = 0
    invalid_skipped: dict[str, int] = field(default_factory=dict)  # problem kind → rows (with --skip-invalid)
    dropped: dict[str, int] = field(default_factory=dict)  # reason → rows
    truncated: int = 0
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)  # prompt/completion/total → percentiles

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [f"preprocessing {self.path}: {self.rows_read} rows read, {self.rows_kept} kept, "
                 f"{self.truncated} truncated"]
        for title, counts in (("invalid, skipped", self.invalid_skipped), ("dropped", self.dropped)):
            lines += [f"  {title}: {n} ({reason})" for reason, n in sorted(counts.items())]
        for name, p in self.tokens.items():
            if p:
                lines.append(f"  {name} tokens: p50 {p['p50']}, p90 {p['p90']}, p99 {p['p99']}, max {p['max']}")
        return "\n".join(lines)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / "preprocess_report.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path
