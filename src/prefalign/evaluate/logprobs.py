"""Sequence log-probs of given completion token ids under a model (teacher forcing), for KL estimates.

    log π(y | x) = Σ_t log π(y_t | x, y_<t)

The prompt is rendered exactly as for sampling (``decode.generate.encode_prompts``), so the ids scored are the
ids the sampler drew after the same context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from prefalign.decode.generate import GenOptions, encode_prompts, model_device, pad_id


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]],
                        opts: GenOptions, batch_size: int = 16, context: Callable | None = None,
                        desc: str = "log-probs", progress: bool = True) -> torch.Tensor:
    """[N] summed log-probs of ``completion_ids[i]`` after prompt ``prompts[i]``; ``context`` wraps each forward."""
    if len(prompts) != len(completion_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(completion_ids)} completions")
    model.eval()
    context = context or contextlib.nullcontext
    device, pad = model_device(model), pad_id(tokenizer)
    out = []
    bar = tqdm(total=len(prompts), desc=desc, unit="seq", disable=not progress, dynamic_ncols=True)
    for s in range(0, len(prompts), batch_size):
        batch_p, batch_c = list(prompts[s : s + batch_size]), [list(c) for c in completion_ids[s : s + batch_size]]
        p_ids, p_mask = encode_prompts(tokenizer, batch_p, opts)  # [B, T] left-padded
        prompts_ids = [row[m.bool()].tolist() for row, m in zip(p_ids, p_mask)]
        seqs = [p + c for p, c in zip(prompts_ids, batch_c)]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # right-padded: positions are 0..len-1
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, x in enumerate(seqs):
            ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : len(x)] = 1
        with context():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [B, L, V]
        # Completion token t of row i sits at position len(p_i)+t and is predicted by the position before it.
        rows = torch.cat([torch.full((len(c),), i, dtype=torch.long) for i, c in enumerate(batch_c)])  # [M]
        pos = torch.cat([torch.arange(len(p) - 1, len(p) - 1 + len(c)) for p, c in zip(prompts_ids, batch_c)])
        target = torch.tensor([t for c in batch_c for t in c], dtype=torch.long)  # [M]
        z = logits[rows.to(device), pos.to(device)].float()  # [M, V]
        tok = z.gather(1, target.to(device)[:, None]).squeeze(1) - torch.logsumexp(z, dim=-1)  # [M]
        out.append(torch.zeros(len(batch_c), device=device).index_add_(0, rows.to(device), tok).cpu())
        bar.update(len(batch_p))
    bar.close()
    return torch.cat(out) if out else torch.zeros(0)
