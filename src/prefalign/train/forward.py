"""One forward step of any objective: reference (no grad) → policy log-probs with the requested features → view →
objective. The loop never names an objective or a feature; it calls ``check`` once at start-up, ``prepare_extras``
once before training, ``attach_extras`` per batch and ``forward`` per micro-batch.

The reference runs first, because a policy reducer may read its outputs at the same positions: a reducer that
declares the input ``ref_<x>`` (logps.py) gets the reference's feature ``<x>`` ([M, ...], scoring order) and
``ref_head`` the reference's LM head (weight, bias), e.g. SparsePO's token KL from the reference's final states.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prefalign.errors import UserError
from prefalign.logps import SeqLogps, head_of, sequence_logps
from prefalign.objectives import Needs, Objective, ObjectiveOutput, PrepareContext
from prefalign.reference import Reference, RefLogps


def check(objective: Objective, needs: Needs, ref_kind: str, model=None) -> None:
    """Start-up checks of what the objective asks for against the reference kind (and, given the model, its LM
    head, for reducers that read the reference's head); UserError naming the fix."""
    if needs.live_reference and ref_kind not in ("copy", "adapter"):
        what = ", ".join([*map(str, needs.ref_features), *(f"{i} (for the policy's features)"
                                                          for i in needs.ref_inputs())])
        raise UserError("config", f"objective '{objective.name}' reads the reference's {what}, which reference: "
                        f"{ref_kind} does not have", "use reference: copy or adapter")
    if model is not None and "head" in needs.ref_inputs():
        try:
            head_of(model)
        except ValueError as e:
            feats = ", ".join(str(f) for f in needs.policy_features)
            raise UserError("model", f"objective '{objective.name}' computes {feats} from the LM head: {e}",
                            "use a model whose LM head is a plain linear layer, or turn that part of the objective "
                            "off (sparsepo: objective_args: {kl_term: false})") from None


def prepare_extras(objective: Objective, ctx: PrepareContext) -> dict[str, torch.Tensor]:
    """``objective.prepare(ctx)``, checked: one value per example ([N] or [N, M], float, on the CPU)."""
    out = objective.prepare(ctx) or {}
    n = len(ctx.examples)
    for k, v in out.items():
        v = torch.as_tensor(v)
        if v.dim() not in (1, 2) or v.shape[0] != n:
            raise ValueError(f"objective '{objective.name}' prepared '{k}' of shape {tuple(v.shape)}; "
                             f"expected [{n}] or [{n}, M] (one value per example)")
        out[k] = v.detach().float().cpu()
    return out


def attach_extras(batch, extras: dict[str, torch.Tensor], rows: list[int]):
    """Put the prepared per-example values of examples ``rows`` (indices into ``ctx.examples``) into
    ``batch.extras``, [B] or [B, M]; returns the batch."""
    for k, v in extras.items():
        if k in batch.extras:
            raise ValueError(f"prepared value '{k}' clashes with a row field of the same name")
        batch.extras[k] = v[rows]
    return batch


def _reference(needs: Needs, model, reference: Reference, batch, score=None) -> tuple[RefLogps | None, dict]:
    """The reference's log-probs and the context its outputs give the policy's reducers."""
    if not needs.reference:
        return None, {}
    inputs = needs.ref_inputs()  # e.g. ("hidden", "head") for the token KL
    feats = [f for f in needs.ref_features if f != "token_logps"]
    feats += [i for i in inputs if i != "head" and i not in feats]
    ref = reference.logps(batch, model, token_level="token_logps" in needs.ref_features, features=feats,
                          score=score)
    sc = batch.scoring
    context = {f"ref_{i}": reference.head(model) if i == "head" else ref.features[i][sc.seq, sc.slot]  # [M, ...]
               for i in inputs}
    return ref, context


def forward(objective: Objective, needs: Needs, model, reference: Reference, batch, view: Callable,
            chunk_size: int = 1024, grad: bool = True, score: Callable | None = None,
            ) -> tuple[ObjectiveOutput, SeqLogps, torch.Tensor | None]:
    """(objective output, the policy's SeqLogps, the reference's summed log-probs [S] or None) for one batch.
    ``view(policy, reference, batch)`` builds the objective's input (train/views.py). ``score(batch, **kw)``, when
    given, computes the policy's log-probs in place of ``sequence_logps(model, batch, **kw)`` (a DDP/FSDP-wrapped
    module whose forward is exactly that)."""
    ref, context = _reference(needs, model, reference, batch, score)  # no grad; first: it may feed the policy's reducers
    score = score or (lambda b, **kw: sequence_logps(model, b, **kw))
    with torch.set_grad_enabled(grad):
        pol = score(batch, chunk_size=chunk_size, features=needs.policy_features, context=context)
        out = objective(view(pol, ref, batch))
    return out, pol, None if ref is None else ref.seq_logps
