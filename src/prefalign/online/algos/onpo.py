"""ONPO: optimistic online mirror descent for general preferences (Zhang et al. 2025, "Improving LLM General
Preference Alignment via Optimistic Online Mirror Descent", arXiv 2502.16852).

The game: two policies, payoff P(π ≻ π′) = E_{y∼π, y′∼π′} P(y ≻ y′) for a pairwise judge with P(y≻y′) + P(y′≻y) = 1.
Self-play with the gain ℓ_t(y) = P(y ≻ π_t) (a [K] vector; ``win_gain``) and optimistic OMD on the simplex with the
entropy mirror map (optimistic hedge):

    π_t      ∝ π̂_t · exp(η ℓ_{t−1})          (play: the secondary iterate, pushed by the *predicted* gain)
    π̂_{t+1}  ∝ π̂_t · exp(η ℓ_t)              (the secondary iterate takes the observed gain)

equivalently π_{t+1} ∝ π_t · exp(η(2ℓ_t − ℓ_{t−1})). The average iterate's duality gap max_y P(y ≻ π̄_T) −
min_y P(π̄_T ≻ y) is O(1/T); plain multiplicative weights (π_{t+1} ∝ π_t e^{ηℓ_t}) gets O(1/√T) with η ∝ 1/√T
(``tests/theory/test_online_catalogue.py`` measures both slopes on rock–paper–scissors).

LLM form (registered ``"onpo"``, trainable by ``method: online``; UNVERIFIED against the paper's practical loss, which
was not readable here — this is prefalign's own derivation, exact for a tabular policy). Because log π_{t+1} − log π̂_t = 2η ℓ_t + c, one iteration
is a squared-loss regression that never estimates P(y ≻ π_t) beyond one noisy label per sample:

    h(y)  = log π_θ(y) − log π̂_t(y)          (the reference slot holds the secondary iterate π̂_t)
    L     = ½ Σ_i [ (h_i − h̄_g) − 2η (s_i − s̄_g) ]²      over the G samples of each group g, y_i ∼ π_t

with s_i any unbiased estimate of P(y_i ≻ π_t) given y_i (a round-robin win rate against the group's other samples,
``round_robin``; or a single duel label). Its population minimiser is h = 2ηℓ_t + c, i.e. π_θ = π_{t+1}; centring
by the group means is the all-pairs regression Σ_{i<j}((h_i−h_j) − 2η(s_i−s_j))² divided by G. After each
iteration the method sets the reference to the normalised geometric mean π̂_{t+1} ∝ (π̂_t·π_{t+1})^{1/2}: exact
logit averaging for a tabular policy, and parameter averaging θ̂ ← ½(θ̂ + θ) (``sync_secondary_``, TR-DPO's soft
update with α = ½) as the approximation for a network. The paper's KL-to-π_ref regulariser is not included.

Wiring (the hooks of ``online/hooks.py``):

- ``judge``: the configured reward as a Bradley–Terry judge inside each group, P(y_i ≻ y_j) = σ(r_i − r_j), and
  s_i = mean_{j≠i} σ(r_i − r_j) over the group's other judged samples (``bt_win_rates``, = ``round_robin`` of that
  judge's matrix): the rewards the loss trains on. The configured reward is still what is logged as ``reward``;
  ``onpo/win_rate_min|max|std`` describe the estimates.
- ``reference_role() == "secondary"``: the reference slot holds π̂_t, starting at the initial policy — a second
  model, or with LoRA a copy of the adapter weights only (``hooks.Secondary``), checkpointed with the run.
- ``after_update``: after the last of the μ = ``num_iterations`` optimizer steps of each rollout (so after every
  step for μ = 1) — the end of an iteration — ``sync_secondary_``(θ̂, θ). The rollout's ``ref_logp`` is computed once
  at sampling time under π̂_t, so the secondary must not move inside an iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.online.algos.base import OnlineAlgorithm, OnlineNeeds, PolicyBatch, Rollout, register


# -- tabular game rules (pure functions; π as probabilities [..., K], P as [..., K, K]) -------------------------
def win_gain(pref: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """ℓ(y) = P(y ≻ π) = Σ_{y′} P(y ≻ y′) π(y′): [K, K] × [K] → [K]."""
    return pref @ pi


def duality_gap(pref: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """max_{π′} P(π′ ≻ π) − min_{π′} P(π ≻ π′) (≥ 0, 0 exactly at a Nash policy of the symmetric game)."""
    return (pref @ pi).max() - (pi @ pref).min()


def _normalise(log_w: torch.Tensor) -> torch.Tensor:
    return log_w - torch.logsumexp(log_w, -1, keepdim=True)


def oomd_step(log_hat: torch.Tensor, gain: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimistic step: given log π̂_t and the observed gain ℓ_t, return (log π_{t+1}, log π̂_{t+1}).

    π̂_{t+1} ∝ π̂_t e^{ηℓ_t}; π_{t+1} ∝ π̂_{t+1} e^{ηℓ_t} (the prediction for ℓ_{t+1} is ℓ_t). [K] → ([K], [K]).
    """
    log_hat_next = _normalise(log_hat + eta * gain)
    return _normalise(log_hat_next + eta * gain), log_hat_next


def oomd(pref: torch.Tensor, steps: int, eta: float, log_pi0: torch.Tensor | None = None) -> torch.Tensor:
    """The played iterates π_1..π_T of optimistic hedge in self-play, [T, K] (π_1 = π̂_1 = π0, uniform by default)."""
    K = pref.shape[-1]
    log_hat = _normalise(torch.zeros(K, dtype=pref.dtype)) if log_pi0 is None else _normalise(log_pi0)
    log_pi, out = log_hat.clone(), []
    for _ in range(steps):
        out.append(log_pi.exp())
        log_pi, log_hat = oomd_step(log_hat, win_gain(pref, log_pi.exp()), eta)
    return torch.stack(out)


def mwu(pref: torch.Tensor, steps: int, eta: float, log_pi0: torch.Tensor | None = None) -> torch.Tensor:
    """Plain multiplicative weights (online mirror descent, no optimism) in self-play: π_{t+1} ∝ π_t e^{ηℓ_t}, [T, K]."""
    K = pref.shape[-1]
    log_pi = _normalise(torch.zeros(K, dtype=pref.dtype)) if log_pi0 is None else _normalise(log_pi0)
    out = []
    for _ in range(steps):
        out.append(log_pi.exp())
        log_pi = _normalise(log_pi + eta * win_gain(pref, log_pi.exp()))
    return torch.stack(out)


# -- LLM form ----------------------------------------------------------------------------------------------
def _group_mean(x: torch.Tensor, group: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Mean of x over the ``ok`` members of each sequence's group, broadcast back: [N] → [N]."""
    _, idx = torch.unique(group, return_inverse=True)
    n_groups = int(idx.max()) + 1 if idx.numel() else 0
    xz = torch.where(ok, x, torch.zeros_like(x))
    total = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add(0, idx, xz)
    count = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, idx, ok.to(x.dtype))
    return (total / count.clamp(min=1))[idx]


def round_robin(pref: torch.Tensor) -> torch.Tensor:
    """In-group win rates s_i = mean_{j≠i} P(y_i ≻ y_j) from a judge's [P, G, G] matrix (diagonal ignored) → [P·G],
    an unbiased estimate of P(y_i ≻ π_t) given y_i when the G samples are drawn independently from π_t."""
    P, G, _ = pref.shape
    off = ~torch.eye(G, dtype=torch.bool, device=pref.device)
    return ((pref * off).sum(-1) / max(G - 1, 1)).reshape(P * G)


def bt_win_rates(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """In-group win rates under the Bradley–Terry judge P(y_i ≻ y_j) = σ(r_i − r_j): s_i = mean of σ(r_i − r_j) over
    the other *judged* members j of i's group, [N] → [N]; NaN where r_i is NaN or i is its group's only judged member.
    With every member judged it is ``round_robin`` of the [P, G, G] matrix σ(r_i − r_j)."""
    ok = ~torch.isnan(rewards)
    r = torch.where(ok, rewards, torch.zeros_like(rewards))
    pair = (group[:, None] == group[None, :]) & ok[:, None] & ok[None, :]
    pair &= ~torch.eye(len(r), dtype=torch.bool, device=r.device)
    pref = torch.sigmoid(r[:, None] - r[None, :])  # [N, N]
    count = pair.sum(-1)
    s = torch.where(pair, pref, torch.zeros_like(pref)).sum(-1) / count.clamp(min=1).to(r.dtype)
    return torch.where(ok & (count > 0), s, torch.full_like(s, float("nan")))


@torch.no_grad()
def sync_secondary_(secondary: list[torch.Tensor], policy: list[torch.Tensor]) -> None:
    """θ̂ ← ½(θ̂ + θ), in place: the secondary iterate after an ONPO iteration (exact for tabular logits)."""
    for s, p in zip(secondary, policy, strict=True):
        s.mul_(0.5).add_(p.detach().to(s.dtype), alpha=0.5)


@register
@dataclass
class ONPO(OnlineAlgorithm):
    name = "onpo"

    eta: float = 1.0  # OMD step size in log-probability units (no paper default was verified; prefalign's choice)
    loss_type = "sequence"  # fixed (not a field): the regression is per sequence

    def needs(self) -> OnlineNeeds:
        return OnlineNeeds(reference=True)  # the reference slot holds the secondary iterate π̂_t, not π_ref

    def validate(self) -> None:
        if not self.eta > 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")

    # --- hooks (online/hooks.py) ------------------------------------------------------------------------------
    def setup(self, method) -> None:
        if method.cfg.num_generations < 2:
            from prefalign.errors import UserError

            raise UserError("config", "onpo's win rates compare the completions of a prompt: num_generations must "
                            "be >= 2", "set num_generations: 2 or more")

    def judge(self, rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """The configured rewards → win-rate estimates s_i of P(y_i ≻ π_t) (``bt_win_rates``)."""
        return bt_win_rates(rewards.double(), group).to(rewards.dtype)

    def reference_role(self) -> str:
        return "secondary"

    def after_update(self, method, step: int) -> None:
        """θ̂ ← ½(θ̂ + θ) once the rollout's μ updates are done (step is 0-based)."""
        if (step + 1) % method.mu == 0:
            sync_secondary_(*method.reference.tensors())

    def advantages(self, ro: Rollout) -> dict[str, torch.Tensor]:
        """The centred regression target 2η(s_i − s̄_g), [N]; rewards are the win-rate estimates s_i."""
        ok = ~torch.isnan(ro.rewards)
        s = torch.where(ok, ro.rewards, torch.zeros_like(ro.rewards))  # [N]
        target = 2 * self.eta * (s - _group_mean(s, ro.group, ok))
        out = {"advantages": torch.where(ok, target, torch.zeros_like(target))}
        stats = ro.reduce(torch.stack([ok.sum().double(), s.double().sum(), s.double().square().sum()]))
        if ok.any():
            mean = float(stats[1] / stats[0])
            out["onpo/win_rate_std"] = max(float(stats[2] / stats[0]) - mean * mean, 0.0) ** 0.5
            # min / max: this process's (a sum-reduce has none)
            out["onpo/win_rate_min"], out["onpo/win_rate_max"] = float(s[ok].min()), float(s[ok].max())
        return out

    def loss(self, b: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if b.ref_logp is None:
            raise ValueError("ONPO needs PolicyBatch.ref_logp: log-probs under the secondary iterate π̂_t")
        m = b.mask.to(b.logp.dtype)  # [N, T]
        ok = ~torch.isnan(b.rewards)  # [N]
        h = ((b.logp - b.ref_logp) * m).sum(-1)  # [N] log π_θ/π̂_t of the whole sequence
        resid = (h - _group_mean(h, b.group, ok)) - b.advantages  # [N] centred regression residual
        seq_loss = torch.where(ok, 0.5 * resid.square(), torch.zeros_like(resid))  # [N]
        per_token = seq_loss[:, None] * m / m.sum(-1, keepdim=True).clamp(min=1)  # [N, T]: sums to seq_loss
        metrics = {"onpo/residual_rms": float(resid[ok].detach().square().mean().sqrt()) if ok.any() else 0.0}
        return per_token, metrics
