"""Health checks: tell the user when a run is not working, with an explanation of what to try."""

from __future__ import annotations

import math

from prefalign.errors import HealthError


class HealthMonitor:
    """Watches per-step loss and chosen log-probs; warns once per problem, raises on NaN/inf."""

    def __init__(self, warmup_steps: int, window: int = 20, warn=print):
        self.warmup, self.window, self.warn = warmup_steps, window, warn
        self.first_loss: float | None = None
        self.first_chosen: float | None = None  # mean per-token log-prob of chosen completions at step 1
        self.recent: list[float] = []
        self.warned: set[str] = set()
        self.skipped = 0

    @staticmethod
    def finite(*values: float) -> bool:
        return all(math.isfinite(v) for v in values)

    def nan(self, step: int, rows: list[int], what: str, policy: str) -> bool:
        """Called on a non-finite loss/gradient. Returns True to skip the batch; raises under 'stop'."""
        if policy == "skip":
            self.skipped += 1
            self.warn(f"warning: step {step}: {what} is NaN/inf on rows {rows}; batch skipped (nan_policy: skip)")
            return True
        raise HealthError(f"step {step}: {what} is NaN/inf on rows {rows}. The run is stopped; the last good "
                          "checkpoint is kept. Check those rows, lower learning_rate, or set nan_policy: skip")

    def observe(self, step: int, loss: float, chosen_logp_per_token: float | None) -> None:
        if self.first_loss is None:
            self.first_loss = loss
            self.first_chosen = chosen_logp_per_token
        self.recent = (self.recent + [loss])[-self.window :]
        past_warmup = step > self.warmup + self.window
        if past_warmup and "stuck" not in self.warned and len(self.recent) == self.window:
            mean = sum(self.recent) / len(self.recent)
            if abs(mean - self.first_loss) < 1e-3 * max(1.0, abs(self.first_loss)):
                self._once("stuck", f"warning: step {step}: the loss has stayed at its first value "
                           f"{self.first_loss:.4f} (ln 2 = 0.6931 for DPO) for {self.window} steps after warm-up: "
                           "the policy is not moving away from the reference. Raise learning_rate, check that "
                           "parameters are trainable (LoRA target modules), or check the data has real preferences.")
        if (chosen_logp_per_token is not None and self.first_chosen is not None and step > self.warmup
                and chosen_logp_per_token < self.first_chosen - 1.0):
            self._once("collapse", f"warning: step {step}: the chosen completions' log-prob fell from "
                       f"{self.first_chosen:.3f} to {chosen_logp_per_token:.3f} nats/token: the policy is pushing "
                       "both chosen and rejected down (a known DPO failure). Consider objective: [dpo, sft] with "
                       "objective_weights: [1.0, 0.2], a larger beta, or a lower learning_rate.")

    def _once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.warn(message)
