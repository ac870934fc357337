"""SEA: sample-efficient alignment by Thompson-sampled duels (Liu et al. 2024, "Sample-Efficient Alignment for LLMs",
arXiv 2411.01493; reference code sail-sg/oat — ``online/sea.py`` holds the pieces and what was verified where).

Per rollout, for each prompt, the G completions sampled from the current policy are the candidates:

1. their features φ [G, H]: the policy's final hidden state at the position that predicts each completion's last
   token (the state that has read the prompt and the whole completion but that last token), without gradient, from
   the method's rollout scoring (``wants_features``);
2. the reward ensemble scores them, r_e(φ) [E, G], unjudged candidates masked out, and the duel (y₁, y₂) is picked by
   Thompson sampling (``thompson_duel``; its member order drawn from a generator seeded by (seed, rollout, process),
   ``duel_seed``, so a resumed run picks the same duels);
3. the oracle — the configured reward — labels the duel: the higher reward wins; ties, unjudged sides and clashes
   (y₁ = y₂) give no label and no pair;
4. the labelled duels of every process join the ensemble's replay buffer (the same on every process), and the
   ensemble takes ``rm_sgd_steps`` Adam steps on batches drawn from it (``EnsembleLearner.learn``, the draws seeded by
   (seed, rollout)), so every process keeps the same ensemble;
5. the policy is trained on the labelled duels (winner = chosen) with the pairwise objective ``loss`` (``dpo``,
   ``ipo``, ``slic``, …, its β the config's ``beta``), exactly as online DPO trains its best-vs-worst pairs
   (``online/pairs.py``).

The ensemble, its Adam state, the replay buffer and the query count are checkpointed (``state_tensors``), so
``--resume`` is exact. Metrics: ``sea/ensemble_loss`` (the last SGD step's loss), ``sea/agreement`` (share of this
rollout's labelled duels where the ensemble mean, before learning from them, already ranked the oracle's winner
first), ``sea/duel_fraction`` (prompts whose duel got a label), ``sea/clash_fraction``, ``sea/queries`` (N).

Defaults are oat's (``oat/args.py``): 20 members of two hidden layers of 128, λ = 0.5, Adam lr 1e-3 with L2 5e-5,
5 SGD steps per round on batches of 128 (``train_bs``), ``enn_max_try`` −1 = every member. ``duel: passive``
(oat's ``EnnPassive``: candidates 0 and 1, the ensemble still learns) and ``duel: uniform`` are the baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from prefalign.online.algos.base import OnlineAlgorithm, OnlineNeeds, Rollout, register

DUELS = ("thompson", "passive", "uniform")


def duel_seed(seed: int, rollout: int, rank: int = 0) -> int:
    """The seed of the duel choice of rollout ``rollout`` on process ``rank``."""
    return ((seed * 1_000_033 + rollout) * 1013 + rank) % 2**63


def replay_seed(seed: int, rollout: int) -> int:
    """The seed of the ensemble's replay draws of rollout ``rollout`` (the same on every process)."""
    return ((seed * 1_000_037 + rollout) * 1019 + 7) % 2**63


def masked_scores(scores: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Ensemble rewards [E, P, G] with the candidates the oracle cannot judge (reward NaN, [P, G]) at −inf."""
    return scores.masked_fill(torch.isnan(rewards)[None], float("-inf"))


@register
@dataclass
class SEA(OnlineAlgorithm):
    name = "sea"
    loss_type = "sequence"  # one unit per pair, as online_dpo
    wants_features: ClassVar[bool] = True  # hook (online/hooks.py): last-token hidden states in the rollout

    loss: str = "dpo"  # the pairwise objective trained on the labelled duels
    loss_args: dict = field(default_factory=dict)
    beta: float = 0.1
    duel: str = "thompson"  # thompson (SEA) | passive | uniform
    num_ensemble: int = 20
    rm_hidden_dim: int = 128  # 0: linear heads
    enn_lambda: float = 0.5
    rm_lr: float = 1e-3
    rm_wd: float = 5e-5
    rm_sgd_steps: int = 5
    rm_batch_size: int = 128
    rm_buffer_size: int = 0  # 0: keep every labelled duel (prefalign's cap on the replay buffer otherwise)
    enn_max_try: int = -1  # −1: every member
    allow_second_best: bool = False
    random_on_clash: bool = False

    def __post_init__(self):
        self.learner = None
        self.seed = 0

    def needs(self) -> OnlineNeeds:
        return OnlineNeeds(reference=False, pairs=True)  # the pairwise objective says whether it needs one

    def validate(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"sea: beta must be > 0 (the pairwise objective's β), got {self.beta}")
        if self.duel not in DUELS:
            raise ValueError(f"sea: duel must be one of {', '.join(DUELS)}, got '{self.duel}'")
        for name in ("num_ensemble", "rm_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"sea: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("rm_hidden_dim", "rm_sgd_steps", "rm_buffer_size", "rm_wd", "enn_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"sea: {name} must be >= 0, got {getattr(self, name)}")
        if not self.rm_lr > 0:
            raise ValueError(f"sea: rm_lr must be > 0, got {self.rm_lr}")
        if self.enn_max_try == 0 or self.enn_max_try < -1 or self.enn_max_try > self.num_ensemble:
            raise ValueError(f"sea: enn_max_try must be -1 or in [1, num_ensemble], got {self.enn_max_try}")

    # --- hooks (online/hooks.py) ------------------------------------------------------------------------------
    def setup(self, method) -> None:
        if method.cfg.num_generations < 2:
            from prefalign.errors import UserError

            raise UserError("config", "sea duels two of each prompt's completions: num_generations must be >= 2",
                            "set num_generations: 2 or more (oat samples several candidates per prompt)")
        self.init(method.model.config.hidden_size, method.cfg.seed)

    def init(self, in_dim: int, seed: int) -> None:
        """The ensemble (seeded by ``seed``) on features of size ``in_dim``."""
        from prefalign.online.sea import EnsembleLearner

        self.seed = seed
        self.learner = EnsembleLearner(in_dim, self.num_ensemble, self.rm_hidden_dim, self.rm_lr, self.rm_wd,
                                       self.enn_lambda, self.rm_sgd_steps, self.rm_batch_size, self.rm_buffer_size,
                                       seed=seed)

    def state(self) -> dict:
        return {"num_queries": self.learner.num_queries if self.learner is not None else 0}

    def load_state(self, state: dict) -> None:
        if self.learner is not None:
            self.learner.num_queries = int(state.get("num_queries", self.learner.num_queries))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.learner.state_tensors() if self.learner is not None else {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            self.learner.load_state_tensors(tensors)

    # --- the rollout --------------------------------------------------------------------------------------------
    def pick(self, scores: torch.Tensor, rewards: torch.Tensor, generator: torch.Generator):
        """The duel per prompt from ensemble rewards [E, P, G] (unjudged candidates masked) → ([P], [P])."""
        from prefalign.online.sea import passive_duel, thompson_duel, uniform_duel

        P, G = rewards.shape
        if self.duel == "passive":
            return passive_duel(P)
        if self.duel == "uniform":
            return uniform_duel(P, G, generator)
        max_try = None if self.enn_max_try == -1 else self.enn_max_try
        return thompson_duel(masked_scores(scores, rewards), generator, max_try, self.allow_second_best,
                             self.random_on_clash)

    def advantages(self, ro: Rollout) -> dict:
        from prefalign.online.sea import label_duels

        features = getattr(ro, "features", None)
        if features is None or self.learner is None:
            raise ValueError("sea needs the rollout's last-token features (method: online provides them) and an "
                             "ensemble (setup)")
        r, rank, world = getattr(ro, "index", 0), getattr(ro, "rank", 0), getattr(ro, "world", 1)
        N = ro.rewards.shape[0]
        P = int(torch.unique_consecutive(ro.group).numel())
        G = N // P
        if G < 2:
            raise ValueError("sea needs num_generations >= 2 (a duel is two candidates)")
        phi = features.float().reshape(P, G, -1)  # [P, G, H]
        rew = ro.rewards.float().reshape(P, G)
        scores = self.learner.rewards(phi)  # [E, P, G]
        first, second = self.pick(scores, rew, torch.Generator().manual_seed(duel_seed(self.seed, r, rank)))
        won, lost, ok = label_duels(rew, first, second)
        rows = torch.arange(P)
        # Before learning from them: does the ensemble mean already rank the oracle's winner first?
        margin = (scores[:, rows, won] - scores[:, rows, lost]).mean(0)  # [P]
        agree = ro.reduce(torch.tensor([float((margin[ok] > 0).sum()), float(ok.sum()), float((first == second).sum()),
                                        float(P)], dtype=torch.float64))
        self._add_global(phi[rows[ok], won[ok]], phi[rows[ok], lost[ok]], rank, world, ro.reduce)
        loss = self.learner.learn(torch.Generator().manual_seed(replay_seed(self.seed, r)))
        base = rows * G
        out = {"advantages": torch.zeros_like(ro.rewards), "pair_chosen": base + won, "pair_rejected": base + lost,
               "pair_valid": ok, "duel_first": first, "duel_second": second,
               "sea/duel_fraction": float(agree[1] / agree[3].clamp(min=1)),
               "sea/clash_fraction": float(agree[2] / agree[3].clamp(min=1)),
               "sea/queries": float(self.learner.num_queries)}
        if agree[1] > 0:
            out["sea/agreement"] = float(agree[0] / agree[1])
        if loss is not None:
            out["sea/ensemble_loss"] = loss
        return out

    def _add_global(self, won: torch.Tensor, lost: torch.Tensor, rank: int, world: int, reduce) -> None:
        """Every process's labelled duels, in process order, into the (identical) replay buffer of each process."""
        if world == 1:
            self.learner.add(won, lost)
            return
        counts = torch.zeros(world, dtype=torch.float64)
        counts[rank] = len(won)
        counts = reduce(counts).long()
        H = won.shape[-1]
        slab = torch.zeros(world, int(counts.max()), 2, H, dtype=torch.float32)
        slab[rank, : len(won), 0], slab[rank, : len(won), 1] = won, lost
        slab = reduce(slab)  # a sum of zeros and one process's rows: exact
        every = torch.cat([slab[p, : int(counts[p])] for p in range(world)])  # [Q, 2, H]
        self.learner.add(every[:, 0], every[:, 1])
