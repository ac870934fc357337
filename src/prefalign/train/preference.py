"""Offline preference training as a method of the engine: rows of the objective's kind → batches → the policy's
(and the reference's) log-probs → the objective's loss. The method never names an objective: it asks the objective
what it needs (``needs()``: a reference, per-token features, row options) and the row kind how to batch and view."""

from __future__ import annotations

from pathlib import Path

import torch

from prefalign.data import kinds
from prefalign.errors import UserError
from prefalign.reference import Reference
from prefalign.train import precompute
from prefalign.train.method import Method, MicroBatch, register
from prefalign.train.setup import build_objective, reference_kind, row_options


@register
class Preference(Method):
    name = "preference"
    progress_keys = ("rewards/accuracies",)

    def __init__(self, cfg):
        self.cfg = cfg
        self.objective = build_objective(cfg)
        self.kind = kinds.get(self.objective.row_kind)  # ValueError (a programming error) for an unknown kind
        self.ref_kind = reference_kind(cfg, self.objective)
        self.needs = self.objective.needs()
        if self.ref_kind == "precompute" and not self.kind.precomputable:
            raise UserError("config", f"objective '{self.objective.name}' uses {self.kind.name} rows, whose "
                            "reference log-probs reference: precompute does not cache yet",
                            "use reference: copy or adapter")
        self.ref_cache, self.ref_cache_hit, self.ref_forward_passes = None, None, 0
        self._checked = False

    def setup(self, engine) -> None:
        self.engine, cfg = engine, self.cfg
        self.load_examples(self.kind.name, row_options(self.objective))
        model = self.build_policy()
        self.reference = Reference(self.ref_kind, model, cfg.log_prob_chunk_size)
        if self.ref_kind == "precompute":
            self.ref_cache, self.ref_cache_hit = precompute.reference_logps(
                engine.acc, model, self.tokenizer, self.examples + self.eval_examples, cfg, self.cache_dir(),
                engine.log)
        from prefalign.train.forward import check, prepare_extras

        check(self.objective, self.needs, self.ref_kind, model)
        # Per-example constants from frozen models, once, before training (BCO's UDM weights, PoFT's aligned
        # log-probs): handed to the objective as row extras.
        self.prepared = prepare_extras(self.objective, self._prepare_context(model))
        self.extra_module = self.objective.build_module(getattr(model, "config", None))
        if self.extra_module is not None:
            self.extra_module.to(engine.acc.device)
        self.model = model

    def cache_dir(self) -> str:
        return self.cfg.reference_cache_dir or str(Path(self.cfg.output_dir).resolve().parent / ".prefalign-cache")

    def _prepare_context(self, model):
        from prefalign.objectives.base import PrepareContext

        return PrepareContext(model=model, tokenizer=self.tokenizer, examples=self.examples + self.eval_examples,
                              config=self.cfg, accelerator=self.engine.acc, cache_dir=self.cache_dir(),
                              log=self.engine.log)

    # --- batches -------------------------------------------------------------------------------------------------
    def batch(self, idx: list[int], examples, offset: int = 0):
        b = self.kind.collate([examples[i] for i in idx], self.tokenizer.pad_token_id, self.cfg.layout,
                              self.cfg.pack, **self.needs.row_options)
        if self.ref_cache is not None:
            vals = self.ref_cache[[offset + i for i in idx]]  # [b, 2] (chosen, rejected)
            b.ref_logps = torch.cat([vals[:, 0], vals[:, 1]])  # [2b], the batch's sequence order
        from prefalign.train.forward import attach_extras

        return attach_extras(b, self.prepared, [offset + i for i in idx]).to(self.engine.acc.device)

    def micro_batches(self, step, idx, rank, world):
        return [MicroBatch(self.batch(c, self.examples), [self.examples[i].row for i in c], w, s)
                for c, w, s in self.split(idx, rank, world)]

    def longest_micro_batch(self) -> MicroBatch:
        order = sorted(range(len(self.examples)), key=lambda i: -self.kind.size(self.examples[i]))
        return MicroBatch(self.batch(order[: self.cfg.batch_size], self.examples))

    # --- the loss ------------------------------------------------------------------------------------------------
    def forward(self, batch, grad: bool = True):
        from prefalign.train.forward import forward

        out, pol, ref_seq = forward(self.objective, self.needs, self.model, self.reference, batch, self.kind.view,
                                    self.cfg.log_prob_chunk_size, grad, score=self.engine.score)
        if self.ref_kind in ("copy", "adapter"):
            self.ref_forward_passes += 1
        return out, pol, ref_seq

    def loss(self, mb: MicroBatch, step: int):
        out, pol, ref_seq = self.forward(mb.data)
        if step == 0 and not self._checked and self.ref_kind in ("copy", "adapter"):  # first micro-batch of a run
            self._check_reference(pol.seq_logps.detach(), ref_seq, pol.n_tokens)
            self._checked = True
        return out.loss, {**out.metrics, **self.kind.logp_metrics(pol, mb.data)}

    def _check_reference(self, policy: torch.Tensor, ref: torch.Tensor, n_tokens: torch.Tensor) -> None:
        """At step 0 the reference must equal the policy; a mismatch means a wrong model or adapter."""
        tol = 1e-4 if self.cfg.dtype == "fp32" and self.cfg.mixed_precision == "no" else 2e-2
        gap = ((policy - ref).abs() / n_tokens.clamp(min=1)).max().item()
        if gap > tol:
            raise UserError("reference", f"reference log-probs differ from the policy's at step 0 by {gap:.2e} "
                            "nats/token", "the reference must be the initial policy; check dropout and adapters")

    @torch.no_grad()
    def evaluate(self) -> dict:
        n, sums, rows = len(self.eval_examples), {}, {}
        offset = len(self.examples)  # eval rows follow train rows in the precompute cache
        for s in range(0, n, self.cfg.batch_size):
            idx = list(range(s, min(n, s + self.cfg.batch_size)))
            out, _, _ = self.forward(self.batch(idx, self.eval_examples, offset), grad=False)
            for k, v in {"loss": out.loss.item(), **out.metrics}.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
                rows[k] = rows.get(k, 0) + len(idx)
        # A metric a batch leaves out (e.g. a side with no rows) is averaged over the batches that report it.
        return {k: v / rows[k] for k, v in sums.items()}

    # --- state ---------------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return self.objective.state()

    def load_state(self, state: dict) -> None:
        self.objective.load_state(state)

    def snapshot(self):
        return self.objective.state(), self.ref_forward_passes, self._checked

    def restore(self, snap) -> None:
        state, self.ref_forward_passes, self._checked = snap
        self.objective.load_state(state)

    def summary(self) -> dict:
        return {"reference": self.ref_kind, "reference_cache_hit": self.ref_cache_hit,
                "reference_forward_passes": self.ref_forward_passes}
