"""Rollouts: G completions per prompt from the current policy, the prompt prefilled once per group.

    P prompts ──left-pad──▶ one prefill on P rows ──expand cache ×G──▶ token loop on P·G rows

The prefill is the expensive part of a group (G·P·L prompt tokens in ``generate(num_return_sequences=G)``, which
repeats the prompt before the forward); here the model reads P·L prompt tokens. With ``kv_cache="grouped"`` (the
default) the G continuations of a prompt then read one copy of its keys and values (``decode.grouped_attention``),
so neither the prompt's compute nor its cache is repeated; "in_place" repeats the cache row-wise (``Stream.expand``)
and "dynamic" also grows it by concatenation, as transformers does. All three decode the same ids.

The loop is ``decode.generate.token_loop``, the same one ``sample`` and the decoding-time methods use (checked
against ``model.generate``). Every drawn token's log q under the *sampling* distribution (temperature, top-k,
top-p applied) is recorded, so an algorithm gets old log-probs of exactly the policy that sampled, and at
T = 1 with no filtering they equal the training path's ``sequence_logps`` of the same ids (tested to 1e-5).

Determinism: same weights, prompts, options and generator state → the same ids, bit for bit on CPU (one generator
drives every step of every prompt batch, in order). ``batch_prompts`` is part of that contract: batching
differently consumes random numbers in a different order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from prefalign.decode import grouped_attention
from prefalign.decode.generate import GenOptions, Stream, left_pad, model_device, token_loop

KV_CACHES = ("grouped", "in_place", "dynamic")


@dataclass
class SamplingOptions:
    """How rollouts are sampled."""

    max_new_tokens: int = 64  # new tokens per completion, EOS included (a row ends at its first EOS)
    temperature: float = 1.0  # > 0 for RL (log-probs need a proper distribution); 0 = greedy, for eval only
    top_p: float = 1.0  # nucleus threshold, applied after top-k on the renormalised distribution; 1 = off
    top_k: int = 0  # keep the k most likely tokens (ties at the k-th kept); 0 = off
    ignore_eos: bool = False  # for benchmarks: EOS logits are set to −inf, so every completion has exactly
    #   max_new_tokens tokens and none contains EOS; log q is then under that EOS-free distribution (not π's)
    batch_prompts: int | None = None  # prompts decoded together (P·G rows at most G·batch_prompts); None = all
    kv_cache: str = "grouped"  # grouped: a group's G rows read one copy of the prompt's KV cache, new keys and
    #   values written in place (decode.grouped_attention); in_place: the prompt's KV repeated G times, written in
    #   place (decode.kv_cache); dynamic: transformers' DynamicCache, repeated and grown by concatenation (as
    #   generate(num_return_sequences=G)). All three decode the same ids (tested).

    def problems(self, greedy_ok: bool = False) -> list[str]:
        """What is out of range, as phrases (empty when all is well); ranges shared with ``GenOptions``.
        ``greedy_ok``: allow temperature 0 (evaluation; an RL update needs a proper distribution)."""
        shared = GenOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                            top_k=self.top_k)
        out = shared.problems(greedy_ok=greedy_ok)
        if not isinstance(self.ignore_eos, bool):
            out.append(f"--ignore-eos must be true or false, got {self.ignore_eos!r}")
        if self.kv_cache not in KV_CACHES:
            out.append(f"kv_cache must be one of {', '.join(KV_CACHES)}, got {self.kv_cache!r}")
        b = self.batch_prompts
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            out.append(f"--batch-prompts must be an integer >= 1 (or unset: all prompts at once), got {b!r}")
        return out


@dataclass
class RolloutSamples:
    """P prompts × G completions, group-contiguous: completion n answers prompt n // G."""

    prompt_ids: list[list[int]]  # P prompts, unpadded
    group_size: int  # G
    completion_ids: list[list[int]]  # P·G; ends with the EOS id when one was emitted, nothing after it
    logq: list[list[float]]  # P·G, one per completion token: log q under the sampling distribution
    truncated: list[bool]  # P·G: no EOS within max_new_tokens

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def width(self) -> int:
        """T, the longest completion."""
        return max((len(c) for c in self.completion_ids), default=0)

    def group(self) -> torch.Tensor:
        """[N] long: the prompt each completion answers."""
        return torch.arange(len(self.prompt_ids)).repeat_interleave(self.group_size)

    def completion_mask(self) -> torch.Tensor:
        """[N, T] bool: True on completion tokens (EOS included)."""
        lengths = torch.tensor([len(c) for c in self.completion_ids])  # [N]
        return torch.arange(self.width)[None, :] < lengths[:, None]

    def padded_ids(self, pad_id: int) -> torch.Tensor:
        """[N, T] long completion ids, right-padded with ``pad_id``."""
        out = torch.full((len(self), self.width), pad_id, dtype=torch.long)
        for n, c in enumerate(self.completion_ids):
            out[n, : len(c)] = torch.tensor(c, dtype=torch.long)
        return out

    def logq_tensor(self) -> torch.Tensor:
        """[N, T] float32 per-token log q, 0 past a completion's end (the algorithms' ``old_logp`` layout)."""
        out = torch.zeros((len(self), self.width), dtype=torch.float32)
        for n, q in enumerate(self.logq):
            out[n, : len(q)] = torch.tensor(q, dtype=torch.float32)
        return out

    def seq_logq(self) -> torch.Tensor:
        """[N] log q(y | x), summed over each completion's tokens."""
        return self.logq_tensor().sum(-1)

    def prompt_of_each(self) -> list[list[int]]:
        """The prompt of every completion (P·G lists), for ``data.batch.collate_completions``."""
        return [p for p in self.prompt_ids for _ in range(self.group_size)]

    def texts(self, tokenizer) -> list[str]:
        """Decoded completions, without the final EOS and without special tokens."""
        return [tokenizer.decode(c if t else c[:-1], skip_special_tokens=True)
                for c, t in zip(self.completion_ids, self.truncated)]


class _GroupStream(Stream):
    """A ``Stream`` whose prefill runs once on B prompts and then continues on B·G rows. ``kv_cache`` (see
    ``SamplingOptions``): "grouped" falls back to "in_place" for a model ``grouped_attention.supported`` does not
    cover (sliding windows, soft-capping, other attention kernels)."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, repeats: int,
                 kv_cache: str = "grouped"):
        super().__init__(model, input_ids, attention_mask)
        self.repeats, self.kv_cache = repeats, kv_cache
        self.grouped = kv_cache == "grouped" and grouped_attention.supported(model, self.cache)
        self.attn_configs = grouped_attention.attention_configs(model) if self.grouped else []
        self.decoding = False

    def reserve(self, new_tokens: int) -> None:
        if self.grouped:
            grouped_attention.grouped_cache(self.cache, new_tokens)
        elif self.kv_cache != "dynamic":
            super().reserve(new_tokens)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if not (self.grouped and self.decoding):
            return super()._forward(ids, positions)
        with grouped_attention.active(self.attn_configs, self.cache):
            return super()._forward(ids, positions)

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        logits = super().prefill()  # [B, V]
        self.expand(self.repeats)
        self.decoding = True
        return logits.repeat_interleave(self.repeats, dim=0)  # [B·G, V]


def _suppress(ids: Sequence[int]):
    """A ``logits_fn`` setting the scores of ``ids`` to −inf (ignore_eos)."""
    def rule(state):
        logits = state.logits[0]  # [B, V]
        return logits.index_fill(-1, torch.tensor(list(ids), device=logits.device), float("-inf"))
    return rule


def generate_groups(model, prompt_ids: Sequence[Sequence[int]], group_size: int, opts: SamplingOptions,
                    eos_ids: Sequence[int], pad_id: int, generator: torch.Generator | None = None,
                    all_done: Callable[[bool], bool] | None = None) -> RolloutSamples:
    """``group_size`` completions of each prompt (token ids, unpadded), each prompt prefilled once.

    ``model``: a causal LM or a PEFT model (unwrap DDP / FSDP first). It runs in eval mode under ``no_grad``, with
    the KV cache whatever ``config.use_cache`` says; every module's train/eval flag is restored afterwards.
    ``eos_ids``: ids that end a completion; ``pad_id``: fills padding (never attended, never returned).
    ``generator``: drives sampling (on the model's device); None = torch's global generator.
    ``all_done(local_done) -> bool``: when to stop before ``max_new_tokens`` (default: when every local row has
    ended). Under FSDP make it a collective ("every rank done") so all ranks run the same number of forward
    passes; they must also hold equally many prompts, so that they run equally many prompt batches.
    Raises ValueError for out-of-range options (temperature 0 is allowed here: greedy, with log q = 0).
    """
    prompts = [list(p) for p in prompt_ids]
    problems = opts.problems(greedy_ok=True)
    if not (isinstance(group_size, int) and group_size >= 1):
        problems.append(f"group_size must be an integer >= 1, got {group_size!r}")
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        problems.append(f"prompt {empty[0]} is empty (no tokens)")
    if opts.ignore_eos and not eos_ids:
        problems.append("ignore_eos needs the eos ids to suppress")
    if problems:
        raise ValueError("generate_groups: " + "; ".join(problems))
    eos = sorted(set(int(e) for e in eos_ids))
    rule = _suppress(eos) if opts.ignore_eos else (lambda state: state.logits[0])
    loop_eos = () if opts.ignore_eos else eos  # suppressed: nothing ends a row before max_new_tokens
    device = model_device(model)
    per_batch = opts.batch_prompts or max(len(prompts), 1)
    out = RolloutSamples(prompts, group_size, [], [], [])
    modes = [(m, m.training) for m in model.modules()]  # exact per-module restore, not model.train(flag)
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), per_batch):
                ids, mask = left_pad(prompts[start : start + per_batch], pad_id, device)  # [B, L]
                stream = _GroupStream(model, ids, mask, group_size, kv_cache=opts.kv_cache)
                steps: list[torch.Tensor] = []
                generated = token_loop([stream], rule, opts, loop_eos, pad_id, generator, step_logq=steps,
                                       all_done=all_done)  # [B·G, t]
                logq = torch.stack(steps, dim=1).float().cpu()  # [B·G, t]
                _cut(generated.cpu(), logq, set(loop_eos), out)
    finally:
        for m, mode in modes:
            m.training = mode
    return out


def _cut(generated: torch.Tensor, logq: torch.Tensor, eos: set[int], out: RolloutSamples) -> None:
    """Append each row up to and including its first EOS (the rest is padding) to ``out``."""
    for row, q in zip(generated.tolist(), logq.tolist()):
        end = next((k + 1 for k, tok in enumerate(row) if tok in eos), None)
        out.completion_ids.append(row[:end] if end else row)
        out.logq.append(q[:end] if end else q)
        out.truncated.append(end is None)
