"""Scored samples → best-vs-worst preference pairs, the rows ``prefalign train`` reads.

For each prompt the highest-reward completion is ``chosen`` and the lowest-reward one ``rejected`` (the first of
equals, so the choice is deterministic). A prompt is dropped when its best and worst scores are tied (within
``min_gap``): the pair would carry no preference. Empty completions are never used.

The prompt is written as the row ``data.render.prompt_row`` builds, the one whose training ids are the ids the
sampler continued (``Renderer.sampling_prompt``), so ``prefalign train`` renders the prompt exactly as it was
rendered for sampling. Pairs from chat-template samples are conversations (a system turn first when there was one)::

    {"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", "content": "..."}],
     "rejected": [...], "score_chosen": 0.93, "score_rejected": -0.4}

and plain-text samples strings: ``system + "\n\n" + prompt`` (or just the prompt) + ``chosen`` is the text the
model saw and wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefalign.data.render import Renderer, prompt_row
from prefalign.errors import UserError


@dataclass
class LabelStats:
    prompts: int = 0
    pairs: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason → prompts dropped

    def line(self) -> str:
        drops = ", ".join(f"{v} {k}" for k, v in self.dropped.items() if v) or "none"
        return f"{self.pairs} pairs from {self.prompts} prompts (dropped: {drops})"


def best_worst(rewards: torch.Tensor, usable: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the best and the worst usable candidate along the last dim: rewards [P, n] -> ([P], [P]).

    The first of equal scores wins both ways (argmax/argmin of a tensor return the first occurrence).
    """
    r = rewards.float()
    usable = torch.isfinite(r) if usable is None else usable & torch.isfinite(r)
    best = r.masked_fill(~usable, float("-inf")).argmax(-1)
    worst = r.masked_fill(~usable, float("inf")).argmin(-1)
    return best, worst


def make_pairs(prompts: list[str], completions: list[list[str]], rewards: torch.Tensor, chat: bool,
               min_gap: float = 0.0, system: str | None = None, tokenizer=None) -> tuple[list[dict], LabelStats]:
    """Best-vs-worst pairs (see the module docstring); rewards [P, n]. With the sampler's ``tokenizer`` the prompt
    rows come from its ``Renderer.prompt_row``, which also folds the system text into the user turn when the chat
    template rejects a system role, as sampling did."""
    row_of = Renderer(tokenizer).prompt_row if tokenizer is not None else prompt_row
    if rewards.shape[0] != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but rewards for {rewards.shape[0]}")
    stats = LabelStats(prompts=len(prompts), dropped={"tied": 0, "fewer than 2 non-empty completions": 0})
    usable = torch.tensor([[bool(c.strip()) for c in row] for row in completions], dtype=torch.bool)
    if usable.numel() == 0:
        return [], stats
    best, worst = best_worst(rewards, usable)
    pairs = []
    for i, prompt in enumerate(prompts):
        if int(usable[i].sum()) < 2:
            stats.dropped["fewer than 2 non-empty completions"] += 1
            continue
        b, w = int(best[i]), int(worst[i])
        hi, lo = float(rewards[i, b]), float(rewards[i, w])
        if hi - lo <= min_gap or completions[i][b] == completions[i][w]:
            stats.dropped["tied"] += 1
            continue
        chosen, rejected = completions[i][b], completions[i][w]
        row = {"prompt": row_of(prompt, system, chat)}  # the prompt as sampling rendered it
        if chat:
            row.update(chosen=[{"role": "assistant", "content": chosen}],
                       rejected=[{"role": "assistant", "content": rejected}])
        else:
            row.update(chosen=chosen, rejected=rejected)
        row.update(score_chosen=round(hi, 6), score_rejected=round(lo, 6))
        pairs.append(row)
    stats.pairs = len(pairs)
    return pairs, stats


def pairs_from_rows(rows: list[dict], reward=None, min_gap: float = 0.0,
                    where: str = "samples") -> tuple[list[dict], LabelStats]:
    """Pairs from samples-file rows; scores with ``reward`` when given, else uses each row's ``rewards``."""
    prompts, completions, chats, systems = [], [], set(), set()
    for k, row in enumerate(rows, start=1):
        comps = row.get("completions") if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(comps, list) \
                or not all(isinstance(c, str) for c in comps):
            raise UserError(f"{where}:row {k}", "expected {\"prompt\": str, \"completions\": [str, ...]}",
                            "pass a file written by `prefalign sample`")
        if reward is None and not (isinstance(row.get("rewards"), list) and len(row["rewards"]) == len(comps)):
            raise UserError(f"{where}:row {k}", "has no 'rewards' (one per completion) and no --reward was given",
                            "pass --reward (vader, module:function or a reward-model folder)")
        if reward is None:
            _check_rewards(f"{where}:row {k}", row["rewards"])
        prompts.append(row["prompt"])
        completions.append(comps)
        chats.add(bool(row.get("chat", False)))
        systems.add(row.get("system"))
    if len(chats) > 1 or len(systems) > 1:
        raise UserError(where, "mixes chat-template and plain-text samples, or system prompts",
                        "label them separately")
    if not rows:
        raise UserError(where, "no rows", "pass a file written by `prefalign sample`")
    width = max(len(c) for c in completions)
    if reward is not None:
        from prefalign.reward import load_reward
        from prefalign.reward.base import expand_columns

        reward = load_reward(reward)
        flat = [(p, c) for p, cs in zip(prompts, completions) for c in cs]
        # The rows' other fields (an ``answer`` for ``math``) reach the reward as columns.
        columns = expand_columns(rows, [len(cs) for cs in completions])
        scores = reward([p for p, _ in flat], [c for _, c in flat], columns=columns).tolist()
        per_row, pos = [], 0
        for cs in completions:
            per_row.append(scores[pos : pos + len(cs)])
            pos += len(cs)
    else:
        per_row = [[float(x) for x in row["rewards"]] for row in rows]  # checked finite numbers
    # Rows may hold different numbers of completions: pad with NaN (never chosen, never rejected).
    r = torch.full((len(rows), width), float("nan"))
    comps_padded = []
    for i, (cs, sc) in enumerate(zip(completions, per_row)):
        r[i, : len(sc)] = torch.tensor(sc, dtype=torch.float32)
        comps_padded.append(cs + [""] * (width - len(cs)))
    return make_pairs(prompts, comps_padded, r, chats.pop(), min_gap=min_gap, system=systems.pop())


def _check_rewards(where: str, values: list) -> None:
    """Each of a samples row's ``rewards`` must be a finite JSON number (not a string, null, a boolean, NaN)."""
    import math

    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            got = "null" if v is None else f"a {type(v).__name__}" + (f" ({v[:20]!r})" if isinstance(v, str) else "")
            raise UserError(f"{where}: field 'rewards[{i}]'", f"expected a finite number, got {got}",
                            "write one number per completion (or pass --reward to score them again)")
        try:
            finite = math.isfinite(float(v))
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise UserError(f"{where}: field 'rewards[{i}]'", f"expected a finite number, got {str(v)[:40]}",
                            "write one number per completion (or pass --reward to score them again)")
