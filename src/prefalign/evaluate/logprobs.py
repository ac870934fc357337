"""Sequence log-probs of given completion token ids under a model (teacher forcing), for KL estimates.

    log π(y | x) = Σ_t log π(y_t | x, y_<t)

The prompt's ids are the sampler's (``decode.generate.prompt_ids``, the training path's renderer), so the ids scored
are the ids the sampler drew after the very same context. Scoring is the training path's too: the data layer's
segment builder (``data.batch.collate_completions``) and ``logps.sequence_logps``, which sends only the completion
positions through the LM head, ``chunk_size`` at a time (never a [B, L, V] logits tensor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from prefalign.data.batch import collate_completions
from prefalign.decode.generate import GenOptions, model_device, pad_id, prompt_ids
from prefalign.logps import sequence_logps


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]],
                        opts: GenOptions, batch_size: int = 16, context: Callable | None = None,
                        desc: str = "log-probs", progress: bool = True, chunk_size: int = 1024) -> torch.Tensor:
    """[N] summed log-probs of ``completion_ids[i]`` after prompt ``prompts[i]``; ``context`` wraps each forward
    (e.g. a PEFT model's ``disable_adapter``); ``chunk_size`` scored positions reach the LM head at a time."""
    if len(prompts) != len(completion_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(completion_ids)} completions")
    model.eval()
    context = context or contextlib.nullcontext
    device, pad = model_device(model), pad_id(tokenizer)
    out = []
    bar = tqdm(total=len(prompts), desc=desc, unit="seq", disable=not progress, dynamic_ncols=True)
    for s in range(0, len(prompts), batch_size):
        batch_p, batch_c = list(prompts[s : s + batch_size]), [list(c) for c in completion_ids[s : s + batch_size]]
        batch = collate_completions(prompt_ids(tokenizer, batch_p, opts), batch_c, pad).to(device)
        with context():
            lp = sequence_logps(model, batch, chunk_size=chunk_size).seq_logps  # [B]
        out.append(lp.float().cpu())
        bar.update(len(batch_p))
    bar.close()
    return torch.cat(out) if out else torch.zeros(0)
