"""Metrics to ``metrics.jsonl`` (one JSON object per logged step), TensorBoard, and W&B when asked."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLogger:
    def __init__(self, folder: Path, report_to: list, config: dict, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.tb = self.wandb = None
        if not enabled:
            return
        path = folder / "metrics.jsonl"
        kept = []
        if resume_step > 0 and path.exists():  # drop lines logged after the checkpoint we resume from
            kept = [ln for ln in path.read_text().splitlines() if _step(ln) <= resume_step]
        self.file = open(path, "w", encoding="utf-8")
        self.file.writelines(ln + "\n" for ln in kept)
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(folder / "tensorboard"))
        if "wandb" in report_to:
            import wandb  # only when the user asks for it

            self.wandb = wandb.init(config=config, dir=str(folder))

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:  # a line cut by a kill
        return float("inf")
