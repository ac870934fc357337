"""`prefalign train`: pick the training method for a config (``train/method.py``) and run it on the one engine
(``train/engine.py``). Kept as the stable entry point: ``train(cfg)``, ``build(cfg)``, ``Interrupted``."""

from __future__ import annotations

import time
from pathlib import Path

from prefalign.train.config import TrainConfig
from prefalign.train.engine import Engine, Interrupted, stream_indices
from prefalign.train.method import select

__all__ = ["Engine", "Interrupted", "build", "stream_indices", "train"]


def build(cfg: TrainConfig, log=print) -> Engine:
    """The engine with the config's method set up (data read and checked, models built), ready to ``train()``."""
    return Engine(cfg, select(cfg), log=log)


def train(cfg: TrainConfig, log=print) -> Path:
    t0 = time.time()
    out = build(cfg, log=log).train()
    log(f"done in {time.time() - t0:.1f}s: {out}")
    return out
