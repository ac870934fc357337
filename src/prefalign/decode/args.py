"""ARGS: Alignment as Reward-Guided Search.

Each step takes the top-k next tokens v under the model and scores them
    score(v) = z(v) + w · r(x, y_<t ⊕ v)
(deeplearning-wisc/args ``argsearch.py``: ``rewards*weight + prescreen_logits``), then takes the argmax
(temperature 0) or samples softmax(score / T) over those k. Raw logits z give the same ranking and softmax as
log-probs, since they differ by a per-row constant. The reward is read on decoded text, so the cost is k
reward calls per live row per token, batched into one call per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from prefalign.decode.generate import GenOptions, LogitsFn, StepState, decode_batches, plain_streams


@dataclass
class ArgsConfig:
    k: int = field(default=40, metadata={"help": "top-k candidates per step scored by the reward"})
    w: float = field(default=1.0, metadata={"help": "reward weight; 0 = plain decoding restricted to top-k"})


def args_scores(logits: torch.Tensor, cand: torch.Tensor, cand_rewards: torch.Tensor, w: float) -> torch.Tensor:
    """Scores [B, V]: z(v) + w·r(v) on the candidates ``cand`` [B, k] (rewards [B, k]), −inf elsewhere."""
    scores = torch.full_like(logits, float("-inf"))
    return scores.scatter(-1, cand, logits.gather(-1, cand) + w * cand_rewards)


def args_logits_fn(tokenizer, prompts: list[str], reward, cfg: ArgsConfig, stats: dict) -> LogitsFn:
    def logits_fn(state: StepState) -> torch.Tensor:
        z = state.logits[0]  # [B, V]
        cand = z.topk(min(cfg.k, z.shape[-1]), dim=-1).indices  # [B, k]
        rewards = torch.zeros(cand.shape, dtype=z.dtype, device=z.device)  # [B, k]
        live = (~state.done).nonzero().flatten().tolist()
        if cfg.w != 0 and live:  # w = 0 needs no reward (and then reproduces plain decoding exactly)
            k = cand.shape[-1]
            prefix = state.generated[live].repeat_interleave(k, dim=0)  # [L*k, t]
            seqs = torch.cat([prefix, cand[live].reshape(-1, 1)], dim=-1)  # [L*k, t+1]
            # Decode prefix and candidate together, so byte-level merges across the boundary come out right.
            texts = tokenizer.batch_decode(seqs, skip_special_tokens=True)
            row_prompts = [prompts[i] for i in live for _ in range(k)]
            r = reward(row_prompts, texts).to(device=z.device, dtype=z.dtype).view(len(live), k)  # [L, k]
            rewards[live] = r
            stats["reward_calls"] += len(texts)
        return args_scores(z, cand, rewards, cfg.w)

    return logits_fn


def args_decode(model, tokenizer, prompts: Sequence[str], reward, opts: GenOptions,
                cfg: ArgsConfig) -> tuple[list[str], list[dict]]:
    stats = {"reward_calls": 0}
    out = decode_batches(tokenizer, prompts, opts, plain_streams(model, tokenizer, opts),
                         lambda batch: args_logits_fn(tokenizer, batch, reward, cfg, stats), model=model)
    texts = out.texts
    # Report the reward of what was finally written, so runs with different w compare directly.
    final = reward(list(prompts), texts) if len(texts) else torch.zeros(0)
    info = [{"reward": float(r), **d, "k": cfg.k, "w": cfg.w} for r, d in zip(final, out.info())]
    for d in info:
        d["reward_calls_total"] = stats["reward_calls"]
    return texts, info
