"""A decoding-time method evaluated like a trained policy: same prompts, same reference samples, same metrics.

The method (``prefalign.decode.run_decode``) draws ``n_policy`` completions per prompt. Every per-token rule
(plain sampling, DeRa, ARGS, Linear Alignment) is itself a sampling policy q with

    log q(y | x) = Σ_t log q(y_t | x, y_<t)        (recorded by the decode loop as ``logq``)

so KL(q ‖ π_ref) is estimated exactly as for a trained policy: the sample mean of log q(y) − log π_ref(y) over
the drawn ids. Best-of-n is not per-token; it gets its analytic KL log n − (n−1)/n. DAEMON (resampling with
learned weights) has no tractable log q and is refused here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from prefalign.decode.best_of_n import bon_kl_bound
from prefalign.errors import UserError
from prefalign.evaluate.logprobs import completion_logprobs
from prefalign.evaluate.metrics import compare
from prefalign.pairs.sample import Samples

PER_TOKEN = ("sample", "args", "dera", "linear_alignment")


def evaluate_decoding(method: str, hparams: dict | None, model, tokenizer, prompts: Sequence[str], reward, cfg,
                      ref: Samples, reference=None, reference_context: Callable | None = None,
                      name: str | None = None, progress: bool = True) -> dict:
    """Metrics of ``method`` decoding from ``model`` against the reference samples ``ref``.

    ``reference`` / ``reference_context``: the model whose log-probs define π_ref (default: ``model`` itself,
    run inside ``reference_context``, e.g. a PEFT model's ``disable_adapter``). ``cfg``: an ``EvalConfig``.
    """
    from prefalign.decode.run import run_decode

    if method not in (*PER_TOKEN, "best_of_n"):
        raise UserError(f"evaluate --method {method}", "has no tractable log q(y|x), so no KL estimate",
                        f"use one of {', '.join((*PER_TOKEN, 'best_of_n'))}")
    hparams = dict(hparams or {})
    name = name or _label(method, hparams)
    k = cfg.n_policy
    repeated = [p for p in prompts for _ in range(k)]  # prompt i owns rows i*k .. i*k+k-1
    result = run_decode(method, model, tokenizer, repeated, reward=reward, hparams=hparams,
                        ref_model=reference if method == "dera" else None,
                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        seed=cfg.seed + 1, batch_size=cfg.batch_size, chat=cfg.chat, system=cfg.system,
                        progress=progress, desc=name)
    rewards = torch.tensor([d["reward"] for d in result.info], dtype=torch.float64).view(len(prompts), k)
    if method == "best_of_n":
        kl = torch.full((len(prompts), k), bon_kl_bound(result.hparams["n"]), dtype=torch.float64)
        lengths = torch.tensor([d["tokens"] for d in result.info], dtype=torch.float64).view(len(prompts), k)
    else:
        ids = [d["token_ids"] for d in result.info]
        logq = torch.tensor([d["logq"] for d in result.info], dtype=torch.float64)
        # π_ref of the drawn ids, after the prompt rendered without any principle (Linear Alignment's
        # principle is part of the decoding rule, not of the task).
        ref_model = reference if reference is not None else model
        lp_ref = completion_logprobs(ref_model, tokenizer, repeated, ids, cfg.gen_options(cfg.seed),
                                     context=reference_context, desc=f"{name}: log π_ref", progress=progress)
        kl = (logq - lp_ref.double()).view(len(prompts), k)
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.float64).view(len(prompts), k)
    out = {"name": name, "method": method, "hparams": result.hparams,
           **compare(rewards, ref.rewards, kl, lengths), "samples_per_prompt": k}
    if method == "best_of_n":
        out["kl_se"] = 0.0  # analytic, not estimated
    out["examples"] = [{"prompt": p, "reference": ref.completions[i][0], "reference_reward": float(ref.rewards[i, 0]),
                        "policy": result.completions[i * k], "policy_reward": float(rewards[i, 0])}
                       for i, p in enumerate(list(prompts)[: cfg.show])]
    return out


def check_decodes(decodes: Sequence[dict], cfg) -> None:
    """Refuse, before any model is loaded, a ``--decode`` method without a KL estimate, an unknown or ill-typed
    hyperparameter, or an out-of-range one (the checks ``run_decode`` would make after the reference samples)."""
    from prefalign.decode.run import _check, make_config

    for d in decodes:
        method = d["method"]
        if method not in (*PER_TOKEN, "best_of_n"):
            raise UserError(f"evaluate --decode {method}", "has no tractable log q(y|x), so no KL estimate",
                            f"use one of {', '.join((*PER_TOKEN, 'best_of_n'))}")
        _check(method, cfg.gen_options(cfg.seed + 1), make_config(method, d.get("hparams")))


def _label(method: str, hparams: dict) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in hparams.items() if k != "principle")
    return f"{method} ({shown})" if shown else method
