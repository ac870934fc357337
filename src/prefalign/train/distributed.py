"""Multi-process training through PyTorch's own engines: DDP (replicated model, averaged gradients) or FSDP2
(``fully_shard``: parameters, gradients and optimizer state sharded across processes). No gradient scheme of ours.

The log-prob layer calls the decoder body and the LM head directly (not the model's ``forward``), so the trainable
modules are wrapped in ``Scorer``, whose ``forward`` *is* the log-prob computation: DDP's and FSDP's hooks then see
every forward. Under FSDP each decoder layer is its own shard group and the Scorer the root, whose group (embeddings,
final norm, LM head) stays gathered from forward to backward, so the chunked head reads whole weights.

Checkpoints and the final model hold full (unsharded) tensors gathered to the main process: one format for every
sharding and process count, so a run resumes under another sharding, and the output is an ordinary model folder.
The cost is the main process briefly holding the full trainable state in CPU memory while it writes.
"""

from __future__ import annotations

import contextlib

import torch

from prefalign.errors import UserError
from prefalign.logps import sequence_logps

# A method whose model is scored by something other than completion log-probs (a reward model's pooled scores)
# names its forward function on the model it builds: ``model.prefalign_forward = fn``, ``fn(model, batch, **kw)``.
FORWARD_ATTR = "prefalign_forward"


class Scorer(torch.nn.Module):
    """The trained model (and the objective's own trainable modules) as one module whose forward is the method's
    computation: ``forward_fn(lm, batch, **kw)`` — given here, else the model's ``prefalign_forward``, else
    ``sequence_logps`` (every log-prob method)."""

    def __init__(self, lm: torch.nn.Module, extra: torch.nn.Module | None = None, forward_fn=None):
        super().__init__()
        self.lm = lm
        self.extra = extra  # registered so DDP/FSDP sync its gradients too (it is called inside the objective)
        self.forward_fn = forward_fn or getattr(lm, FORWARD_ATTR, None) or sequence_logps

    def forward(self, batch, run=None, **kw):
        if run is not None:  # a whole computation on the model inside this forward (FSDP: the root stays gathered)
            return run(self.lm)
        return self.forward_fn(self.lm, batch, **kw)


def sharding_mode(cfg, acc) -> str:
    """none (one process), ddp or fsdp; several processes without a choice means ddp."""
    if acc.num_processes == 1:
        return "none" if cfg.sharding != "fsdp" else "fsdp"
    return "ddp" if cfg.sharding == "none" else cfg.sharding


def describe(mode: str, acc, cfg) -> str:
    what = {"none": "one process", "ddp": "DDP (replicated model, gradients averaged)",
            "fsdp": "FSDP2 (parameters, gradients and optimizer state sharded)"}[mode]
    mp = ", bf16 compute with fp32 master weights" if cfg.mixed_precision == "bf16" else ""
    return f"distributed: {acc.num_processes} process(es) on {acc.device}, {what}{mp}"


def _decoder_layers(lm) -> list[torch.nn.Module]:
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    body = getattr(base, "model", None) or getattr(base, "transformer", None)
    layers = getattr(body, "layers", None) or getattr(body, "h", None)
    if layers is None:
        raise UserError("model", "sharding: fsdp could not find the model's decoder layers",
                        "use sharding: ddp for this architecture")
    return list(layers)


def wrap(lm, extra, mode: str, cfg, device) -> torch.nn.Module:
    scorer = Scorer(lm, extra)
    if mode == "none":
        return scorer
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(scorer, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if cfg.mixed_precision == "bf16" else MixedPrecisionPolicy())
    for layer in _decoder_layers(lm):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(scorer, mesh=mesh, mp_policy=mp)
    return scorer


def inner(scorer) -> Scorer:
    return getattr(scorer, "module", scorer)  # DDP keeps the module under .module; FSDP2 is the module itself


def autocast(cfg, mode: str, device):
    """bf16 autocast for mixed precision without FSDP (FSDP casts parameters itself)."""
    if cfg.mixed_precision == "bf16" and mode != "fsdp":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def sync_context(scorer, mode: str, last: bool):
    """Gradient accumulation. DDP all-reduces only on the step's last micro-batch (``no_sync`` before). FSDP
    reduce-scatters after every micro-batch: skipping it would keep full-size unsharded gradients on every process
    until the last one, which is the memory sharding exists to save."""
    if mode == "ddp" and not last:
        with scorer.no_sync():
            yield
        return
    yield


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """The global gradient norm (clipped to ``max_norm`` > 0), over sharded (DTensor) and plain gradients alike."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    sharded = [p for p in with_grad if _is_dtensor(p.grad)]
    plain = [p for p in with_grad if not _is_dtensor(p.grad)]
    if not sharded:  # unsharded: exactly torch's own
        if max_norm > 0:
            return float(torch.nn.utils.clip_grad_norm_(with_grad, max_norm))
        return float(torch.nn.utils.get_total_norm([p.grad for p in plain]))
    # One reduction for all sharded gradients (a DTensor norm), then the plain ones (the objective's own modules,
    # replicated), combined: torch's foreach kernels refuse lists mixing DTensors and tensors.
    norms = [torch.nn.utils.get_total_norm([p.grad for p in sharded]).full_tensor()]
    if plain:
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in plain]).to(norms[0].device))
    total = torch.nn.utils.get_total_norm(norms)
    if max_norm > 0:
        for group in (sharded, plain):  # parameters, separately, for the same reason
            if group:
                torch.nn.utils.clip_grads_with_norm_(group, max_norm, total.to(group[0].device))
    return float(total)


def full_tensors(named) -> dict[str, torch.Tensor]:
    """{name: full CPU tensor}; sharded tensors are gathered (a collective: every process calls this)."""
    out = {}
    for n, p in named:
        t = p.detach()
        out[n] = (t.full_tensor() if _is_dtensor(t) else t).cpu().contiguous()
    return out


def full_optimizer_state(opt) -> dict:
    """``opt.state_dict()`` with sharded state tensors gathered to full CPU tensors (collective)."""
    sd = opt.state_dict()
    sd["state"] = {i: dict(st) for i, st in sd["state"].items()}  # state_dict() shares the live per-param dicts
    for st in sd["state"].values():
        for k, v in list(st.items()):
            if _is_dtensor(v):
                st[k] = v.full_tensor().cpu()
    return sd


def load_full(param: torch.nn.Parameter, full: torch.Tensor) -> None:
    """Copy a full tensor into a parameter; a sharded parameter takes its own shard."""
    with torch.no_grad():
        if _is_dtensor(param):
            from torch.distributed.tensor import distribute_tensor

            param.copy_(distribute_tensor(full.to(param.dtype), param.device_mesh, param.placements))
        else:
            param.copy_(full)


def reshard_optimizer_state(opt) -> None:
    """After ``opt.load_state_dict`` of full state: each sharded parameter's state becomes shards like it."""
    from torch.distributed.tensor import distribute_tensor

    for group in opt.param_groups:
        for p in group["params"]:
            if not _is_dtensor(p) or p not in opt.state:
                continue
            st = opt.state[p]
            for k, v in list(st.items()):
                if isinstance(v, torch.Tensor) and not _is_dtensor(v) and v.shape == p.shape:
                    st[k] = distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements)


def full_model(method, mode: str):
    """The trained policy as an ordinary (unsharded) module: itself, or under FSDP a fresh copy on the main process
    loaded with the gathered weights (gathering is collective; the other processes get None)."""
    if mode != "fsdp":
        return method.model
    state = full_tensors(method.model.state_dict().items())
    if torch.distributed.get_rank() != 0:
        return None
    model = method.rebuild_model()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:  # a tied head is not stored twice
        raise RuntimeError(f"gathered FSDP state does not fit the model: missing {missing}, unexpected {unexpected}")
    return model
