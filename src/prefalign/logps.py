"""Log-probs of completion tokens: a causal LM + a batch → per-token and per-sequence log-probs.

    log π(y_t | x, y_<t) = z_t[y_t] − logsumexp(z_t)

Only completion positions reach the LM head, in chunks of ``chunk_size`` positions; each chunk's logits are
recomputed in backward (activation checkpointing), so the loss never holds more than [chunk, vocab] logits
instead of a [batch, length, vocab] log-softmax. Models whose head is not a plain linear layer (logit soft-capping,
logit scaling) take the exact fallback: the model's own logits, reduced chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class SeqLogps:
    token_logps: torch.Tensor  # [N, L-1] log π of token t+1 at position t; 0 off the completion
    mask: torch.Tensor  # [N, L-1] bool, True where token t+1 is a completion token
    seq_logps: torch.Tensor  # [N] summed over completion tokens
    n_tokens: torch.Tensor  # [N] completion token counts
    token_logsq: torch.Tensor | None = None  # [N, L-1] log Σ_v π(v)² (no grad; WPO weights), when asked


def _head_logps(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor):
    logits = F.linear(h, weight, bias).float()  # [C, V]; fp32 for a stable logsumexp
    lse = torch.logsumexp(logits, dim=-1)  # [C]
    return logits.gather(1, targets[:, None]).squeeze(1) - lse  # [C]


def _head_logsq(h, weight, bias):
    logits = F.linear(h, weight, bias).float()  # [C, V]
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


def sequence_logps(model, input_ids, attention_mask, completion_mask, chunk_size: int = 1024,
                   with_logsq: bool = False, position_ids: torch.Tensor | None = None) -> SeqLogps:
    """Per-token and summed log-probs of completion tokens. input_ids/attention_mask/completion_mask: [N, L]."""
    lm = _causal_lm(model)
    mask = completion_mask[:, 1:].bool()  # [N, L-1]: position t scores token t+1
    targets = input_ids[:, 1:][mask]  # [M]
    head = _plain_head(lm)
    kw = {"attention_mask": attention_mask}
    if position_ids is not None:
        kw["position_ids"] = position_ids
    if head is not None:
        hidden = lm.base_model(input_ids=input_ids, **kw).last_hidden_state  # [N, L, H]
        h = hidden[:, :-1][mask]  # [M, H] completion positions only
        parts, sq_parts = [], []
        for s in range(0, h.shape[0], chunk_size):
            hc, tc = h[s : s + chunk_size], targets[s : s + chunk_size]
            if torch.is_grad_enabled():
                parts.append(checkpoint(_head_logps, hc, head.weight, head.bias, tc, use_reentrant=False))
            else:
                parts.append(_head_logps(hc, head.weight, head.bias, tc))
            if with_logsq:
                with torch.no_grad():
                    sq_parts.append(_head_logsq(hc.detach(), head.weight, head.bias))
    else:
        logits = lm(input_ids=input_ids, **kw).logits[:, :-1][mask]  # [M, V]
        parts = [logits[s : s + chunk_size].float().log_softmax(-1).gather(1, targets[s : s + chunk_size, None])
                 .squeeze(1) for s in range(0, logits.shape[0], chunk_size)]
        sq_parts = []
        if with_logsq:
            with torch.no_grad():
                lf = logits.detach().float()
                sq_parts = [torch.logsumexp(2 * lf, -1) - 2 * torch.logsumexp(lf, -1)]
    flat = torch.cat(parts) if parts else targets.new_zeros(0, dtype=torch.float32)  # [M]
    token_logps = torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device).masked_scatter(mask, flat)
    logsq = None
    if with_logsq:
        sq = torch.cat(sq_parts) if sq_parts else flat.new_zeros(0)
        logsq = torch.zeros(mask.shape, dtype=sq.dtype, device=sq.device).masked_scatter(mask, sq)
    return SeqLogps(token_logps, mask, token_logps.sum(-1), mask.sum(-1), logsq)
