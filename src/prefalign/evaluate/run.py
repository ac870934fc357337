"""``prefalign evaluate``: a policy against its reference on held-out prompts, by sampling.

1. m samples per prompt from the reference (temperature 1 by default), scored by the reward;
2. k samples per prompt from the policy, scored; their exact token ids re-scored under policy and reference:
   KL(π‖π_ref) = E_{y∼π}[log π(y|x) − log π_ref(y|x)] is estimated by the mean over those samples (a sample
   mean of the sequence-level log-ratio; exact in expectation only when sampling at temperature 1, top-p 1);
3. reward mean ± SE, paired gain over the reference ± SE, win rate against the m reference samples (ties half),
   response length, best-of-n from the same reference samples (unbiased for n ≤ m) at its analytic KL.

A PEFT adapter folder is its own reference: the same weights with the adapter disabled, as in training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prefalign.decode.generate import GenOptions
from prefalign.errors import UserError
from prefalign.evaluate.logprobs import completion_logprobs
from prefalign.evaluate.metrics import best_of_n_curve, compare, mean_se, win_rate
from prefalign.pairs.sample import Samples, sample_completions, score_samples


@dataclass
class EvalConfig:
    max_new_tokens: int = 40  # new tokens per sample
    temperature: float = 1.0  # KL estimates assume 1 (samples from π itself)
    top_p: float = 1.0
    batch_size: int = 32  # sequences sampled together
    n_reference: int = 16  # reference samples per prompt (win rate against all; best-of-n up to this n)
    n_policy: int = 1  # policy samples per prompt
    seed: int = 0  # reference samples use seed, policy samples seed + 1
    system: str | None = None  # system message for every prompt
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    best_of: tuple[int, ...] = (1, 2, 4, 8, 16)
    show: int = 4  # prompts shown side by side in the report

    def gen_options(self, seed: int) -> GenOptions:
        return GenOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                          seed=seed, batch_size=self.batch_size, chat=self.chat, system=self.system)


def reference_samples(reference, tokenizer, prompts: Sequence[str], reward, cfg: EvalConfig,
                      context: Callable | None = None, progress: bool = True,
                      desc: str = "reference samples") -> Samples:
    """``cfg.n_reference`` scored samples per prompt from the reference."""
    samples = sample_completions(reference, tokenizer, prompts, cfg.n_reference, cfg.gen_options(cfg.seed),
                                 desc=desc, progress=progress, context=context)
    score_samples(samples, reward)
    return samples


def reference_metrics(ref: Samples) -> dict:
    mean, se = mean_se(ref.rewards.double().mean(-1))
    length, length_se = mean_se(ref.lengths().double().mean(-1))
    wr, wr_se = mean_se(win_rate(ref.rewards, ref.rewards))  # 0.5 by symmetry: a sanity value
    return {"name": "reference", "reward_mean": mean, "reward_se": se, "reward_gain": 0.0, "reward_gain_se": 0.0,
            "reward_gain_z": None, "win_rate": wr, "win_rate_se": wr_se, "kl": 0.0, "kl_se": 0.0,
            "length": length, "length_se": length_se, "samples_per_prompt": ref.n}


def evaluate_policy(policy, tokenizer, prompts: Sequence[str], reward, cfg: EvalConfig, ref: Samples,
                    reference=None, reference_context: Callable | None = None, name: str = "policy",
                    progress: bool = True, desc: str | None = None) -> dict:
    """Metrics of ``policy`` against the reference samples ``ref`` (see the module docstring).

    ``reference``: the reference model for log-probs (default: ``policy`` itself, e.g. with ``reference_context``
    = its ``disable_adapter``).
    """
    desc = desc or name
    pol = sample_completions(policy, tokenizer, prompts, cfg.n_policy, cfg.gen_options(cfg.seed + 1),
                             desc=f"{desc}: samples", progress=progress)
    score_samples(pol, reward)
    flat_p = [p for p in pol.prompts for _ in range(pol.n)]
    flat_ids = [ids for row in pol.token_ids for ids in row]
    opts = cfg.gen_options(cfg.seed)
    lp_pol = completion_logprobs(policy, tokenizer, flat_p, flat_ids, opts, desc=f"{desc}: log π",
                                 progress=progress)
    lp_ref = completion_logprobs(reference if reference is not None else policy, tokenizer, flat_p, flat_ids,
                                 opts, context=reference_context, desc=f"{desc}: log π_ref", progress=progress)
    kl = (lp_pol - lp_ref).reshape(len(pol.prompts), pol.n)  # [P, k]
    out = {"name": name, **compare(pol.rewards, ref.rewards, kl, pol.lengths()), "samples_per_prompt": pol.n}
    out["examples"] = [{"prompt": p, "reference": ref.completions[i][0], "reference_reward": float(ref.rewards[i, 0]),
                        "policy": pol.completions[i][0], "policy_reward": float(pol.rewards[i, 0])}
                       for i, p in enumerate(pol.prompts[: cfg.show])]
    return out


def evaluate(policy, tokenizer, prompts: Sequence[str], reward, cfg: EvalConfig | None = None, reference=None,
             reference_context: Callable | None = None, name: str = "policy", progress: bool = True,
             decodes: Sequence[dict] = (), policy_run: bool = True) -> dict:
    """The full comparison: reference samples, the policy, best-of-n. Returns a metrics dict (see ``report``).

    ``decodes``: decoding-time methods over ``policy`` on the same footing, each ``{"method", "hparams"}``
    (see ``evaluate.decoding``); ``policy_run=False`` skips sampling the policy itself (e.g. when it is its
    own reference and only decoding methods are compared).
    """
    from prefalign.evaluate.decoding import evaluate_decoding
    from prefalign.reward import load_reward

    cfg = cfg or EvalConfig()
    check_config(cfg)
    reward = load_reward(reward)
    ref_model = reference if reference is not None else policy
    ref = reference_samples(ref_model, tokenizer, prompts, reward, cfg, context=reference_context,
                            progress=progress)
    runs = []
    if policy_run:
        runs.append(evaluate_policy(policy, tokenizer, prompts, reward, cfg, ref, reference=reference,
                                    reference_context=reference_context, name=name, progress=progress))
    for d in decodes:
        runs.append(evaluate_decoding(d["method"], d.get("hparams"), policy, tokenizer, prompts, reward, cfg, ref,
                                      reference=reference, reference_context=reference_context,
                                      name=d.get("name"), progress=progress))
    return assemble(cfg, prompts, reward, ref, runs)


def assemble(cfg: EvalConfig, prompts: Sequence[str], reward, ref: Samples, runs: list[dict]) -> dict:
    """The metrics dict ``report.write_report`` reads."""
    return {"eval": {**dataclasses.asdict(cfg), "prompts": len(prompts), "reward": getattr(reward, "name", str(reward))},
            "reference": reference_metrics(ref), "best_of_n": best_of_n_curve(ref.rewards, cfg.best_of),
            "runs": runs}


def check_config(cfg: EvalConfig) -> None:
    """Every range at once (the sampling options' from ``GenOptions.problems``), as one line."""
    problems = []
    for name in ("n_reference", "n_policy"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            problems.append(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
    problems += cfg.gen_options(cfg.seed).problems(greedy_ok=False)  # KL is estimated from samples
    if problems:
        raise UserError("evaluate", "; ".join(problems), "fix the arguments")


# ---- loading: a model folder or an adapter folder, and its reference ----------------------------------------------
def load_policy_and_reference(model_path: str, reference_path: str | None = None, dtype: str = "fp32",
                              self_reference: bool = False, use_safetensors: bool | None = None):
    """(policy, reference or None, reference_context or None, tokenizer, base path).

    An adapter folder (``adapter_config.json``) loads onto its base model; its reference is that base with the
    adapter disabled unless ``reference_path`` names another model. A full model needs ``reference_path``,
    unless ``self_reference`` (decoding methods steering the model are compared with the model itself).
    ``dtype``: auto, fp32 or bf16 (``prefalign.model.resolve_dtype``); ``~`` and ``$VARS`` in paths are expanded.
    ``use_safetensors``: refuse pickle weights (None: ``PREFALIGN_SAFETENSORS_ONLY``). Every loading problem is a
    one-line ``UserError`` (``prefalign.model.load_adapter``).
    """
    from prefalign.model import (
        adapter_base,
        expand_path,
        is_adapter,
        load_adapter,
        load_model,
        load_tokenizer,
        missing_note,
    )

    given, model_path, reference_path = str(model_path), expand_path(model_path), expand_path(reference_path)
    path = Path(model_path)
    if not path.is_dir():
        raise UserError(str(model_path), "model folder does not exist" + missing_note(given, model_path),
                        "check the path given to --model")
    tok_dir = str(path) if (path / "tokenizer_config.json").exists() else None
    if is_adapter(path):
        base = adapter_base(path)
        policy = load_adapter(path, dtype, use_safetensors=use_safetensors)
        tokenizer = load_tokenizer(tok_dir or base)
        if reference_path:
            reference = load_model(reference_path, dtype, use_safetensors=use_safetensors).eval()
            return policy, reference, None, tokenizer, base
        return policy, None, policy.disable_adapter, tokenizer, base
    if not reference_path and not self_reference:
        raise UserError(str(model_path), "a full model needs a reference to compare with",
                        "pass --reference <the model it was trained from>")
    policy = load_model(str(path), dtype, use_safetensors=use_safetensors).eval()
    if not reference_path:
        return policy, None, None, load_tokenizer(tok_dir or str(path)), str(path)
    return (policy, load_model(reference_path, dtype, use_safetensors=use_safetensors).eval(), None,
            load_tokenizer(tok_dir or reference_path), reference_path)
