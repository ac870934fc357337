"""Fault injection for tests: ``PREFALIGN_FAULT=<point>:<step>[:<signal>]`` kills the process there.

Points: ``rollout`` (online RL: completions sampled, not yet scored), ``accumulated`` (gradients accumulated, before
the optimizer step), ``after_step``, ``before_checkpoint``, ``mid_checkpoint`` (files partly written),
``after_checkpoint``.
``PREFALIGN_FAULT=nan:<step>`` instead makes that step's loss NaN. Unset in normal use.
"""

from __future__ import annotations

import os
import signal


def maybe_fault(point: str, step: int) -> None:
    spec = os.environ.get("PREFALIGN_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] == point and int(parts[1]) == step:
        sig = getattr(signal, parts[2]) if len(parts) > 2 else signal.SIGKILL
        os.kill(os.getpid(), sig)


def nan_at(step: int) -> bool:
    """True when the test hook asks for a NaN loss at optimizer step ``step`` (1-based)."""
    spec = os.environ.get("PREFALIGN_FAULT", "")
    return spec.startswith("nan:") and int(spec.split(":")[1]) == step
