"""The row-kind registry (see ``base``); importing this package registers the built-in kinds."""

from prefalign.data.kinds import (  # noqa: E402,F401  (register the built-in kinds)
    judgment,
    paired,
    prompts,
    revision,
    reward_pairs,
    samples,
    scored,
    sft,
    steps,
    unpaired,
)
from prefalign.data.kinds.base import Encoded, RowKind, extras_of, get, names, register

__all__ = ["Encoded", "RowKind", "extras_of", "get", "names", "register"]
