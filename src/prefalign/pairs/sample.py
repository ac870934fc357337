"""n completions per prompt from a causal LM, batched and seeded, keeping the sampled token ids.

Built on ``prefalign.decode.generate`` (left-padded prompts rendered with the chat template, KV-cached token loop,
one seeded ``torch.Generator`` for the whole run), so samples here and in ``prefalign decode`` come from the same
code. What this adds: n samples per prompt, a progress bar, and the sampled ids (cut after the first EOS), which
``prefalign evaluate`` needs to score the exact sequences the policy drew when it estimates KL.

Rows of a samples file (``prefalign sample``)::

    {"prompt": "Write one sentence about rain.", "completions": ["...", ...], "chat": true,
     "rewards": [0.4, ...]}           # rewards only when a reward was given
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from prefalign.data.render import Renderer
from prefalign.decode.generate import GenOptions, decode_batches, plain_streams


@dataclass
class Samples:
    """n completions for each of P prompts; prompt i owns completions[i][0..n-1]."""

    prompts: list[str]
    completions: list[list[str]]  # [P][n]
    token_ids: list[list[list[int]]]  # [P][n] sampled ids, ending with the EOS id when the model emitted one
    chat: bool  # prompts were rendered with the chat template
    rewards: torch.Tensor | None = None  # [P, n] when scored
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.completions[0]) if self.completions else 0

    def lengths(self) -> torch.Tensor:
        """[P, n] completion lengths in tokens (EOS included)."""
        return torch.tensor([[len(t) for t in row] for row in self.token_ids], dtype=torch.float32)

    def rows(self) -> list[dict]:
        """JSONL rows for a samples file."""
        out = []
        for i, (p, comps) in enumerate(zip(self.prompts, self.completions)):
            row = {"prompt": p, "completions": comps, "chat": self.chat}
            if self.meta.get("system") is not None:
                row["system"] = self.meta["system"]
            if self.rewards is not None:
                row["rewards"] = [round(float(r), 6) for r in self.rewards[i]]
            out.append(row)
        return out


def sample_ids(model, tokenizer, prompts: Sequence[str], opts: GenOptions, desc: str = "sample",
               progress: bool = True, context=None) -> tuple[list[str], list[list[int]]]:
    """One completion per prompt: texts and sampled token ids, in prompt order (stop strings not supported).

    ``decode.generate.sample`` (one generator seeded with ``opts.seed`` for the whole run) with a progress bar;
    a row's ids end at its first EOS, inclusive.
    ``context``: wraps every forward pass (e.g. a PEFT model's ``disable_adapter`` to sample the reference).
    """
    if opts.stop:
        raise ValueError("sample_ids does not support stop strings (the ids would not match the text)")
    model.eval()
    opts = dataclasses.replace(opts, progress=desc if progress else "")
    out = decode_batches(tokenizer, prompts, opts, plain_streams(model, tokenizer, opts, context=context),
                         lambda batch: lambda state: state.logits[0], model=model)
    return out.texts, out.token_ids


def sample_completions(model, tokenizer, prompts: Sequence[str], n: int, opts: GenOptions, desc: str = "sample",
                       progress: bool = True, context=None) -> Samples:
    """``n`` completions per prompt (rows grouped by prompt, so a batch shares few prompt lengths)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prompts = list(prompts)
    repeated = [p for p in prompts for _ in range(n)]  # prompt i owns rows i*n .. i*n+n-1
    texts, ids = sample_ids(model, tokenizer, repeated, opts, desc=desc, progress=progress, context=context)
    chat = Renderer(tokenizer).uses_chat(opts.chat)
    return Samples(prompts, [texts[i * n : (i + 1) * n] for i in range(len(prompts))],
                   [ids[i * n : (i + 1) * n] for i in range(len(prompts))], chat,
                   meta={"n": n, "max_new_tokens": opts.max_new_tokens, "temperature": opts.temperature,
                         "top_p": opts.top_p, "seed": opts.seed, "system": opts.system})


def score_samples(samples: Samples, reward, desc: str = "reward") -> torch.Tensor:
    """Score every completion with ``reward(prompts, completions)``; sets and returns ``samples.rewards`` [P, n].

    ``reward``: anything ``prefalign.reward.load_reward`` takes (a spec string, a callable, a ``RewardFn``).
    """
    from prefalign.reward import load_reward

    reward = load_reward(reward)
    n = samples.n
    flat_p = [p for p in samples.prompts for _ in range(n)]
    flat_c = [c for row in samples.completions for c in row]
    samples.rewards = reward(flat_p, flat_c).reshape(len(samples.prompts), n) if flat_c else torch.zeros(0, n)
    return samples.rewards
