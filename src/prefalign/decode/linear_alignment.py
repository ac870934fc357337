"""Linear Alignment: steer one model by contrasting a context with a principle against one without.

Released demo (Wizardcoast/Linear_Alignment ``model.py``, ``contra_generate``):
    z̃ = (1+α)·z(x ⊕ principle) − α·z(x),
decoded only within the top-p set of the principle-conditioned distribution softmax(z(x ⊕ principle)/T).
α = 0 is plain principle-prompted decoding; larger α pushes further along the direction the principle moves
the logits. The principle is a system message when the chat template allows one, else prepended text.
The paper's closed-form derivation was not checked; this follows the demo.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from prefalign.decode.generate import (
    GenOptions,
    Stream,
    decode_batches,
    encode_prompts,
    model_device,
    top_p_mask,
)
from prefalign.errors import UserError


@dataclass
class LinearAlignmentConfig:
    principle: str = field(default="", metadata={"help": "the principle (system message) to align towards"})
    alpha: float = field(default=1.0, metadata={"help": "α: 0 = principle-prompted decoding; larger = stronger"})
    mask_top_p: float = field(default=0.8, metadata={
        "help": "keep only the top-p set of the principle-conditioned distribution (1 = off); demo uses 0.8"})


def linear_alignment_logits(z_principle: torch.Tensor, z_plain: torch.Tensor, alpha: float,
                            mask_top_p: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """(1+α)·z_p − α·z over the nucleus of softmax(z_p / T), −inf elsewhere: [B, V], [B, V] -> [B, V]."""
    scores = (1.0 + alpha) * z_principle - alpha * z_plain
    t = temperature if temperature > 0 else 1.0  # greedy still uses the T = 1 nucleus as its candidate set
    return scores.masked_fill(~top_p_mask(z_principle / t, mask_top_p), float("-inf"))


def linear_alignment_decode(model, tokenizer, prompts: Sequence[str], opts: GenOptions,
                            cfg: LinearAlignmentConfig) -> tuple[list[str], list[dict]]:
    if not cfg.principle:
        raise UserError("linear_alignment", "no principle given", "set hparam principle='...'")
    with_principle = f"{opts.system}\n\n{cfg.principle}" if opts.system else cfg.principle

    def make_streams(batch: list[str]) -> list[Stream]:
        device = model_device(model)
        p_ids, p_mask = encode_prompts(tokenizer, batch, opts, system=with_principle, device=device)
        ids, mask = encode_prompts(tokenizer, batch, opts, device=device)
        return [Stream(model, p_ids, p_mask), Stream(model, ids, mask)]  # two contexts, two KV caches

    def make_logits_fn(batch: list[str]):
        return lambda state: linear_alignment_logits(state.logits[0], state.logits[1], cfg.alpha,
                                                     cfg.mask_top_p, opts.temperature)

    out = decode_batches(tokenizer, prompts, opts, make_streams, make_logits_fn, model=model)
    return out.texts, [{**d, "alpha": cfg.alpha} for d in out.info()]
