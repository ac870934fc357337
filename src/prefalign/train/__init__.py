"""Training: one loop for every offline objective. (``Trainer``/``train`` are imported lazily: heavy.)"""

from prefalign.train.config import TrainConfig

__all__ = ["TrainConfig", "Trainer", "train"]


def __getattr__(name):
    if name in ("Trainer", "train"):
        from prefalign.train import loop

        return getattr(loop, name)
    raise AttributeError(name)
