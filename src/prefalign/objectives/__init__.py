"""Preference objectives: pure functions of log-probs, looked up by name.

>>> from prefalign import objectives
>>> obj = objectives.get("dpo", beta=0.1)
"""

from prefalign.objectives.base import (
    JudgedLogps,
    Needs,
    Objective,
    ObjectiveOutput,
    PairLogps,
    PointLogps,
    PrepareContext,
    SampleLogps,
    reward_metrics,
)
from prefalign.objectives.combine import Combined, combine
from prefalign.objectives.registry import get, get_class, hparam_names, names, register

__all__ = [
    "Combined",
    "JudgedLogps",
    "Needs",
    "Objective",
    "ObjectiveOutput",
    "PairLogps",
    "PointLogps",
    "PrepareContext",
    "SampleLogps",
    "combine",
    "get",
    "get_class",
    "hparam_names",
    "names",
    "register",
    "reward_metrics",
]
