"""Parity with TRL 1.16's own trainer code on identical completions, rewards and log-probs.

A real ``GRPOTrainer`` / ``RLOOTrainer`` is built offline on a tiny float64 Llama (policy weights perturbed, so the
policy differs from its reference); its ``_generate_and_score_completions`` samples 3 prompts × 4 completions and
scores them with fixed rewards (a NaN, a zero-std group, a group with one scorable member), and its ``_compute_loss``
is called on those inputs with unequal completion lengths and perturbed ``old_per_token_logps`` (so clipping is
active). Our algorithm gets the same tensors, with the per-token log-probs from TRL's own
``_get_per_token_logps_and_entropies`` (it scores in float32 inside its fused head, so both sides must share them);
loss, gradient w.r.t. every model weight, and the logged clip fractions / KL / entropy must agree.

Trainer variants (loss type, β, ε_high, ...) are set on one trainer per class by assigning the attributes
``__init__`` derives from the config (``_configure``), instead of paying a model load per variant.
"""

from __future__ import annotations

import pytest
import torch

from prefalign.online.advantages import group_advantages
from prefalign.online.aggregate import aggregate
from prefalign.online.algos.base import PolicyBatch, Rollout, get

pytest.importorskip("trl")
# TRL 1.16's own generation path asks transformers a deprecated question; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


G, L = 4, 6  # completions per prompt, max_completion_length
PROMPTS = ["hello there", "world", "a cat"]
GROUP = torch.arange(len(PROMPTS)).repeat_interleave(G)  # [12]
GRPO_R = [1.0, 0.0, 2.0, None, 0.5, 0.5, 0.5, 0.5, 3.0, -1.0, 0.25, 1.5]  # NaN; zero-std group
RLOO_R = [1.0, 0.0, 2.0, None, None, None, 2.0, None, 3.0, -1.0, 0.25, 1.5]  # NaN; one scorable member
LENGTHS = torch.tensor([6, 3, 1, 5, 2, 6, 4, 4, 1, 6, 3, 5])  # unequal completion lengths for the loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is many times faster than two contending ones on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rewards(values):
    return torch.tensor([float("nan") if v is None else v for v in values], dtype=torch.float64)


def _build(cls_name, tmp_path_factory, **cfg):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from prefalign.testing import save_tiny

    path = save_tiny(tmp_path_factory.mktemp("tiny_trl"), hidden_size=16, layers=1, heads=2)
    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if cls_name == "grpo" else (RLOOConfig, RLOOTrainer)
    args = config_cls(output_dir=str(tmp_path_factory.mktemp("trl_out")), per_device_train_batch_size=len(GROUP),
                      num_generations=G, max_completion_length=L, report_to=[], use_cpu=True,
                      activation_checkpointing=False, model_init_kwargs={"dtype": torch.float64}, **cfg)

    def reward(completions, r, **kw):  # the dataset column "r" carries each completion's fixed reward
        return list(r)

    tr = trainer_cls(model=str(path), reward_funcs=reward, args=args, train_dataset=_dataset(), processing_class=None)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference, so KL terms are not zero
        for p in tr.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1  # what Trainer.train sets before a step
    return tr


def _dataset():
    from datasets import Dataset

    return Dataset.from_dict({"prompt": PROMPTS, "r": [0.0] * len(PROMPTS)})


def _sample(tr, rewards):
    inputs = [{"prompt": PROMPTS[int(g)], "r": rewards[i]} for i, g in enumerate(GROUP)]
    torch.manual_seed(1)
    return tr._generate_and_score_completions(inputs)


def _logps(tr, model, out, mask, entropy=True):
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    att = torch.cat([out["prompt_mask"], mask], 1)
    logp, ent, _ = tr._get_per_token_logps_and_entropies(model, ids, att, out["completion_ids"].shape[1],
                                                         compute_entropy=entropy)
    return logp, ent  # [N, T] each


def _short_mask(out):
    T = out["completion_ids"].shape[1]
    return (torch.arange(T)[None, :] < LENGTHS[:, None]).to(out["completion_mask"].dtype)  # [N, T]


def _grads(loss, model):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


def _assert_close_grads(g1, g2):
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def grpo_env(tmp_path_factory):
    tr = _build("grpo", tmp_path_factory, beta=0.04, loss_type="dapo", cast_lm_head_to_fp32=False)  # beta > 0 so a reference is loaded
    return tr, _sample(tr, GRPO_R)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_trl(grpo_env, scale):
    """Which std (Bessel), NaN handling, zero-std group: the same advantages as TRL's scoring code."""
    tr, _ = grpo_env
    tr.scale_rewards = scale
    out = _sample(tr, GRPO_R)
    ours = group_advantages(_rewards(GRPO_R), GROUP, scale)
    torch.testing.assert_close(ours, out["advantages"].double(), rtol=1e-6, atol=1e-6)
    assert ours[3] == 0 and ours[4:8].abs().max() == 0  # the NaN and the zero-std group
    if scale == "group":  # TRL's std is Bessel-corrected: the ÷ n std would give other values
        r0 = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
        biased = (r0 - r0.mean()) / (r0.std(unbiased=False) + 1e-4)
        assert not torch.allclose(biased, out["advantages"][:3].double(), atol=1e-3)


def _configure(tr, loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=None, level="token", correction=True,
               entropy_coef=0.0):
    """Set the attributes GRPOTrainer.__init__ derives from these GRPOConfig fields."""
    tr.loss_type, tr.beta, tr.importance_sampling_level = loss_type, beta, level
    tr.epsilon_low, tr.epsilon_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    tr.args.use_bias_correction_kl = correction
    tr.entropy_coef, tr._entropy_bonus_enabled = entropy_coef, entropy_coef != 0.0
    tr._metrics["train"].clear()


GRPO_CASES = {
    "grpo": dict(loss_type="grpo"),
    "bnpo": dict(loss_type="bnpo"),
    "dr_grpo": dict(loss_type="dr_grpo"),
    "dapo": dict(loss_type="dapo"),
    "dapo_kl_corrected": dict(loss_type="dapo", beta=0.04),
    "grpo_kl_uncorrected": dict(loss_type="grpo", beta=0.04, correction=False),
    "gspo_kl": dict(loss_type="dapo", beta=0.04, level="sequence"),
    "clip_higher": dict(loss_type="dapo", epsilon_high=0.28),
    "entropy_bonus": dict(loss_type="dapo", entropy_coef=0.05),
}


@pytest.mark.parametrize("case", list(GRPO_CASES))
def test_grpo_loss_matches_trl(grpo_env, case):
    cfg = GRPO_CASES[case]
    tr, out = grpo_env
    _configure(tr, **cfg)
    mask = _short_mask(out)
    torch.manual_seed(2)
    logp, ent = _logps(tr, tr.model, out, mask)
    old = (logp.detach().double() + 0.3 * torch.randn(logp.shape, dtype=torch.float64)) * mask  # μ > 1: off-policy
    ref = out["ref_per_token_logps"].double()
    adv = out["advantages"].double()
    inputs = {**out, "completion_mask": mask, "old_per_token_logps": old, "advantages": adv,
              "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    trl_loss = tr._compute_loss(tr.model, inputs)
    trl_metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}

    algo = get("grpo", loss_type=cfg["loss_type"], beta=cfg.get("beta", 0.0), epsilon_high=cfg.get("epsilon_high"),
               importance_sampling_level=cfg.get("level", "token"), kl_bias_correction=cfg.get("correction", True),
               entropy_coef=cfg.get("entropy_coef", 0.0))
    b = PolicyBatch(logp=logp, old_logp=old, mask=mask.bool(), advantages=adv, group=GROUP,
                    rewards=_rewards(GRPO_R), ref_logp=ref, entropy=ent)
    per_token, metrics = algo.loss(b)
    loss_sum, units = aggregate(per_token, b.mask, algo.loss_type, max_completion_length=L)
    ours = loss_sum / units

    torch.testing.assert_close(ours, trl_loss.to(ours.dtype), rtol=1e-6, atol=1e-9)
    assert abs(trl_loss.detach().item()) > 1e-3  # a loss that is ~0 would make the comparison empty
    _assert_close_grads(_grads(ours, tr.model), _grads(trl_loss, tr.model))
    for key in ("clip_ratio/low", "clip_ratio/high", "clip_ratio/region"):
        assert metrics[key] == pytest.approx(trl_metrics[f"{key}_mean"], rel=1e-6, abs=1e-9), key
    assert metrics["clip_ratio/region"] > 0  # the perturbation really puts tokens in the clip region
    assert metrics["entropy"] == pytest.approx(trl_metrics["entropy"], rel=1e-6)
    if algo.beta > 0:
        assert metrics["kl"] == pytest.approx(trl_metrics["kl"], rel=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_mask_truncated_matches_trl(grpo_env, loss_type):
    """TRL zeroes a truncated completion's mask: its tokens leave the dapo count, its row stays in grpo's mean."""
    tr, out = grpo_env
    _configure(tr, loss_type=loss_type)
    mask = _short_mask(out)
    truncated = LENGTHS == L  # these hit the length limit
    trl_mask = mask * (~truncated)[:, None]
    torch.manual_seed(4)
    logp, _ = _logps(tr, tr.model, out, trl_mask)
    old = (logp.detach().double() + 0.3 * torch.randn(logp.shape, dtype=torch.float64)) * mask
    adv = out["advantages"].double()
    trl_loss = tr._compute_loss(tr.model, {**out, "completion_mask": trl_mask, "old_per_token_logps": old,
                                           "advantages": adv, "num_items_in_batch": trl_mask.sum()})

    algo = get("grpo", loss_type=loss_type, mask_truncated_completions=True)
    ro = Rollout(rewards=_rewards(GRPO_R), group=GROUP, mask=mask.bool(), old_logp=old, truncated=truncated)
    extra = algo.advantages(ro)
    assert torch.equal(extra["advantages"], group_advantages(ro.rewards, GROUP))  # truncation keeps the baseline
    b = PolicyBatch(logp=logp, old_logp=old, mask=mask.bool(), advantages=adv, group=GROUP, rewards=ro.rewards,
                    extra={"loss_mask": extra["loss_mask"]})
    per_token, _ = algo.loss(b)
    loss_sum, units = aggregate(per_token, extra["loss_mask"], loss_type)
    torch.testing.assert_close(loss_sum / units, trl_loss.double(), rtol=1e-6, atol=1e-9)
    assert units == (len(GROUP) if loss_type == "grpo" else float(trl_mask.sum()))


@pytest.fixture(scope="module")
def rloo_env(tmp_path_factory):
    tr = _build("rloo", tmp_path_factory, beta=0.05)
    return tr


@pytest.mark.parametrize("normalize", [False, True])
def test_rloo_advantages_match_trl(rloo_env, normalize):
    """KL (k1, summed) in the reward, leave-one-out over scorable siblings, optional batch z-score: as TRL."""
    tr = rloo_env
    tr.normalize_advantages = normalize
    out = _sample(tr, RLOO_R)
    mask = out["completion_mask"]
    with torch.no_grad():
        old, _ = _logps(tr, tr.model, out, mask, entropy=False)
        ref, _ = _logps(tr, tr.ref_model, out, mask, entropy=False)
    ro = Rollout(rewards=_rewards(RLOO_R), group=GROUP, mask=mask.bool(), old_logp=old.double(),
                 ref_logp=ref.double())
    extra = get("rloo", beta=0.05, normalize_advantages=normalize).advantages(ro)
    torch.testing.assert_close(extra["advantages"], out["advantages"].double(), rtol=1e-5, atol=1e-5)
    assert extra["kl"].abs().min() > 0  # the KL penalty is really in play
    assert (extra["advantages"][3:8] == 0).all()  # NaN rewards and the lone scorable member of group 1


def test_rloo_loss_matches_trl(rloo_env):
    tr = rloo_env
    tr.normalize_advantages = False
    out = _sample(tr, RLOO_R)
    mask = _short_mask(out)
    logp, _ = _logps(tr, tr.model, out, mask)
    torch.manual_seed(3)
    old = (logp.detach().double() + 0.15 * torch.randn(logp.shape, dtype=torch.float64)) * mask
    adv = out["advantages"].double()
    trl_loss = tr._compute_loss(tr.model, {**out, "completion_mask": mask, "old_logps": old.sum(1),
                                           "advantages": adv})
    trl_metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}

    algo = get("rloo")
    b = PolicyBatch(logp=logp, old_logp=old, mask=mask.bool(), advantages=adv, group=GROUP, rewards=_rewards(RLOO_R))
    per_token, metrics = algo.loss(b)
    loss_sum, units = aggregate(per_token, b.mask, algo.loss_type)
    ours = loss_sum / units
    torch.testing.assert_close(ours, trl_loss.double(), rtol=1e-6, atol=1e-9)
    assert abs(trl_loss.detach().item()) > 1e-3
    _assert_close_grads(_grads(ours, tr.model), _grads(trl_loss, tr.model))
    assert metrics["clip_ratio/region"] == pytest.approx(trl_metrics["clip_ratio/region_mean"], rel=1e-6)
    assert metrics["clip_ratio/region"] > 0
