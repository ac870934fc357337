"""Before training: a memory estimate, and one forward/backward on the longest micro-batch (the probe), so an
out-of-memory happens at once rather than hours in. The probe's gradients are discarded and the RNG restored, so
the run is unchanged by it."""

from __future__ import annotations

import resource

import torch


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def estimate(model, method, cfg) -> str:
    """Parameters, gradients, AdamW state, a reference copy, activations of the longest micro-batch."""
    ref_copy = getattr(method, "ref_kind", None) == "copy"
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    elem = next(model.parameters()).element_size()
    batch = method.longest_micro_batch().data
    c = model.config
    h, inter, layers = c.hidden_size, getattr(c, "intermediate_size", 4 * c.hidden_size), c.num_hidden_layers
    # ≈ what autograd keeps per token and layer: norms, q/k/v/o, attention output, 3 MLP projections.
    acts = batch.num_tokens * layers * (10 * h + 4 * inter) * elem
    if cfg.gradient_checkpointing:  # each layer keeps its input; one layer's activations live at a time
        acts = batch.num_tokens * (layers * h + 10 * h + 4 * inter) * elem
    head = min(cfg.log_prob_chunk_size, batch.scoring.target.numel()) * c.vocab_size * 4 * 3
    parts = {"parameters": params, "gradients": trainable * elem, "AdamW state": trainable * 8,
             "reference copy": params if ref_copy else 0, "activations (longest batch)": acts, "LM-head chunk": head}
    total = sum(parts.values())
    return "memory estimate: " + ", ".join(f"{k} {_gib(v)}" for k, v in parts.items() if v) + f"; total ≈ {_gib(total)}"


def probe(engine) -> str:
    """Forward + backward on the longest micro-batch through the method's public API; gradients dropped, RNG and
    the method's state (BCO's δ, counters) restored, so the probe changes nothing about the run."""
    method = engine.method
    rng, snap = torch.get_rng_state(), method.snapshot()
    cuda = torch.cuda.is_available() and engine.acc.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    mb = method.longest_micro_batch()
    loss, _ = method.loss(mb, -1)
    loss.backward()
    engine.opt.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    method.restore(snap)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    where = "GPU memory" if cuda else "process memory (RSS)"
    return f"longest batch ({mb.data.num_tokens} tokens) ran: peak {where} {_gib(peak)}"
