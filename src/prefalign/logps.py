"""Log-probs of completion tokens: a causal LM + a batch → per-token and per-sequence log-probs.

    log π(y_t | x, y_<t) = z_t[y_t] − logsumexp(z_t)

Only the scored positions (the batch's scoring plan) reach the LM head, in chunks of ``chunk_size``; each chunk's
logits are recomputed in backward (activation checkpointing), so the loss never holds more than [chunk, vocab]
logits instead of a [batch, length, vocab] log-softmax. Models whose head is not a plain linear layer (logit
soft-capping, logit scaling) take the exact fallback: the model's own logits, reduced chunk by chunk the same way.

**Features.** Any other per-token quantity an objective needs is a *registered reducer*: a function of one chunk
(fp32 logits [C, V], their log-normaliser [C], the targets [C], and the chunk's slice of per-token context), returning
[C, ...]. ``sequence_logps(..., features=("log_sum_sq", feature("topk", k=6)))`` runs every requested reducer on the
logits the target log-probs already use (so those stay bitwise the same with or without features), inside the
checkpointed chunk function when the reducer carries gradient (``grad=True``), under ``no_grad`` otherwise, and
scatters each output to ``SeqLogps.features[name]``, [S, T, ...], zero past a sequence's end. A new quantity is one
``@register_feature`` in the objective's own file (tests/test_logps.py registers a per-token entropy from a test).

Built-in reducers:

- ``log_sum_sq`` (no grad): log Σ_v π(v)² (WPO's weights);
- ``topk`` (parameter ``k``): outputs ``topk_logps`` [.., k] (with gradient) and ``topk_ids`` [.., k] (Pairwise
  Cringe's candidate tokens), from the same logits and log-normaliser as the targets;
- ``target_ids`` (no grad): the completion token y_t itself;
- ``hidden`` (no grad): the final hidden state [.., H] at the position that predicts y_t;
- ``states`` (no grad): the hidden state after each of the L layers [.., L, H] at that position (SparsePO's masks);
- ``token_kl``: D_t = Σ_v π_ref(v)·(log π_θ(v) − log π_ref(v)) = −KL_t(π_ref‖π_θ), from a reference's final states
  at the same positions and its LM head, given in ``context`` as ``ref_hidden`` [M, H] and ``ref_head``
  (weight, bias) (SparsePO's token KL), never a [batch, length, vocab] tensor.

Context: ``sequence_logps(..., context={...})``; a tensor value is per scored token ([M, ...], scoring order) and is
sliced per chunk; any other value (e.g. the tuple ``(weight, bias)``) reaches every chunk whole. Keys ``hidden`` and
``layers`` are filled in by ``sequence_logps`` for the reducers that declare them in ``inputs``. By convention a key
``ref_<feature>`` holds the reference's feature ``<feature>`` at the same positions and ``ref_head`` the reference's
LM head; ``train/forward.py`` provides them from the reference pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

BUILTIN_INPUTS = ("hidden", "layers")  # context keys sequence_logps fills itself


@dataclass
class SeqLogps:
    token_logps: torch.Tensor  # [S, T] log π of completion token t of sequence s; 0 past its end
    mask: torch.Tensor  # [S, T] bool
    seq_logps: torch.Tensor  # [S] summed over completion tokens
    n_tokens: torch.Tensor  # [S] completion token counts
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # [S, T, ...] per requested output; 0 past end


# --------------------------------------------------------------------------------------------------------------
# Feature registry


@dataclass(frozen=True)
class Feature:
    """A request for a registered reducer, with its parameters (``feature("topk", k=6)``); a plain string names a
    reducer without parameters."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def of(spec: str | Feature) -> Feature:
        return spec if isinstance(spec, Feature) else Feature(spec)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"{self.name}({args})" if args else self.name


def feature(name: str, **params) -> Feature:
    return Feature(name, tuple(sorted(params.items())))


@dataclass
class Chunk:
    """What a reducer sees: one chunk of C scored positions."""

    logits: torch.Tensor  # [C, V] fp32
    lse: torch.Tensor  # [C] logsumexp(logits)
    targets: torch.Tensor  # [C] long: y_t
    context: dict[str, Any]  # per-token context sliced to [C, ...]; other values whole

    def logp(self) -> torch.Tensor:
        """[C, V] full log-probs (only for reducers that need all of them)."""
        return self.logits - self.lse[:, None]


@dataclass(frozen=True)
class Reducer:
    name: str
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]
    grad: bool  # False: computed under no_grad (weights, ids, states)
    outputs: tuple[str, ...]  # names of the returned tensors, in order (default: the reducer's name)
    inputs: tuple[str, ...]  # context keys it reads (``hidden``/``layers`` are filled in by sequence_logps)


_REDUCERS: dict[str, Reducer] = {}


def register_feature(name: str, *, grad: bool = True, outputs: Iterable[str] | None = None,
                     inputs: Iterable[str] = ()):
    """Decorator registering ``fn(chunk: Chunk, **params) -> Tensor [C, ...]`` (or a tuple, one per ``outputs``) as
    the per-token feature ``name``. ``grad=False`` runs it under ``no_grad``; ``inputs`` names the context keys it
    reads (checked before the forward pass). Registering the same function again (a module re-imported) is a no-op;
    another function under a taken name is an error."""

    def deco(fn):
        spec = Reducer(name, fn, grad, tuple(outputs) if outputs is not None else (name,), tuple(inputs))
        old = _REDUCERS.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"feature '{name}' is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
        _REDUCERS[name] = spec
        return fn

    return deco


def reducer(name: str) -> Reducer:
    if name not in _REDUCERS:
        raise ValueError(f"unknown per-token feature '{name}'; registered: {', '.join(sorted(_REDUCERS))}")
    return _REDUCERS[name]


def feature_names() -> list[str]:
    return sorted(_REDUCERS)


@register_feature("log_sum_sq", grad=False)
def _log_sum_sq(c: Chunk) -> torch.Tensor:
    return torch.logsumexp(2 * c.logits, -1) - 2 * c.lse  # [C] log Σ_v π(v)²


@register_feature("topk", outputs=("topk_logps", "topk_ids"))
def _topk(c: Chunk, k: int):
    vals, ids = c.logits.topk(k, dim=-1)  # [C, k]
    return vals - c.lse[:, None], ids


@register_feature("target_ids", grad=False)
def _target_ids(c: Chunk) -> torch.Tensor:
    return c.targets  # [C]


@register_feature("hidden", grad=False, inputs=("hidden",))
def _hidden(c: Chunk) -> torch.Tensor:
    return c.context["hidden"]  # [C, H]


@register_feature("states", grad=False, inputs=("layers",))
def _states(c: Chunk) -> torch.Tensor:
    return c.context["layers"]  # [C, L, H]


@register_feature("token_kl", inputs=("ref_hidden", "ref_head"))
def _token_kl(c: Chunk) -> torch.Tensor:
    w, b = c.context["ref_head"]
    ref = F.log_softmax(F.linear(c.context["ref_hidden"], w, b).float(), dim=-1)  # [C, V], no grad
    return (ref.exp() * (c.logp() - ref)).sum(-1)  # [C] D_t


# --------------------------------------------------------------------------------------------------------------


def _chunk_fn(x, weight, bias, targets, context, grad_specs, nograd_specs, temperature=1.0):
    """Target log-probs [C] and every requested reducer's outputs for one chunk. ``x`` is the hidden states [C, H]
    (``weight`` given: plain linear head) or the model's logits [C, V] (fallback, ``weight`` None)."""
    logits = (F.linear(x, weight, bias) if weight is not None else x).float()  # [C, V]; fp32 for a stable logsumexp
    if temperature != 1.0:  # online RL scores samples under the distribution they were drawn from
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)  # [C]
    tgt = logits.gather(1, targets[:, None]).squeeze(1) - lse  # [C]; the same ops whatever the features
    chunk = Chunk(logits, lse, targets, context)
    outs = [o for spec, params in grad_specs for o in _as_tuple(spec.fn(chunk, **params))]
    if nograd_specs:  # after the gradient ones: checkpoint's recomputation stops before reaching these
        with torch.no_grad():
            outs += [o.detach() for spec, params in nograd_specs for o in _as_tuple(spec.fn(chunk, **params))]
    return (tgt, *outs)


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _chunk(fn, *args):
    """Run one chunk's head function; with gradients on, keep only its inputs and recompute it in backward."""
    return checkpoint(fn, *args, use_reentrant=False) if torch.is_grad_enabled() else fn(*args)


def _plain_head(model) -> torch.nn.Linear | None:
    """The LM head if logits are exactly ``head(hidden)``; None when the model post-processes logits."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1.0):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if isinstance(head, torch.nn.Linear) else None


def _causal_lm(model):
    """Unwrap DDP / PEFT wrappers to the transformers causal LM (LoRA layers stay injected in place)."""
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


def _mask_for(model, mask: torch.Tensor) -> torch.Tensor:
    """A 4D boolean mask becomes additive (0 / −inf) in the model's dtype, which every attention backend reads."""
    if mask.dim() != 4:
        return mask
    dtype = next(model.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def head_of(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a model's plain linear LM head; ValueError when logits are post-processed."""
    head = _plain_head(_causal_lm(model))
    if head is None:
        raise ValueError("this model's LM head is not a plain linear layer (logit soft-capping or scaling)")
    return head.weight, head.bias


def sequence_logps(model, batch, chunk_size: int = 1024, features: Iterable[str | Feature] = (),
                   context: dict[str, Any] | None = None, temperature: float = 1.0) -> SeqLogps:
    """Per-token and summed log-probs of the completion tokens named by ``batch.scoring``, plus the requested
    per-token ``features`` (see the module docstring), each [S, T, ...] in ``SeqLogps.features``. ``temperature``
    divides the logits first (log-probs of the tempered distribution a sampler drew from; reducers see those
    logits too)."""
    lm, sc = _causal_lm(model), batch.scoring
    features = [Feature.of(f) for f in features]
    specs = [(reducer(f.name), dict(f.params)) for f in features]
    context = dict(context or {})
    wanted = {k for spec, _ in specs for k in spec.inputs}
    missing = sorted(wanted - set(BUILTIN_INPUTS) - set(context))
    if missing:
        raise ValueError(f"features {[str(f) for f in features]} read context {missing}, which was not given")
    kw = {"attention_mask": _mask_for(lm, batch.attention_mask), "position_ids": batch.position_ids}
    head = _plain_head(lm)
    if head is not None:
        out = lm.base_model(input_ids=batch.input_ids, output_hidden_states="layers" in wanted, use_cache=False, **kw)
        x = out.last_hidden_state[sc.row, sc.pos]  # [M, H]: scored positions only
        weight, bias = head.weight, head.bias
        if "hidden" in wanted:
            context["hidden"] = x
    else:
        out = lm(input_ids=batch.input_ids, output_hidden_states=bool(wanted & set(BUILTIN_INPUTS)), use_cache=False,
                 **kw)
        x = out.logits[sc.row, sc.pos]  # [M, V]
        weight = bias = None
        if "hidden" in wanted:
            context["hidden"] = out.hidden_states[-1][sc.row, sc.pos]  # [M, H]
    if "layers" in wanted:
        context["layers"] = torch.stack([h[sc.row, sc.pos] for h in out.hidden_states[1:]], 1)  # [M, L, H]
    grad_specs = [s for s in specs if s[0].grad]
    nograd_specs = [s for s in specs if not s[0].grad]
    names = [n for spec, _ in grad_specs + nograd_specs for n in spec.outputs]
    if len(set(names)) != len(names):
        raise ValueError(f"features {[str(f) for f in features]} give the output names {names} more than once")
    parts: list[tuple] = []
    for s in range(0, max(x.shape[0], 1), chunk_size):  # at least one (possibly empty) chunk: output shapes
        ctx = {k: v[s : s + chunk_size] if isinstance(v, torch.Tensor) else v for k, v in context.items()}
        parts.append(_chunk(_chunk_fn, x[s : s + chunk_size], weight, bias, sc.target[s : s + chunk_size], ctx,
                            grad_specs, nograd_specs, temperature))
    flat = [torch.cat(col) for col in zip(*parts)]  # [M, ...] per output, scoring order
    shape, idx = (sc.num_seqs, sc.width), (sc.seq, sc.slot)
    grid = lambda v: v.new_zeros(shape + v.shape[1:]).index_put(idx, v)  # noqa: E731  [S, T, ...]
    token_logps = grid(flat[0])  # [S, T]
    mask = torch.zeros(shape, dtype=torch.bool, device=token_logps.device).index_put(
        idx, torch.ones_like(sc.seq, dtype=torch.bool))
    return SeqLogps(token_logps, mask, token_logps.sum(-1), mask.sum(-1),
                    {n: grid(v) for n, v in zip(names, flat[1:])})
