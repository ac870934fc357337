"""The config fields of online RL (``method: online``), part of ``TrainConfig`` (declared like every field:
help, group, range, checked in one place). The algorithm itself is ``objective`` (``grpo``, ``rloo``, …) with its
hyperparameters in ``objective_args``; ``beta`` is its KL coefficient (0: no KL term and no reference model)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefalign.train.fields import _m


@dataclass
class OnlineFields:
    reward: str | list | None = field(default=None, metadata=_m(
        "online", "what scores completions (as `prefalign label --reward`): vader, module:function, a reward-model "
        "folder, a verifiable reward (math, exact, regex:PATTERN, …), a weighted sum such as "
        "'0.8*math + 0.2*regex:^Answer', or a list of specs summed with reward_weights"))
    reward_weights: list | None = field(default=None, metadata=_m(
        "online", "one weight per reward of a list; null: 1.0 each"))
    num_generations: int = field(default=8, metadata=_m(
        "online", "completions sampled per prompt (G, >= 1; group baselines need >= 2)", range=">= 1"))
    max_new_tokens: int = field(default=64, metadata=_m(
        "online", "most new tokens per completion (>= 1); a completion without EOS by then is truncated",
        range=">= 1"))
    temperature: float = field(default=1.0, metadata=_m(
        "online", "sampling temperature (> 0); the update scores samples under the same tempered distribution",
        range="> 0"))
    top_p: float = field(default=1.0, metadata=_m(
        "online", "nucleus sampling threshold, in (0, 1]; 1: off", range="(0, 1]"))
    top_k: int = field(default=0, metadata=_m(
        "online", "sample among the k most likely tokens (>= 0); 0: off", range=">= 0"))
    num_iterations: int = field(default=1, metadata=_m(
        "online", "updates per rollout (μ >= 1); μ > 1 uses importance ratios against the sampling policy",
        range=">= 1"))
    rollout_kv_cache: str = field(default="grouped", metadata=_m(
        "online", "KV cache while sampling: grouped: a prompt's G completions read one copy of its keys and values "
        "(full-attention models read by sdpa or eager; others fall back to in_place); in_place: the prompt's cache "
        "repeated G times, new entries written in place; dynamic: transformers' DynamicCache (as generate). Same "
        "samples from all three", ("grouped", "in_place", "dynamic")))
    completions_per_row: int = field(default=0, metadata=_m(
        "online", "layout shared_prefix: completions after each copy of their prompt in one row of the update "
        "(>= 0); 0: chosen per micro-batch by a FLOP estimate (the whole group after long prompts, one per row "
        "after short prompts with long completions); the log-probs are the same for every value",
        range=">= 0"))
    sample_log_steps: int = field(default=10, metadata=_m(
        "online", "every N rollouts (>= 0), write the sampled completions with their rewards to samples.jsonl "
        "(0: never)",
        range=">= 0"))
