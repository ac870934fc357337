"""DeRa: decoding-time realignment (arXiv 2402.02992).

Next-token scores are the interpolation of the aligned and reference logits,
    π_λ(· | x, y_<t) = softmax(λ·z_aligned + (1−λ)·z_ref),
a per-token geometric mixture π_ref^{1−λ}·π_aligned^{λ}. If π_aligned is the KL-regularised optimum
π*(β) ∝ π_ref·exp(r/β), the sequence-level mixture is exactly π*(β/λ): λ > 1 acts like weaker regularisation,
λ < 1 like stronger, without retraining. Per token it is an approximation (the normalisers of the two
models do not factor the same way across steps); the tests measure that error on a tabular toy.

The reference is either a second model or, for a PEFT model with ``ref_model=None``, the same weights with
the adapter disabled. Each reads the prompts through its own stream, so the two KV caches stay separate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from prefalign.decode.generate import GenOptions, Stream, decode_batches, encode_prompts, model_device
from prefalign.errors import UserError


@dataclass
class DeRaConfig:
    lam: float = field(default=1.0, metadata={
        "help": "λ: 0 = reference, 1 = aligned model, >1 extrapolates (acts like β/λ regularisation)"})


def dera_logits(z_aligned: torch.Tensor, z_ref: torch.Tensor, lam: float) -> torch.Tensor:
    """λ·z_aligned + (1−λ)·z_ref over the shared vocabulary: [B, V_a], [B, V_r] -> [B, min(V_a, V_r)].

    Models of one family can pad their output layer to different sizes; the ids past the tokenizer are never
    produced by either, so the common prefix is the whole real vocabulary.
    """
    v = min(z_aligned.shape[-1], z_ref.shape[-1])
    return lam * z_aligned[..., :v] + (1.0 - lam) * z_ref[..., :v]


def is_peft_model(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def dera_decode(model, tokenizer, prompts: Sequence[str], opts: GenOptions, cfg: DeRaConfig,
                ref_model=None) -> tuple[list[str], list[dict]]:
    """Decode from softmax(λ·z_model + (1−λ)·z_ref); ``model`` is the aligned policy."""
    if ref_model is None and not is_peft_model(model):
        raise UserError("dera", "needs a reference model",
                        "pass a reference model, or a PEFT model whose disabled adapter is the reference")
    # The PEFT reference runs inside disable_adapter(); a separate model runs as is.
    ref, ref_context = (model, model.disable_adapter) if ref_model is None else (ref_model, None)

    def make_streams(batch: list[str]) -> list[Stream]:
        ids, mask = encode_prompts(tokenizer, batch, opts, device=model_device(model))
        ref_ids, ref_mask = ids.to(model_device(ref)), mask.to(model_device(ref))
        return [Stream(model, ids, mask), Stream(ref, ref_ids, ref_mask, ref_context)]

    def make_logits_fn(batch: list[str]):
        return lambda state: dera_logits(state.logits[0], state.logits[1].to(state.logits[0].device), cfg.lam)

    out = decode_batches(tokenizer, prompts, opts, make_streams, make_logits_fn, model=model)
    return out.texts, [{**d, "lam": cfg.lam} for d in out.info()]
