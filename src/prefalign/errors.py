"""User-facing errors.

A ``UserError`` is something the user can fix (bad file, bad config, missing model). The CLI prints its message
as one line (``where: what is wrong: what to do``) and exits with code 2, without a traceback unless ``--debug``.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; printed as one line by the CLI (exit code 2)."""

    def __init__(self, where: str, what: str, todo: str = "", details: list[str] | None = None):
        self.where, self.what, self.todo = where, what, todo
        self.details = details or []  # extra lines (e.g. the first 20 row problems), printed before the summary
        super().__init__(self.line())

    def line(self) -> str:
        parts = [p for p in (self.where, self.what, self.todo) if p]
        return ": ".join(parts)


class HealthError(Exception):
    """The run is not working (NaN/inf loss or gradients); the last good checkpoint is kept."""
