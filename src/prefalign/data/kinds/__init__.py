"""The row-kind registry (see ``base``); importing this package registers the built-in kinds."""

from prefalign.data.kinds import judgment, paired, prompts, revision, samples, sft, unpaired  # noqa: E402,F401  (register)
from prefalign.data.kinds.base import Encoded, RowKind, extras_of, get, names, register

__all__ = ["Encoded", "RowKind", "extras_of", "get", "names", "register"]
