"""Small datasets and configs for training tests."""

from __future__ import annotations

import json
from pathlib import Path

from prefalign.train.config import TrainConfig

ITEMS = ["cat", "dog", "tree", "car", "book", "rain", "sun", "cake", "road", "lamp", "ship", "song"]


def write_pairs(path: Path, n: int = 24, chat: bool = False) -> Path:
    """A learnable set: the chosen answer is always positive, the rejected one negative."""
    rows = []
    for i in range(n):
        item = ITEMS[i % len(ITEMS)]
        prompt = f"Write one sentence about a {item} number {i}."
        good, bad = f" The {item} is good and nice.", f" The {item} is bad and sad."
        if chat:
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "chosen": [{"role": "assistant", "content": good.strip()}],
                         "rejected": [{"role": "assistant", "content": bad.strip()}]})
        else:
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=str(data), output_dir=str(out), dtype="fp32", learning_rate=1e-3, batch_size=4,
                max_steps=3, report_to=[], progress=False, seed=0, lr_scheduler="constant")
    base.update(kw)
    return TrainConfig(**base)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
