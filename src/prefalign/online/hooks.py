"""Optional hooks an online algorithm may implement beyond the contract of ``algos/base.py``, and what the method
(``online/method.py``) does with them. An algorithm without any of them is trained exactly as before.

- ``wants_features: ClassVar[bool]``: the rollout scoring (no gradient) also asks the log-prob path for the policy's
  final hidden state (the registered ``hidden`` feature of ``logps.py``) and gathers it at each sequence's last
  completion token — the state at the position that predicts that token — into ``RolloutPlus.features`` [N, H]
  (fp32, CPU). SEA's candidate features.
- ``setup(method)``: called once at the end of the method's setup (policy built, on its device): build running
  state (SEA's ensemble; anything seeded reads ``method.cfg.seed``).
- ``judge(rewards [N], group [N]) -> [N]``: the scores the algorithm trains on, from the configured rewards (NaN:
  not judged). They replace the rewards in ``Rollout.rewards`` and ``PolicyBatch.rewards``; the configured rewards
  are still what is logged (``reward``, samples.jsonl). ONPO: in-group Bradley–Terry win rates.
- ``reference_role() -> "initial" | "secondary"``: what the reference slot holds. ``initial`` (the default) is the
  frozen initial policy of ``prefalign.reference``; ``secondary`` is an iterate the algorithm moves itself
  (``Secondary``, below: ONPO's π̂_t).
- ``after_update(method, step)``: after every optimizer step (the engine calls ``method.after_step(step)``, step
  0-based); ``method.mu`` tells whether the step ended its rollout.
- ``state_tensors() -> dict`` / ``load_state_tensors(dict)``: tensor state, checkpointed in ``method.safetensors``
  under ``algorithm/`` (a ``Secondary`` reference's under ``reference/``), so ``--resume`` is exact.

Every ``advantages()`` output that is a plain float (not a tensor) is logged as a metric of the rollout.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from prefalign.online.algos.base import Rollout


@dataclass
class RolloutPlus(Rollout):
    """A ``Rollout`` with what the hooks add: the features asked for, and where the rollout is in the run."""

    features: torch.Tensor | None = None  # [N, H] last-token hidden states (``wants_features``)
    index: int = 0  # the rollout number r (steps r·μ … r·μ + μ − 1)
    seed: int = 0  # the config's seed
    rank: int = 0  # this process
    world: int = 1  # the number of processes


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[S, T, H] per-token states, [S, T] completion mask → [S, H] the state at each sequence's last completion slot
    (slot 0 for an empty completion)."""
    last = (mask.sum(-1) - 1).clamp(min=0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def role(algo) -> str:
    fn = getattr(algo, "reference_role", None)
    return fn() if fn is not None else "initial"


class Secondary:
    """The reference slot as an iterate the algorithm moves (ONPO's secondary π̂_t), starting at the initial policy.

    ``copy``: a second model (a deep copy of the policy at setup); ``adapter`` (LoRA): a copy of the adapter weights
    only, swapped into the policy for the reference pass and swapped back bit for bit. Its log-probs are taken like
    the policy's (the sampling temperature, the same autocast), so at π̂ = π they are the policy's exactly.
    ``tensors()`` gives (secondary, policy) tensor lists for an update such as ``sync_secondary_``."""

    live = True

    def __init__(self, method, mode: str):
        from prefalign.errors import UserError
        from prefalign.train import distributed as dist

        if dist.sharding_mode(method.cfg, method.engine.acc) == "fsdp":
            raise UserError("config", f"online algorithm '{method.algo.name}' keeps a secondary iterate, which is not "
                            "built for sharding: fsdp", "use sharding: ddp (or one process)")
        self.method, self.mode, self.kind = method, mode, f"secondary-{mode}"
        policy = method.model
        self.names = [n for n, p in policy.named_parameters() if p.requires_grad]  # what moves
        self.policy_params = [p for n, p in policy.named_parameters() if p.requires_grad]
        if mode == "copy":
            self.model = copy.deepcopy(policy).eval()
            self.model.requires_grad_(False)
            own = dict(self.model.named_parameters())
            self.params = [own[n] for n in self.names]
        else:
            self.model = None
            self.params = [p.detach().clone() for p in self.policy_params]

    @torch.no_grad()
    def logps(self, batch, policy=None, token_level: bool = False, features=(), score=None, temperature=None):
        # ``temperature`` is the sampling temperature, which this reference always scores at (m.cfg.temperature)
        from prefalign.reference import RefLogps

        m = self.method
        if self.mode == "copy":
            from prefalign.logps import sequence_logps
            from prefalign.train import distributed as dist

            with dist.autocast(m.cfg, m.engine.sharding, m.engine.acc.device):
                out = sequence_logps(self.model, batch, m.cfg.log_prob_chunk_size, features=features,
                                     temperature=m.cfg.temperature)
        else:
            with self._swapped():
                out = (score or m._ref_score)(batch, chunk_size=m.cfg.log_prob_chunk_size, features=features)
        return RefLogps(out.seq_logps, out.token_logps if token_level else None, out.features)

    @contextlib.contextmanager
    def _swapped(self):
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.policy_params]
            for p, s in zip(self.policy_params, self.params):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.policy_params, saved):
                    p.copy_(s)

    def tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.params, self.policy_params

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in zip(self.names, self.params)}

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for n, p in zip(self.names, self.params):
            if n in tensors:
                p.copy_(tensors[n].to(p.device, p.dtype))


def build_reference(method):
    """The reference of the method: a ``Secondary`` for ``reference_role() == "secondary"``, else None (the method
    builds ``prefalign.reference.Reference`` as before)."""
    from prefalign.errors import UserError

    if role(method.algo) != "secondary":
        return None
    cfg = method.cfg
    if cfg.reference == "adapter" and not cfg.lora:
        raise UserError("config", "reference: adapter needs a LoRA policy", "set lora: true, or reference: copy")
    return Secondary(method, "adapter" if cfg.lora and cfg.reference != "copy" else "copy")


def collect_tensors(method) -> dict[str, torch.Tensor]:
    """The algorithm's and a secondary reference's tensor state, prefixed for ``method.safetensors``."""
    out = {}
    fn = getattr(method.algo, "state_tensors", None)
    if fn is not None:
        out.update({f"algorithm/{k}": v.contiguous() for k, v in fn().items()})
    if isinstance(getattr(method, "reference", None), Secondary):
        out.update({f"reference/{k}": v.contiguous() for k, v in method.reference.state_tensors().items()})
    return out


def restore_tensors(method, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hand the prefixed state back to its owners; returns the rest (the rollout buffer)."""
    own = {"algorithm/": {}, "reference/": {}}
    rest = {}
    for k, v in tensors.items():
        prefix = next((p for p in own if k.startswith(p)), None)
        if prefix is None:
            rest[k] = v
        else:
            own[prefix][k[len(prefix):]] = v
    fn = getattr(method.algo, "load_state_tensors", None)
    if fn is not None and own["algorithm/"]:
        fn(own["algorithm/"])
    if isinstance(getattr(method, "reference", None), Secondary) and own["reference/"]:
        method.reference.load_state_tensors(own["reference/"])
    return rest
