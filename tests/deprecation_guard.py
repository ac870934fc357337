"""Deprecation warnings caused by prefalign's own calls fail the test that triggers them (issue 17).

pyproject's ``filterwarnings`` turns DeprecationWarning / FutureWarning *issued by* prefalign's modules into errors,
but a library that deprecates an argument we pass warns about its own frame: transformers' ``deprecate_kwarg``
(``past_key_values`` → ``cache``) is attributed to torch's ``Module.__call__``, so no module filter sees us. This
guard (an autouse fixture, imported by ``tests/conftest.py``) looks at the live stack instead: walking out from
where the warning was raised, past the issuing package's own frames and pure pass-through frames (torch's module
dispatch, PEFT's and accelerate's ``forward`` wrappers, contextlib, functools), the first frame it reaches decides.
If that frame is in prefalign the warning is ours and the test fails at teardown, naming the call (it is recorded
even where a filter hides it). A library warning about its own internals (PEFT's ``__init__`` reading a deprecated
transformers property) reaches that library's frame first and is not ours.

transformers also says "`past_key_values`/`cache_params` are deprecated" through its logger (``warning_once``), so
the guard reads that logger's deprecation records the same way.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest

CATEGORIES = (DeprecationWarning, FutureWarning)
# frames a call passes through on its way from prefalign to the code that warns: they decide nothing
PASS_THROUGH = ("torch.nn.modules.module", "torch.utils._contextlib", "contextlib", "functools", "logging",
                "warnings", Path(__file__).stem, __name__)
WRAPPERS = ("peft", "accelerate")  # their frames pass a call through only in these functions
WRAPPER_FUNCTIONS = ("forward", "new_forward", "__call__", "_call_impl")


def _module(frame) -> str:
    return frame.f_globals.get("__name__", "") or ""


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def prefalign_caller(frame) -> str | None:
    """``module (file:line)`` of the prefalign frame that caused what ``frame`` (the code raising it) reports, or None."""
    issuer = _module(frame).split(".")[0]
    while frame is not None:
        name = _module(frame)
        if _within(name, ("prefalign",)):
            return f"{name} ({frame.f_code.co_filename}:{frame.f_lineno})"
        wrapper = _within(name, WRAPPERS) and frame.f_code.co_name in WRAPPER_FUNCTIONS
        if not (name.split(".")[0] == issuer or _within(name, PASS_THROUGH) or wrapper):
            return None
        frame = frame.f_back
    return None


class _LogCatcher(logging.Handler):
    def __init__(self, found: list[str]):
        super().__init__(logging.WARNING)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" not in message.lower():
            return
        frame = sys._getframe(1)
        while frame is not None and _within(_module(frame), ("logging", "functools", __name__)):
            frame = frame.f_back  # out of the logging machinery, to the transformers code that logged
        where = prefalign_caller(frame) if frame is not None else None
        if where:
            self.found.append(f"{where}: transformers logged: {message}")


@pytest.fixture(autouse=True)
def no_deprecation_from_prefalign(monkeypatch):
    found: list[str] = []
    original = warnings.warn

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        cat = type(message) if isinstance(message, Warning) else (category or UserWarning)
        if issubclass(cat, CATEGORIES):
            where = prefalign_caller(sys._getframe(1))
            if where:
                found.append(f"{where}: {cat.__name__}: {message}")
        return original(message, category, stacklevel + 1, source, **kwargs)

    monkeypatch.setattr(warnings, "warn", warn)
    catcher = _LogCatcher(found)
    tf_logger = logging.getLogger("transformers")
    tf_logger.addHandler(catcher)
    once = getattr(logging.Logger, "warning_once", None)  # transformers' lru-cached "warn once per process"
    if hasattr(once, "cache_clear"):
        once.cache_clear()
    try:
        yield found
    finally:
        tf_logger.removeHandler(catcher)
    if found:
        pytest.fail("deprecation warnings caused by prefalign's own calls (use the current API):\n  "
                    + "\n  ".join(dict.fromkeys(found)), pytrace=False)
