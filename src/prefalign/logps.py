"""Log-probs of completion tokens: a causal LM + a batch → per-token and per-sequence log-probs.

    log π(y_t | x, y_<t) = z_t[y_t] − logsumexp(z_t)

Only the scored positions (the batch's scoring plan) reach the LM head, in chunks of ``chunk_size``; each chunk's
logits are recomputed in backward (activation checkpointing), so the loss never holds more than [chunk, vocab]
logits instead of a [batch, length, vocab] log-softmax. Models whose head is not a plain linear layer (logit
soft-capping, logit scaling) take the exact fallback: the model's own logits, reduced chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class SeqLogps:
    token_logps: torch.Tensor  # [S, T] log π of completion token t of sequence s; 0 past its end
    mask: torch.Tensor  # [S, T] bool
    seq_logps: torch.Tensor  # [S] summed over completion tokens
    n_tokens: torch.Tensor  # [S] completion token counts
    token_logsq: torch.Tensor | None = None  # [S, T] log Σ_v π(v)² (no grad; WPO weights), when asked


def _head_logps(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor):
    logits = F.linear(h, weight, bias).float()  # [C, V]; fp32 for a stable logsumexp
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)  # [C]


def _logsq(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()  # [C, V]
    return torch.logsumexp(2 * logits, -1) - 2 * torch.logsumexp(logits, -1)  # log Σ π² [C]


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


def sequence_logps(model, batch, chunk_size: int = 1024, with_logsq: bool = False) -> SeqLogps:
    """Per-token and summed log-probs of the completion tokens named by ``batch.scoring``."""
    lm, sc = _causal_lm(model), batch.scoring
    kw = {"attention_mask": _mask_for(lm, batch.attention_mask), "position_ids": batch.position_ids}
    head = _plain_head(lm)
    parts, sq_parts = [], []
    if head is not None:
        hidden = lm.base_model(input_ids=batch.input_ids, **kw).last_hidden_state  # [R, L, H]
        h = hidden[sc.row, sc.pos]  # [M, H]: scored positions only
        for s in range(0, h.shape[0], chunk_size):
            hc, tc = h[s : s + chunk_size], sc.target[s : s + chunk_size]
            if torch.is_grad_enabled():
                parts.append(checkpoint(_head_logps, hc, head.weight, head.bias, tc, use_reentrant=False))
            else:
                parts.append(_head_logps(hc, head.weight, head.bias, tc))
            if with_logsq:
                with torch.no_grad():
                    sq_parts.append(_logsq(F.linear(hc, head.weight, head.bias)))
    else:
        logits = lm(input_ids=batch.input_ids, **kw).logits[sc.row, sc.pos]  # [M, V]
        for s in range(0, logits.shape[0], chunk_size):
            lc = logits[s : s + chunk_size].float()
            parts.append(lc.gather(1, sc.target[s : s + chunk_size, None]).squeeze(1) - torch.logsumexp(lc, -1))
            if with_logsq:
                sq_parts.append(_logsq(lc.detach()))
    flat = torch.cat(parts) if parts else batch.input_ids.new_zeros(0, dtype=torch.float32)  # [M]
    shape = (sc.num_seqs, sc.width)
    token_logps = flat.new_zeros(shape).index_put((sc.seq, sc.slot), flat)  # [S, T]
    mask = torch.zeros(shape, dtype=torch.bool, device=flat.device).index_put(
        (sc.seq, sc.slot), torch.ones_like(sc.seq, dtype=torch.bool))
    logsq = None
    if with_logsq:
        sq = torch.cat(sq_parts) if sq_parts else flat.new_zeros(0)
        logsq = sq.new_zeros(shape).index_put((sc.seq, sc.slot), sq)
    return SeqLogps(token_logps, mask, token_logps.sum(-1), mask.sum(-1), logsq)
