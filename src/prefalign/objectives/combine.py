"""Weighted sum of objectives (TRL's multi-loss / MPO style): loss = Σ_k w_k · loss_k."""

from __future__ import annotations

import functools

import torch

from prefalign.objectives.base import Needs, Objective, ObjectiveOutput, PairLogps, PrepareContext


class Combined(Objective):
    """Not registered: built by ``combine``. Needs what any part needs (``Needs.merge``)."""

    name = "combined"

    def __init__(self, parts: list[Objective], weights: list[float]):
        if len(parts) != len(weights):
            raise ValueError(f"{len(parts)} objectives but {len(weights)} objective_weights")
        kinds = {p.row_kind for p in parts}
        if len(kinds) > 1:
            raise ValueError(f"cannot combine objectives over different row kinds: {sorted(kinds)}")
        self.parts, self.weights = parts, weights
        self.needs_reference = any(p.needs_reference for p in parts)
        self.row_kind = parts[0].row_kind
        self.cross_prompt = all(p.cross_prompt for p in parts)
        self.extra_fields = tuple(dict.fromkeys(f for p in parts for f in p.extra_fields))
        self._needs = functools.reduce(Needs.merge, (p.needs() for p in parts))  # ValueError if they conflict

    def needs(self) -> Needs:
        return self._needs

    def prepare(self, ctx: PrepareContext) -> dict[str, torch.Tensor] | None:
        """Every part's per-example constants (two parts computing the same name must agree)."""
        out: dict[str, torch.Tensor] = {}
        for p in self.parts:
            for k, v in (p.prepare(ctx) or {}).items():
                if k in out and not torch.equal(out[k], v):
                    raise ValueError(f"objectives of a combination prepare different values for '{k}'")
                out[k] = v
        return out or None

    def state(self) -> dict:
        return {p.name: p.state() for p in self.parts}

    def load_state(self, state: dict) -> None:
        for p in self.parts:
            p.load_state(state.get(p.name, {}))

    def build_module(self, model_config):
        mods = {p.name: m for p in self.parts if (m := p.build_module(model_config)) is not None}
        return torch.nn.ModuleDict(mods) if mods else None

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        outs = [p(lp) for p in self.parts]
        loss = sum(w * o.loss for w, o in zip(self.weights, outs))
        per_example = sum(w * o.per_example for w, o in zip(self.weights, outs))
        metrics: dict[str, float] = {}
        for p, o in zip(self.parts, outs):
            metrics[f"loss/{p.name}"] = o.loss.item()
            for k, v in o.metrics.items():
                metrics.setdefault(k, v)  # the first objective's implicit rewards win
        return ObjectiveOutput(loss=loss, per_example=per_example, metrics=metrics)


def combine(parts: list[Objective], weights: list[float] | None = None) -> Objective:
    if len(parts) == 1 and (weights is None or weights == [1.0]):
        return parts[0]
    return Combined(parts, weights if weights is not None else [1.0] * len(parts))
