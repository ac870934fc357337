"""Online RL algorithms, registered by name (``base.py`` holds the contract)."""

from prefalign.online.algos.base import (  # noqa: F401
    OnlineAlgorithm,
    OnlineNeeds,
    PolicyBatch,
    Rollout,
    get,
    get_class,
    names,
    register,
)
