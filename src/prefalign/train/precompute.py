"""``reference: precompute``: the initial policy's log-probs for every example, computed once and cached."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from prefalign.data import collate_pairs
from prefalign.errors import UserError
from prefalign.logps import sequence_logps
from prefalign.model import load_model, load_tokenizer
from prefalign.reference import cache_path, fingerprint, load_cache, save_cache


@torch.no_grad()
def compute_all(model, tokenizer, examples, batch_size: int, chunk_size: int, device, progress: bool,
                layout: str = "separate", pack: bool = False):
    """[len(examples), 2] summed log-probs (chosen, rejected) under ``model`` as it is now."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(examples), 2)
    for s in tqdm(range(0, len(examples), batch_size), desc="reference log-probs", disable=not progress):
        part = examples[s : s + batch_size]
        b = collate_pairs(part, tokenizer.pad_token_id, layout, pack).to(device)
        lp = sequence_logps(model, b, chunk_size).seq_logps
        out[s : s + len(part), 0] = lp[: len(part)].float().cpu()
        out[s : s + len(part), 1] = lp[len(part) :].float().cpu()
    model.train(was_training)
    return out


def reference_logps(acc, model, tokenizer, examples, cfg, cache_dir: str, log, what: str = "reference"):
    """Cached values and whether the cache was hit. The main process computes on a miss; others wait."""
    settings = {"max_length": cfg.max_length, "truncation": cfg.truncation, "dtype": cfg.dtype}
    path = cache_path(cache_dir, fingerprint(model, tokenizer, examples, settings))
    hit = path.exists()
    if not hit and acc.is_main_process:
        model.to(acc.device)
        values = compute_all(model, tokenizer, examples, cfg.batch_size, cfg.log_prob_chunk_size, acc.device,
                             cfg.progress, cfg.layout, cfg.pack)
        save_cache(path, values)
    acc.wait_for_everyone()
    log(f"{what} log-probs: {'cache hit' if hit else 'computed and cached'} ({path})")
    return load_cache(path), hit


def aligned_logps(acc, folders: list[str], tokenizer, examples, cfg, cache_dir: str, log) -> torch.Tensor:
    """[len(examples), M]: summed log p_j(chosen|prompt) under each frozen aligned model (PoFT's ``prepare``), once per
    model and cached under the same fingerprint scheme as ``reference: precompute``. One model in memory at a time.
    The models must share the policy's tokenizer (the rows are tokenized once)."""
    vocab = tokenizer.get_vocab()
    for folder in folders:  # every folder's tokenizer is checked before any model is run
        if load_tokenizer(folder, cfg.trust_remote_code).get_vocab() != vocab:
            raise UserError(folder, "the aligned model's tokenizer differs from the policy's",
                            "use aligned models that share the policy's tokenizer (PoFT's T_j = T₀ here)")
    cols = []
    for folder in folders:
        model = load_model(folder, cfg.dtype, cfg.trust_remote_code)
        model.requires_grad_(False)
        values, _ = reference_logps(acc, model, tokenizer, examples, cfg, cache_dir, log, f"aligned model {folder}")
        cols.append(values[:, 0])  # the chosen completion's log-prob
        del model
    return torch.stack(cols, 1)
