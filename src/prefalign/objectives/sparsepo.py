"""SparsePO: token-masked DPO (Christopoulou et al. 2024, "SparsePO: Controlling Preference Alignment of LLMs via
Sparse Token Masks"; reference code huawei-noah/HEBO SparsePO/src/trainers/{sparse,mapo}_trainer.py).

    h_t = log π_θ(y_t|·) − log π_ref(y_t|·)                  per completion token
    D_t = Σ_v π_ref(v|·)(log π_θ(v|·) − log π_ref(v|·)) = −KL_t(π_ref ‖ π_θ)
    u = Σ_t m^u_t h_t(y_w) − Σ_t m^u_t h_t(y_l),   d = Σ_t m^d_t D_t(y_w) − Σ_t m^d_t D_t(y_l)
    loss = −log σ(β(u − d)) + λ_u(‖m^u(y_w)‖₁ + ‖m^u(y_l)‖₁) + λ_d(‖m^d(y_w)‖₁ + ‖m^d(y_l)‖₁)

‖m‖₁ sums over the completion's tokens; with one shared mask (m^u = m^d) both λ are halved, as in the reference code.
The mask of token y_t is read from the **reference's** hidden states at the position that predicts y_t (no gradient
reaches the policy through a mask). ``mask`` picks where masks come from:

- ``learned`` (the paper's SparsePO): m = ReLU(Σ_ℓ a_ℓ ReLU(w_ℓ·LN(s_ℓ) + b_ℓ)) over the states s_ℓ after each layer
  ℓ: one shared LayerNorm, one Linear(H, 1) per layer, a mixer Linear(L, 1) without bias (the reference code's
  ``simple_all``). Its parameters belong to the objective (``build_module``) and train with the policy under the
  same optimizer and schedule, with their own weight decay ``mask_weight_decay``. ``shared_mask: false`` learns
  independent m^u and m^d. No mask dropout (the reference code's default run disables dropout). Initialised near
  m ≡ 1 (per-layer bias 1, mixer 1/L), unlike the reference code's default init, under which a mask that starts at
  0 on a token (ReLU) never receives a gradient there (seen on the catalogue's toy: when that token was the
  decisive one, the loss stayed at ln 2).
- ``reference`` (the paper's MaPO): no parameters; per layer, the mean over the hidden dimension of s_ℓ, rescaled to
  [0, 1] over each completion by min–max, then averaged over layers; m^u = m^d, no ℓ1 term. The reference code also
  z-normalises before the min–max (an affine map, so the result is the same) and hooks attention, MLP and logits
  activations as well; here only the residual stream after each layer is read. A one-token completion gets m = 1.
- ``ones``: m ≡ 1; with ``kl_term: false`` this is the DPO loss exactly (test_sparsepo_ones_is_dpo).

``kl_term: false`` drops d (and λ_d). Needs a reference model (``copy`` or ``adapter``: hidden states and the LM head
are read from it, so not ``precompute``) and per-token log-probs; summed over tokens, not length-averaged. It asks
(``needs()``) for the reference's per-token log-probs and, with a learned or reference mask, its ``states``
(``features["chosen_ref_states"]``, [B, T, L, H]); with the KL term, for the policy feature ``token_kl``
(``features["chosen_token_kl"]``), whose reducer (logps.py) reads the reference's final states and LM head.
Defaults: β = 0.1, λ_u = λ_d = 0.001, mask_weight_decay = 0.01 (the reference code's HH "sparse-common" row),
shared mask, KL term on. Value at policy = reference: ln 2 + the ℓ1 term (h = D = 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from prefalign.objectives.base import Needs, Objective, ObjectiveOutput, PairLogps, require, reward_metrics
from prefalign.objectives.registry import register

MASKS = ("learned", "reference", "ones")


class MaskNet(torch.nn.Module):
    """Token mask from L layers' hidden states: [..., L, H] → [..., ] ≥ 0 (``mask: learned``)."""

    def __init__(self, hidden: int, layers: int, eps: float = 1e-5):
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden, eps=eps)  # shared by every layer's state
        self.per_layer = torch.nn.ModuleList(torch.nn.Linear(hidden, 1) for _ in range(layers))
        self.mixer = torch.nn.Linear(layers, 1, bias=False)
        # Start near m ≡ 1 (DPO): with the reference code's default init a ReLU mask that starts at 0 on a token never
        # gets a gradient there, so a decisive token can stay invisible for the whole run.
        with torch.no_grad():
            for lin in self.per_layer:
                lin.bias.fill_(1.0)
            self.mixer.weight.fill_(1.0 / layers)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        s = self.norm(states.float())  # [..., L, H]
        per = torch.cat([F.relu(lin(s[..., i, :])) for i, lin in enumerate(self.per_layer)], -1)  # [..., L]
        return F.relu(self.mixer(per)).squeeze(-1)  # [...]


def activation_mask(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MaPO's mask [B, T] in [0, 1] from reference states [B, T, L, H] and the completion mask [B, T]."""
    a = states.float().mean(-1)  # [B, T, L]: one scalar per token and layer
    m = mask.bool()[..., None]  # [B, T, 1]
    lo = a.masked_fill(~m, float("inf")).amin(1, keepdim=True)  # [B, 1, L]
    hi = a.masked_fill(~m, float("-inf")).amax(1, keepdim=True)
    span = hi - lo
    flat = span <= 0  # a constant (e.g. one-token) completion: no token stands out, so all get 1
    r = torch.where(flat, torch.ones_like(a), (a - lo) / torch.where(flat, torch.ones_like(span), span))
    return (r * m).mean(-1)  # [B, T]


def sparsepo_loss(h_w: torch.Tensor, h_l: torch.Tensor, mask_w: torch.Tensor, mask_l: torch.Tensor,
                  m_u_w: torch.Tensor, m_u_l: torch.Tensor, beta: float,
                  m_d_w: torch.Tensor | None = None, m_d_l: torch.Tensor | None = None,
                  d_w: torch.Tensor | None = None, d_l: torch.Tensor | None = None,
                  lambda_u: float = 0.0, lambda_d: float = 0.0) -> torch.Tensor:
    """Per-pair SparsePO loss [B]. h_*, mask_*, m_*, d_* are [B, T] (token log-ratios, completion masks, masks,
    D_t). The KL term is used when d_w/d_l and m_d_w/m_d_l are given; ‖m‖₁ sums over completion tokens."""
    mask_w, mask_l = mask_w.to(h_w.dtype), mask_l.to(h_l.dtype)
    l1 = lambda a, b: (a.abs() * mask_w).sum(1) + (b.abs() * mask_l).sum(1)  # noqa: E731  [B]
    u = (m_u_w * h_w * mask_w).sum(1) - (m_u_l * h_l * mask_l).sum(1)  # [B]
    penalty = lambda_u * l1(m_u_w, m_u_l)
    if d_w is not None:
        u = u - ((m_d_w * d_w * mask_w).sum(1) - (m_d_l * d_l * mask_l).sum(1))
        penalty = penalty + lambda_d * l1(m_d_w, m_d_l)
    return -F.logsigmoid(beta * u) + penalty


@register
@dataclass
class SparsePO(Objective):
    name = "sparsepo"
    summary = "SparsePO: DPO over token log-ratios and token KL weighted by sparse masks (learned or MaPO)"

    beta: float = 0.1
    mask: str = "learned"
    shared_mask: bool = True
    kl_term: bool = True
    lambda_u: float = 0.001
    lambda_d: float = 0.001
    mask_weight_decay: float = 0.01

    def __post_init__(self) -> None:
        self.net: torch.nn.Module | None = None

    def needs(self) -> Needs:
        states = ("states",) if self.mask in ("learned", "reference") else ()
        return replace(super().needs(), policy_features=("token_kl",) if self.kl_term else (),
                       ref_features=("token_logps", *states))

    def validate(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got '{self.mask}'")
        for k in ("lambda_u", "lambda_d", "mask_weight_decay"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be ≥ 0, got {getattr(self, k)}")

    def build_module(self, model_config) -> torch.nn.Module | None:
        if self.mask != "learned":
            return None
        hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
        eps = getattr(model_config, "rms_norm_eps", None) or getattr(model_config, "layer_norm_eps", None) or 1e-5
        nets = [MaskNet(hidden, layers, eps) for _ in range(1 if self.shared_mask else 2)]
        self.net = nets[0] if self.shared_mask else torch.nn.ModuleDict({"reward": nets[0], "kl": nets[1]})
        self.net.weight_decay = self.mask_weight_decay  # read by the training loop's optimizer
        return self.net

    def _masks(self, lp: PairLogps, ones_w: torch.Tensor, ones_l: torch.Tensor):
        """(m^u_w, m^u_l, m^d_w, m^d_l), each [B, T]."""
        if self.mask == "ones":
            return ones_w, ones_l, ones_w, ones_l
        sw, sl = require(lp, "objective 'sparsepo'", "chosen_ref_states", "rejected_ref_states")  # [B, T, L, H]
        if self.mask == "reference":
            mw, ml = activation_mask(sw, lp.chosen_mask), activation_mask(sl, lp.rejected_mask)
            return mw, ml, mw, ml
        if self.net is None:
            raise ValueError("objective 'sparsepo' with mask: learned needs build_module(model.config) first")
        if self.shared_mask:
            mw, ml = self.net(sw), self.net(sl)
            return mw, ml, mw, ml
        return self.net["reward"](sw), self.net["reward"](sl), self.net["kl"](sw), self.net["kl"](sl)

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        need = ("policy_chosen_token_logps", "policy_rejected_token_logps", "ref_chosen_token_logps",
                "ref_rejected_token_logps", "chosen_mask", "rejected_mask")
        got = require(lp, "objective 'sparsepo'", *need,
                      *(("chosen_token_kl", "rejected_token_kl") if self.kl_term else ()))
        kl_w, kl_l = got[6:] if self.kl_term else (None, None)  # [B, T] D_t
        h_w = lp.policy_chosen_token_logps - lp.ref_chosen_token_logps  # [B, Tc]
        h_l = lp.policy_rejected_token_logps - lp.ref_rejected_token_logps  # [B, Tr]
        mu_w, mu_l, md_w, md_l = self._masks(lp, torch.ones_like(h_w), torch.ones_like(h_l))
        lam_u, lam_d = (0.0, 0.0) if self.mask != "learned" else (self.lambda_u, self.lambda_d)
        if self.shared_mask and self.mask == "learned":
            lam_u, lam_d = lam_u / 2, lam_d / 2  # one mask carries both penalties (reference code)
        kl = (md_w, md_l, kl_w, kl_l) if self.kl_term else (None,) * 4
        per_example = sparsepo_loss(h_w, h_l, lp.chosen_mask, lp.rejected_mask, mu_w, mu_l, self.beta, *kl,
                                    lambda_u=lam_u, lambda_d=lam_d)
        cw, cl = lp.chosen_mask.bool(), lp.rejected_mask.bool()
        rw = self.beta * (mu_w * h_w * cw).sum(1).detach()  # masked implicit rewards [B]
        rl = self.beta * (mu_l * h_l * cl).sum(1).detach()
        metrics = reward_metrics(rw, rl)
        m = torch.cat([mu_w[cw], mu_l[cl]]).detach()  # the reward mask over every completion token
        metrics.update({"mask/mean": m.mean().item(), "mask/zero_fraction": (m == 0).float().mean().item()})
        return ObjectiveOutput(per_example.mean(), per_example, metrics)
