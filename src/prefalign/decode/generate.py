"""Shared decoding machinery: prompt rendering, a token-by-token loop with KV caches, stopping, sampling.

Every decoding-time method here is "some streams + a rule that turns their next-token logits into scores":

- a ``Stream`` is one model reading one batch of contexts, holding its own KV cache;
- ``token_loop`` prefills every stream, then each step calls ``logits_fn(StepState) -> scores [B, V]``, picks
  a token per row (argmax at temperature 0, else top-k / top-p sampling from softmax(scores / T)) and feeds it
  to every stream.

Plain sampling is one stream and the identity rule, so best-of-n samples through the same loop as DeRa,
Linear Alignment and ARGS (and is checked against ``model.generate`` in the tests).

Prompts are rendered in token space by the training path's ``data.render.Renderer`` (``prompt_ids``), so a sampler
continues exactly the ids a trainer puts before a completion of the same prompt, and an evaluator scores the
sampled ids after those same ids.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from prefalign.data.render import Renderer
from prefalign.decode.kv_cache import reserve_layers
from prefalign.errors import UserError


@dataclass
class GenOptions:
    """Options shared by every method."""

    max_new_tokens: int = 128  # new tokens per completion (eos and stop strings end a row earlier)
    temperature: float = 1.0  # 0 = greedy (argmax); else sample from softmax(scores / temperature)
    top_p: float = 1.0  # nucleus sampling threshold on the final scores; 1 = off
    seed: int = 0  # seeds the one torch.Generator used for every sampling step (deterministic runs)
    stop: tuple[str, ...] = ()  # stop strings: a row ends when its text contains one; the text is cut before it
    batch_size: int = 8  # rows decoded together
    chat: bool | None = None  # render prompts with the chat template; None = when the tokenizer has one
    system: str | None = None  # optional system message for every prompt
    progress: str = ""  # a progress bar with this label over the prompts ("" = none)
    top_k: int = 0  # keep the k highest scores before top-p (ties at the k-th kept, as transformers); 0 = off

    def problems(self, greedy_ok: bool = True) -> list[str]:
        """What is out of range, as ``--flag``-named phrases (empty when all is well); the one place the sampling
        options' ranges are declared, for ``sample``, ``evaluate`` and ``decode`` alike. ``greedy_ok``: whether
        temperature 0 (greedy) is allowed (not where KL is estimated from samples)."""
        out = []
        if not _int_at_least(self.max_new_tokens, 1):
            out.append(f"--max-new-tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not _int_at_least(self.batch_size, 1):
            out.append(f"--batch-size must be an integer >= 1, got {self.batch_size!r}")
        t = self.temperature
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0 or (t == 0 and not greedy_ok):
            out.append(f"--temperature must be {'>= 0 (0 = greedy)' if greedy_ok else '> 0'}, got {t!r}")
        if not isinstance(self.top_p, (int, float)) or not (0 < self.top_p <= 1):  # NaN fails too
            out.append(f"--top-p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not _int_at_least(self.top_k, 0):
            out.append(f"--top-k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not _int_at_least(self.seed, 0) or self.seed >= 2**63:
            out.append(f"--seed must be an integer in [0, 2^63), got {self.seed!r}")
        return out


def _int_at_least(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


@dataclass
class StepState:
    """What a ``logits_fn`` sees at each step."""

    step: int  # index of the token being chosen (0 = the first new token)
    logits: list[torch.Tensor]  # one [B, V] float32 next-token logits tensor per stream, in stream order
    generated: torch.Tensor  # [B, step] tokens chosen so far
    done: torch.Tensor  # [B] bool: rows that have ended (their choice is ignored)


LogitsFn = Callable[[StepState], torch.Tensor]


def render_prompts(tokenizer, prompts: Sequence[str], system: str | None = None,
                   chat: bool | None = None) -> tuple[list[str], bool]:
    """Prompt texts ready to continue, and whether they came from the chat template (for display: samplers use
    ``prompt_ids``, which renders in token space).

    With a template each prompt becomes a user turn (after an optional system turn) plus the generation
    prompt. A template that rejects the system role gets the system text prepended to the user turn.
    Without a template the system text is prepended to the prompt.
    """
    renderer = Renderer(tokenizer)
    texts = [renderer.sampling_text(p, system, chat, where=f"prompt {i + 1}") for i, p in enumerate(prompts)]
    return texts, renderer.uses_chat(chat)


def prompt_ids(tokenizer, prompts: Sequence, opts: GenOptions, system: str | None = None) -> list[list[int]]:
    """Each prompt's ids, from the training path's renderer (``data.render.Renderer.sampling_prompt``): the ids a
    trainer puts before a completion of the same prompt. ``system`` (else ``opts.system``) and ``opts.chat``
    apply as in ``render_prompts``; a prompt may also be a conversation (a list of messages)."""
    renderer = Renderer(tokenizer)
    system = system if system is not None else opts.system
    rows = [renderer.sampling_prompt(p, system, opts.chat, where=f"decode: prompt {i + 1}")
            for i, p in enumerate(prompts)]
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise UserError("decode", f"prompt {empty[0] + 1} is empty (no tokens)", "give every prompt some text")
    return rows


def encode_prompts(tokenizer, prompts: Sequence, opts: GenOptions, system: str | None = None,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask``, both [B, T], so every row continues at column T; the ids
    are ``prompt_ids``'s, straight from the renderer (no render-to-text-then-retokenize)."""
    return left_pad(prompt_ids(tokenizer, prompts, opts, system=system), pad_id(tokenizer), device)


def left_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu"):
    """[B, L] ids and attention mask, left-padded so every row continues at column L."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return eos_ids(tokenizer)[0] if eos_ids(tokenizer) else 0


def eos_ids(tokenizer, model=None) -> list[int]:
    """End-of-sequence ids from the tokenizer and the model's generation config (chat models list several)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
    return sorted(set(ids))


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def cache_kwarg(model) -> str:
    """The ``forward`` keyword that takes a KV cache: ``cache`` in transformers 5 (where ``past_key_values`` is
    deprecated), ``past_key_values`` before. A PEFT model is asked about the model it wraps."""
    import inspect

    import transformers

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        params = {}
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"


def new_cache(model):
    """An empty ``DynamicCache`` for ``model`` (built from its config, so sliding-window layers get theirs);
    the forward passes fill it in place."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    try:
        return DynamicCache(config=config) if config is not None else DynamicCache()
    except TypeError:  # transformers before DynamicCache(config=...)
        return DynamicCache()


def expand_cache(cache, repeats: int) -> None:
    """Repeat every row of a filled KV cache ``repeats`` times in place, row b becoming rows b·r … b·r + r − 1
    (``DynamicCache.batch_repeat_interleave``): continuations of one prefilled context share its computation."""
    if repeats == 1:
        return
    if not hasattr(cache, "batch_repeat_interleave"):
        raise TypeError(f"cannot expand a {type(cache).__name__} cache (no batch_repeat_interleave)")
    cache.batch_repeat_interleave(repeats)


class Stream:
    """One model reading one batch of left-padded contexts, with its own KV cache (a ``DynamicCache``).

    ``context`` wraps every forward pass; DeRa passes a PEFT model's ``disable_adapter`` to read the
    reference through the same weights while keeping a separate cache.
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 context: Callable[[], contextlib.AbstractContextManager] | None = None):
        self.model, self.context = model, context or contextlib.nullcontext
        self.input_ids, self.mask = input_ids, attention_mask  # [B, T] each
        self.cache = new_cache(model)
        self.cache_kw = cache_kwarg(model)
        self.keep_last = True

    def reserve(self, new_tokens: int) -> None:
        """Before ``prefill``: room in the cache for the context plus ``new_tokens``, so decoding writes each step's
        keys and values in place (``decode.kv_cache``) instead of copying the whole cache every step."""
        reserve_layers(self.cache, self.input_ids.shape[-1] + new_tokens)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        kw = {"logits_to_keep": 1} if self.keep_last else {}  # skip [B, T, V] logits at prefill
        kw[self.cache_kw] = self.cache
        with self.context():
            try:
                out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                                 **kw)
            except TypeError as e:  # an older architecture without logits_to_keep
                if "logits_to_keep" not in str(e):
                    raise
                self.keep_last = False
                return self._forward(ids, positions)
        returned = out.get(self.cache_kw)  # the same object, filled in place; a legacy model may return a new one
        if returned is not None:
            self.cache = returned
        return out.logits[:, -1, :].float()  # [B, V]

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        # Positions count real tokens only, so a left-padded row sees the same positions as unpadded.
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        return self._forward(self.input_ids, positions)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)  # [B, T+1]
        positions = self.mask.sum(-1, keepdim=True) - 1  # [B, 1]
        return self._forward(tokens[:, None], positions)

    def expand(self, repeats: int) -> None:
        """After ``prefill``: each of the B rows becomes ``repeats`` consecutive rows (B·r), cache included, so
        r continuations of a context continue from one prefill."""
        expand_cache(self.cache, repeats)
        self.input_ids = self.input_ids.repeat_interleave(repeats, dim=0)  # [B·r, T]
        self.mask = self.mask.repeat_interleave(repeats, dim=0)  # [B·r, T]


def top_p_mask(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """[B, V] bool: the smallest set of tokens whose softmax mass reaches ``top_p`` (always >= 1 token)."""
    if top_p >= 1.0:
        return torch.ones_like(scores, dtype=torch.bool)
    probs, order = torch.softmax(scores, dim=-1).sort(dim=-1, descending=True)  # [B, V] each
    before = probs.cumsum(-1) - probs  # mass strictly before each sorted token
    keep_sorted = before < top_p  # the first token always has before = 0
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def top_k_mask(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """[B, V] bool: scores at least the k-th highest (ties at the k-th are kept, as in transformers); 0 = all."""
    if top_k <= 0 or top_k >= scores.shape[-1]:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = scores.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
    return scores >= kth


def sampling_scores(scores: torch.Tensor, temperature: float, top_p: float, top_k: int = 0) -> torch.Tensor:
    """[B, V] logits of the sampling distribution (temperature > 0): scores / T, then top-k, then top-p on the
    top-k renormalised softmax (transformers' order); dropped tokens are −inf."""
    scaled = scores / temperature
    if top_k > 0:
        scaled = scaled.masked_fill(~top_k_mask(scaled, top_k), float("-inf"))
    if top_p < 1.0:  # (an all-True mask would only cost a [B, V] pass)
        scaled = scaled.masked_fill(~top_p_mask(scaled, top_p), float("-inf"))
    return scaled


def pick_with_logq(scores: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
                   top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] tokens, [B] their log q) from scores [B, V], filtering once: ``pick_tokens`` and ``token_logq`` in one."""
    if temperature <= 0:
        tokens = scores.argmax(-1)
        return tokens, torch.zeros(tokens.shape, dtype=scores.dtype, device=scores.device)  # a point mass
    logq = torch.log_softmax(sampling_scores(scores, temperature, top_p, top_k), dim=-1)  # [B, V]
    tokens = draw(logq.exp(), generator)
    return tokens, logq.gather(-1, tokens[:, None])[:, 0]


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """[B] one token per row of ``probs`` [B, V] (rows need not sum to exactly 1), by inverting the CDF at one
    uniform draw per row. Same law as ``torch.multinomial(probs, 1)``, which draws B·V exponentials per call (its
    exponential kernel was 17% of CPU sampling time on a 16k vocabulary); this draws B uniforms and does one cumsum.
    A token of probability 0 is never returned: the first index whose CDF exceeds u·total has a positive step."""
    cdf = probs.double().cumsum(-1)  # [B, V]; float64 so a tail token's step is not lost to rounding near 1
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype)  # [B, 1]
    tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]  # first index with cdf > u·total
    return tokens.clamp_(max=probs.shape[-1] - 1)  # (u·total < total, so only a rounding guard)


def pick_tokens(scores: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None, top_k: int = 0) -> torch.Tensor:
    """[B] next tokens from scores [B, V]: argmax at temperature 0, else top-k / top-p sampling at that
    temperature."""
    if temperature <= 0:
        return scores.argmax(-1)
    probs = torch.softmax(sampling_scores(scores, temperature, top_p, top_k), dim=-1)  # [B, V]
    return draw(probs, generator)


def token_logq(scores: torch.Tensor, tokens: torch.Tensor, temperature: float, top_p: float,
               top_k: int = 0) -> torch.Tensor:
    """[B] log-prob of ``tokens`` under the distribution ``pick_tokens`` drew them from (0 when greedy).

    Summed over a row this is log q(y | x) of the decoding policy itself, so KL(q ‖ π_ref) of any per-token
    decoding rule (DeRa, ARGS, Linear Alignment, plain sampling) is estimated like a trained policy's.
    """
    if temperature <= 0:
        return torch.zeros(tokens.shape, dtype=scores.dtype, device=scores.device)
    filtered = sampling_scores(scores, temperature, top_p, top_k)
    return torch.log_softmax(filtered, dim=-1).gather(-1, tokens[:, None])[:, 0]


def make_stop_fn(tokenizer, stop: Sequence[str]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``f(generated [B, t]) -> [B] bool``: rows whose recent text contains a stop string."""
    if not stop:
        return None
    # A stop string first appears in the newest tokens; a char is at most 4 byte-level tokens.
    window = 4 * max(len(s) for s in stop) + 2

    def stopped(generated: torch.Tensor) -> torch.Tensor:
        texts = tokenizer.batch_decode(generated[:, -window:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in stop) for t in texts], device=generated.device)

    return stopped


@torch.no_grad()
def token_loop(streams: list[Stream], logits_fn: LogitsFn, opts: GenOptions, eos: Sequence[int], pad: int,
               generator: torch.Generator | None = None, stop_fn=None,
               logq: torch.Tensor | None = None, step_logq: list[torch.Tensor] | None = None,
               all_done: Callable[[bool], bool] | None = None) -> torch.Tensor:
    """Decode up to ``opts.max_new_tokens`` tokens; returns generated ids [B, t] (pad after a row ends).

    ``logq`` [B], if given, accumulates each live row's log q(token) under the sampling distribution;
    ``step_logq``, if given, gets one [B] tensor per step (0 on ended rows): the per-token log q.
    ``all_done(local_done) -> bool`` decides when to stop early (default: when every local row has ended); with
    several processes that must run the same number of forward passes (FSDP) it is a collective "all ranks done".
    ``opts.top_k`` (when the options have one) restricts sampling to the k highest scores.
    """
    for s in streams:
        s.reserve(opts.max_new_tokens)
    logits = [s.prefill() for s in streams]
    batch, device = logits[0].shape[0], logits[0].device
    generated = torch.zeros((batch, 0), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    eos_t = torch.tensor(list(eos), dtype=torch.long, device=device)
    top_k = getattr(opts, "top_k", 0)
    for t in range(opts.max_new_tokens):
        scores = logits_fn(StepState(step=t, logits=logits, generated=generated, done=done))  # [B, V]
        tokens, lq = pick_with_logq(scores, opts.temperature, opts.top_p, generator, top_k)  # [B] each
        lq = torch.where(done, 0.0, lq)
        if logq is not None:
            logq += lq.to(logq)
        if step_logq is not None:
            step_logq.append(lq)
        tokens = torch.where(done, torch.full_like(tokens, pad), tokens)
        generated = torch.cat([generated, tokens[:, None]], dim=-1)
        done = done | torch.isin(tokens, eos_t)
        if stop_fn is not None:
            done = done | stop_fn(generated)
        if t + 1 == opts.max_new_tokens:
            break  # (no forward pass for logits nobody reads; every process stops here, no collective needed)
        local = bool(done.all())
        if all_done(local) if all_done is not None else local:
            break
        logits = [s.step(tokens) for s in streams]
    return generated


def finish_texts(tokenizer, generated: torch.Tensor, eos: Sequence[int],
                 stop: Sequence[str]) -> tuple[list[str], list[int]]:
    """Completion texts (cut at the first eos, then before the first stop string) and their token counts."""
    texts, counts = [], []
    eos_set = set(eos)
    for row in generated.tolist():
        cut = next((i for i, tok in enumerate(row) if tok in eos_set), len(row))
        text = tokenizer.decode(row[:cut], skip_special_tokens=True)
        texts.append(truncate_at_stop(text, stop))
        counts.append(cut)
    return texts, counts


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


@dataclass
class Decoded:
    """What ``decode_batches`` returns, one entry per prompt, in order."""

    texts: list[str]  # cut at the first eos, then before the first stop string
    counts: list[int]  # tokens before the first eos
    token_ids: list[list[int]]  # the drawn ids, ending with the eos id when the row emitted one
    logq: list[float]  # log q(token_ids | x) under the decoding rule's own sampling distribution

    def info(self) -> list[dict]:
        """Per-prompt info rows: token count, log q and the ids (for KL estimates against a reference)."""
        return [{"tokens": c, "logq": q, "token_ids": ids} for c, q, ids in zip(self.counts, self.logq, self.token_ids)]


def decode_batches(tokenizer, prompts: Sequence[str], opts: GenOptions,
                   make_streams: Callable[[list[str]], list[Stream]],
                   make_logits_fn: Callable[[list[str]], LogitsFn], model=None) -> Decoded:
    """Run ``token_loop`` over prompts in batches (with a progress bar when ``opts.progress`` names one).

    ``make_streams(batch_prompts)`` builds the streams, ``make_logits_fn(batch_prompts)`` the per-step rule.
    """
    from tqdm.auto import tqdm

    eos = eos_ids(tokenizer, model)
    eos_set = set(eos)
    pad = pad_id(tokenizer)
    stop_fn = make_stop_fn(tokenizer, opts.stop)
    generator = None
    out = Decoded([], [], [], [])
    bar = tqdm(total=len(prompts), desc=opts.progress, unit="seq", disable=not opts.progress, dynamic_ncols=True)
    for i in range(0, len(prompts), opts.batch_size):
        batch = list(prompts[i : i + opts.batch_size])
        streams = make_streams(batch)
        if generator is None:  # one generator for the whole run, on the model's device
            generator = torch.Generator(device=streams[0].input_ids.device).manual_seed(opts.seed)
        logq = torch.zeros(len(batch), dtype=torch.float64)
        generated = token_loop(streams, make_logits_fn(batch), opts, eos, pad, generator, stop_fn, logq)
        t, c = finish_texts(tokenizer, generated, eos, opts.stop)
        out.texts += t
        out.counts += c
        out.logq += logq.tolist()
        for row in generated.tolist():
            cut = next((k for k, tok in enumerate(row) if tok in eos_set), None)
            out.token_ids.append(row if cut is None else row[: cut + 1])
        bar.update(len(batch))
    bar.close()
    return out


def plain_streams(model, tokenizer, opts: GenOptions, system: str | None = None, context=None):
    """``make_streams`` for one model reading the rendered prompts."""

    def make(batch: list[str]) -> list[Stream]:
        ids, mask = encode_prompts(tokenizer, batch, opts, system=system, device=model_device(model))
        return [Stream(model, ids, mask, context)]

    return make


def sample(model, tokenizer, prompts: Sequence[str], opts: GenOptions) -> Decoded:
    """Plain decoding (sampling, or greedy at temperature 0) from one model."""
    return decode_batches(tokenizer, prompts, opts, plain_streams(model, tokenizer, opts),
                          lambda batch: lambda state: state.logits[0], model=model)
