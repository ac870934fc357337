"""``reference: precompute``: the initial policy's log-probs for every example, computed once and cached."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prefalign.data import collate_pairs
from prefalign.errors import UserError
from prefalign.logps import sequence_logps
from prefalign.model import load_model, load_tokenizer
from prefalign.reference import cache_path, fingerprint, read_cache, save_cache
from prefalign.train.setup import write_failed, write_reason


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
    """Cached values and whether the cache was hit. The main process computes on a miss, or when the cache file is
    damaged (said in the log line; the file is replaced); the others wait, then read what it wrote."""
    settings = {"max_length": cfg.max_length, "truncation": cfg.truncation, "dtype": cfg.dtype}
    key = fingerprint(model, tokenizer, examples, settings)
    path = cache_path(cache_dir, key)
    folder = Path(cache_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(str(folder), "the reference cache folder is a file", "move the file away, or set "
                        "reference_cache_dir to a folder")
    if path.is_dir():
        raise UserError(str(path), "the reference cache file is a folder", "remove that folder (the log-probs are "
                        "then computed again)")
    values, problem = read_cache(path, key, len(examples)) if path.exists() else (None, None)
    hit = values is not None
    if not hit and acc.is_main_process:
        if problem:
            log(f"{what} log-probs: the cache {path} is unusable ({problem}): computing them again")
            with contextlib.suppress(OSError):  # replaced below in any case (and a failure there is said)
                path.unlink()
        model.to(acc.device)
        values = compute_all(model, tokenizer, examples, cfg.batch_size, cfg.log_prob_chunk_size, acc.device,
                             cfg.progress, cfg.layout, cfg.pack)
        try:
            save_cache(path, values, key)
        except Exception as e:  # noqa: BLE001 — safetensors wraps ENOSPC in its own error
            if not write_failed(e):
                raise
            raise _cache_error(path, what, e, cfg) from None
    acc.wait_for_everyone()
    if values is None:  # another process computed them
        values, problem = read_cache(path, key, len(examples))
        if problem:
            raise UserError(str(path), f"the {what} log-prob cache the main process wrote is unusable ({problem})",
                            "check reference_cache_dir is one folder that every process sees")
    log(f"{what} log-probs: {'cache hit' if hit else 'computed and cached'} ({path})")
    return values, hit


def _cache_error(path: Path, what: str, e: Exception, cfg) -> UserError:
    """One line: the cache write failed and why; nothing of it is left; what is intact; how to continue."""
    from prefalign.train.checkpoint import list_checkpoints

    done = list_checkpoints(Path(cfg.output_dir) / "checkpoints") if cfg.resume else []
    again = (f"rerun with --resume (the checkpoint {done[-1].name} is intact)" if done else
             "run the same command again (the output folder is untouched)")
    return UserError(str(path.parent), f"writing the {what} log-prob cache failed ({write_reason(e, path.parent)})",
                     f"free disk space (or set reference_cache_dir to a disk with room) and {again}")


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
