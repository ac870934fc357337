"""The rewards of a rollout: every configured reward function on the decoded completions, with the rows' columns.

``reward`` is one spec or a list (``reward_weights``: one weight each) — the specs ``prefalign label --reward``
takes (``reward/load.py``): VADER, a ``module:function``, a reward-model folder, the verifiable rewards (``math``,
``exact``, ``regex:…``, ``format:…``, ``length:…``), weighted sums (``0.8*math + 0.2*format:think``) and the
transforms (``normalize``, ``lsc``, ``infalign``). A function may return None for a completion it cannot judge
(NaN here). The total is the weighted sum over the functions that judged it — NaN only when none did: that
completion then gets advantage 0 and stays out of every baseline — as TRL sums its reward functions. Each function's
own values are kept for the per-function diagnostics, scored once.
"""

from __future__ import annotations

from prefalign.errors import UserError


class Rewards:
    def __init__(self, specs, weights=None, device: str = "cpu", batch_size: int = 16):
        from prefalign.reward import load_reward

        if isinstance(specs, (list, tuple)):
            if weights is not None and len(weights) != len(specs):
                raise UserError("config", f"reward_weights has {len(weights)} weights for {len(specs)} rewards",
                                "give one weight per reward")
            specs = [(s, float(w)) for s, w in zip(specs, weights or [1.0] * len(specs))]
        elif weights is not None:
            raise UserError("config", "reward_weights is set but reward is a single spec",
                            "give reward as a list, or write the weights into the spec: '0.8*math + 0.2*vader'")
        self.fn = load_reward(specs, device=device, batch_size=batch_size)

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list] | None = None):
        """(total [N] float64 with NaN where nothing judged, {name: [N]} per function)."""
        parts = self.fn.components(prompts, completions, columns)
        return self.fn.combine(parts).double(), parts
