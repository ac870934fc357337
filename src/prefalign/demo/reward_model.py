"""``prefalign demo --reward-model``: learn the demo's reward, then ask how much of best-of-n survives the swap.

The offline demo labels reference samples with VADER and aligns to that labelling directly. Here the labelling
trains a reward model instead, and VADER stays on as the oracle that grades it:

    prefalign sample        reference samples for the train prompts                  (pairs.sample_completions)
    prefalign label         VADER → best-vs-worst pairs, split by prompt into train / calibration / test
    prefalign reward train  a LoRA reward model of SmolLM2-135M, Bradley–Terry loss   (train.loop.train, method reward)
    prefalign reward eval   test-pair accuracy and ECE, before and after a temperature fitted on the calibration pairs
    best-of-n               on held-out prompts, from m reference samples each: the sample picked by the learned
                            reward vs the one picked by VADER, both graded by VADER (n = 1, 2, 4, …, m)

The held-out reference samples are drawn exactly as ``prefalign demo`` draws them (same prompts, seed, batches), so
the VADER-selected column is the demo's best-of-n row; when a previous demo folder (``reuse``) holds them under the
same settings they are read from there instead of being sampled again. The output folder holds ``report.md``,
``metrics.json``, ``bon_learned_vs_oracle.png``, ``reward-eval/`` (reliability and distribution plots of the test
pairs), ``rm/`` (the reward model: ``prefalign.reward.load_reward(folder)``), ``pairs/``, ``samples.jsonl``,
``reference_samples.jsonl`` and ``timings.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prefalign.errors import UserError

MARKER = "demo_rm.json"  # the folder was written by this demo (a previous one there is replaced)


@dataclass
class RewardDemoConfig:
    out: str = "outputs/demo-rm"  # output folder (a previous reward-model demo there is replaced)
    seed: int = 0  # seeds sampling, the split, LoRA init and data order
    threads: int = 2  # torch CPU threads (0: torch's default)
    dtype: str = "auto"  # auto | fp32 | bf16 (auto: bf16 only where the CPU computes it natively)
    system: str | None = ""  # the demo's empty system message (pairs and reward-model inputs carry it too)
    # pairs: train prompts × n reference samples → best vs worst, ties dropped
    train_prompts: int = 279  # all of the demo's train prompts (one pair per prompt at most)
    n: int = 4
    max_new_tokens: int = 40
    sample_batch_size: int = 32
    test_fraction: float = 0.2  # of the pairs (by prompt): held-out test pairs
    calibration_fraction: float = 0.15  # of the pairs: the temperature is fitted on these only
    # the reward model: LoRA on SmolLM2-135M with a new score head, Bradley–Terry loss
    learning_rate: float = 5e-4
    epochs: float = 2.0
    batch_size: int = 8  # pairs per step
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: str | list = "all-linear"
    score_batch_size: int = 32  # sequences the reward model scores at once
    # best-of-n on held-out prompts (the demo's evaluation prompts and reference samples)
    eval_prompts: int = 64
    n_reference: int = 16
    reuse: str | None = "outputs/demo"  # a `prefalign demo` folder whose reference samples to read if settings match
    quick: bool = False

    def best_of(self) -> tuple[int, ...]:
        return tuple(k for k in (1, 2, 4, 8, 16, 32, 64) if k <= self.n_reference)


QUICK = dict(train_prompts=128, n=4, max_new_tokens=24, eval_prompts=32, n_reference=8, epochs=2.0,
             learning_rate=5e-4, reuse="outputs/demo")


def quick_config(**overrides) -> RewardDemoConfig:
    return RewardDemoConfig(quick=True, **{**QUICK, **overrides})


# ---- statistics (pure functions of score tensors) -----------------------------------------------------------------
def selected_best_of_n(select: torch.Tensor, oracle: torch.Tensor, n: int) -> torch.Tensor:
    """[P] unbiased estimate of E[oracle reward of the sample that ``select`` ranks highest among n fresh samples],
    from m ≥ n i.i.d. samples per prompt (``select``, ``oracle``: [P, m], aligned).

    As ``evaluate.metrics.best_of_n_expected``, averaged over every n-subset of the m samples: with the samples
    sorted by ``select``, the one at rank k is the pick of C(k−1, n−1) of the C(m, n) subsets. With
    ``select = oracle`` this is best-of-n's own estimate. Ties in ``select`` are broken by sample order (stable).
    """
    m = select.shape[-1]
    if not 1 <= n <= m:
        raise ValueError(f"best-of-{n} needs at least {n} samples per prompt, got {m}")
    order = select.double().argsort(dim=-1, stable=True)  # ascending
    ranked = oracle.double().gather(-1, order)
    weights = torch.tensor([math.comb(k - 1, n - 1) for k in range(1, m + 1)], dtype=torch.float64)
    return ranked @ (weights / math.comb(m, n))


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties share their mean rank) of a vector, float64."""
    x = x.double().reshape(-1)
    order = x.argsort(stable=True)
    sorted_x = x[order]
    r = torch.empty_like(x)
    i = 0
    n = x.numel()
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        r[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float("nan")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return pearson(ranks(a), ranks(b))


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    from prefalign.evaluate.metrics import mean_se

    return mean_se(x)


def pair_ranking_accuracy(select: torch.Tensor, oracle: torch.Tensor) -> tuple[float, int]:
    """(share of within-prompt sample pairs that ``select`` orders as ``oracle`` does — a ``select`` tie counts ½ —,
    number of pairs); pairs the oracle ties are left out."""
    s = select.double()[:, :, None] - select.double()[:, None, :]  # [P, m, m]
    o = oracle.double()[:, :, None] - oracle.double()[:, None, :]
    upper = torch.triu(torch.ones(s.shape[-1], s.shape[-1], dtype=torch.bool), diagonal=1)
    keep = upper & (o != 0)
    agree = ((s * o > 0).double() + 0.5 * (s == 0).double())[keep]
    return (float(agree.mean()) if agree.numel() else float("nan")), int(agree.numel())


def correlations(rm: torch.Tensor, oracle: torch.Tensor, lengths: torch.Tensor | None = None) -> dict:
    """Agreement of the learned reward with the oracle on samples [P, m]: pooled Pearson / Spearman, the mean
    within-prompt Spearman (what best-of-n's choice depends on), within-prompt pair ranking accuracy, and each
    reward's Pearson correlation with the completion length (a length bias the oracle does not have)."""
    within = []
    for i in range(rm.shape[0]):
        if oracle[i].unique().numel() > 1 and rm[i].unique().numel() > 1:
            within.append(spearman(rm[i], oracle[i]))
    acc, n_pairs = pair_ranking_accuracy(rm, oracle)
    out = {"pearson": pearson(rm, oracle), "spearman": spearman(rm, oracle),
           "spearman_within_prompt_mean": float(sum(within) / len(within)) if within else float("nan"),
           "spearman_within_prompt_prompts": len(within), "pair_ranking_accuracy": acc,
           "pair_ranking_pairs": n_pairs, "samples": int(rm.numel())}
    if lengths is not None:
        out["length_pearson_rm"] = pearson(rm, lengths)
        out["length_pearson_oracle"] = pearson(oracle, lengths)
    return out


def best_of_n_comparison(rm: torch.Tensor, oracle: torch.Tensor, ns) -> list[dict]:
    """One row per n: the oracle reward (mean ± SE over prompts) of best-of-n picked by the oracle and by the learned
    reward, their paired gap, the share of the oracle's gain over n = 1 the learned pick keeps, the learned reward's
    own score of its pick (the proxy, in units of its per-sample std over the samples), and the step from the
    previous n of each curve (paired by prompt)."""
    from prefalign.decode import bon_kl_bound

    base = oracle.double().mean(-1)  # n = 1: a random sample
    rm_std = float(rm.double().std()) or 1.0  # per-sample std over all samples: each reward in its own units
    oracle_std = float(oracle.double().std()) or 1.0
    rm_base = rm.double().mean(-1)
    rows, prev = [], None
    for n in ns:
        by_oracle = selected_best_of_n(oracle, oracle, n)
        by_rm = selected_best_of_n(rm, oracle, n)
        proxy = (selected_best_of_n(rm, rm, n) - rm_base) / rm_std
        row = {"n": n, "kl": float(bon_kl_bound(n))}
        for key, v in (("oracle_pick", by_oracle), ("learned_pick", by_rm), ("gap", by_rm - by_oracle),
                       ("proxy_gain", proxy), ("oracle_gain", by_oracle - base), ("learned_gain", by_rm - base)):
            row[key], row[f"{key}_se"] = _mean_se(v)
        row["retained"] = row["learned_gain"] / row["oracle_gain"] if row["oracle_gain"] > 1e-12 else None
        for key in ("learned_gain", "oracle_gain"):  # in oracle per-sample std units, beside the proxy's
            row[f"{key}_sd"], row[f"{key}_sd_se"] = row[key] / oracle_std, row[f"{key}_se"] / oracle_std
        if prev is not None:
            for key, v, p in (("learned_step", by_rm, prev[0]), ("oracle_step", by_oracle, prev[1])):
                row[key], row[f"{key}_se"] = _mean_se(v - p)
        rows.append(row)
        prev = (by_rm, by_oracle)
    return rows


def verdict(rows: list[dict], z: float = 2.0) -> dict:
    """Where the learned-reward curve stops paying: each step n/2 → n is 'rises' (> z SE above 0), 'drops' (< −z SE)
    or 'flat'; ``flattens_at`` is the first n whose step does not rise (and every later one neither), ``drops_at``
    the first n whose step drops; ``gap_grows`` whether the oracle's lead is significant and largest at the top n."""
    steps = []
    for r in rows[1:]:
        s, se = r["learned_step"], r["learned_step_se"]
        kind = "rises" if s > z * se and s > 0 else ("drops" if s < -z * se and s < 0 else "flat")
        o, ose = r["oracle_step"], r["oracle_step_se"]
        okind = "rises" if o > z * ose and o > 0 else ("drops" if o < -z * ose and o < 0 else "flat")
        steps.append({"n": r["n"], "learned": kind, "oracle": okind})
    flattens_at = None
    for i, s in enumerate(steps):
        if all(t["learned"] != "rises" for t in steps[i:]):
            flattens_at = s["n"]
            break
    drops_at = next((s["n"] for s in steps if s["learned"] == "drops"), None)
    peak = max(rows, key=lambda r: r["learned_pick"])
    gaps = [r for r in rows if r["gap"] < -z * r["gap_se"]]
    return {"steps": steps, "flattens_at": flattens_at, "drops_at": drops_at, "peak_n": peak["n"],
            "first_significant_gap_n": gaps[0]["n"] if gaps else None, "z": z}


def verdict_text(rows: list[dict], v: dict) -> str:
    top = rows[-1]
    kept = f"{top['retained']:.0%}" if top["retained"] is not None else "—"
    parts = [f"At n = {top['n']} the learned reward's pick scores {top['learned_pick']:.3f} ± {top['learned_pick_se']:.3f} "
             f"under VADER against {top['oracle_pick']:.3f} ± {top['oracle_pick_se']:.3f} for VADER's own pick: it keeps "
             f"{kept} of best-of-{top['n']}'s gain over a random sample (n = 1: {rows[0]['oracle_pick']:.3f})."]
    rising = [s["n"] for s in v["steps"] if s["learned"] == "rises"]
    if v["drops_at"] is not None:
        parts.append(f"The learned curve drops at n = {v['drops_at']} (the step from n = {v['drops_at'] // 2} is more than "
                     f"{v['z']:g} SE below zero) and peaks at n = {v['peak_n']}: past that, picking harder by the learned "
                     "reward picks what it likes and VADER does not — overoptimisation.")
    elif v["flattens_at"] is not None:
        parts.append(f"The learned curve flattens from n = {v['flattens_at']}: no step from n = {v['flattens_at'] // 2} on "
                     f"gains more than {v['z']:g} SE (its peak is at n = {v['peak_n']}), while its own proxy score of the "
                     f"pick keeps rising ({top['proxy_gain']:+.2f} std at n = {top['n']}); the extra selection pressure "
                     "goes into what the learned reward likes and VADER does not.")
    elif len(rising) == len(v["steps"]):
        parts.append("Every step of the learned curve rises by more than "
                     f"{v['z']:g} SE up to n = {top['n']}: no flattening or overoptimisation is visible at this n.")
    else:
        flat = [s["n"] for s in v["steps"] if s["learned"] != "rises"]
        parts.append(f"The learned curve's steps are mixed: within {v['z']:g} SE of zero at n = "
                     f"{', '.join(map(str, flat))}, but still rising at the largest n, so no flattening at the top is "
                     "visible.")
    if rising and v["drops_at"] is None and len(rising) < len(v["steps"]):
        parts.append(f"(Significant rises at n = {', '.join(map(str, rising))}.)")
    if v["first_significant_gap_n"] is not None:
        parts.append(f"VADER's own pick is ahead by more than {v['z']:g} SE from n = {v['first_significant_gap_n']}.")
    return " ".join(parts)


# ---- the run ---------------------------------------------------------------------------------------------------
def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(str(out), "folder exists and does not hold a previous reward-model demo",
                            "choose another --out (the demo replaces only its own output)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _write_text(path: Path, text: str) -> None:
    from prefalign.reward.calibration import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def split_pairs(pairs: list[dict], seed: int, test_fraction: float, calibration_fraction: float):
    """(train, calibration, test): a seeded permutation of the pairs (one per prompt, so the split is by prompt)."""
    n = len(pairs)
    n_test = max(1, round(test_fraction * n))
    n_cal = max(1, round(calibration_fraction * n))
    if n - n_test - n_cal < 1:
        raise UserError("demo", f"{n} pairs are too few to split into train, calibration and test",
                        "use more train prompts")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    test = [pairs[i] for i in sorted(order[:n_test])]
    cal = [pairs[i] for i in sorted(order[n_test : n_test + n_cal])]
    train = [pairs[i] for i in sorted(order[n_test + n_cal :])]
    return train, cal, test


def _reusable_reference(cfg: RewardDemoConfig, dtype: str, model_name: str, eval_p: list[str], log):
    """The reference samples a previous ``prefalign demo`` folder holds, if they were drawn exactly as this run would
    draw them (same model, dtype, threads, seed, prompts and sampling settings); else None (with a line saying why)."""
    from prefalign.pairs import read_jsonl
    from prefalign.pairs.sample import Samples

    if not cfg.reuse:
        return None
    from prefalign.model import expand_path

    folder = Path(expand_path(cfg.reuse))
    files = [folder / f for f in ("demo.json", "metrics.json", "prompts/eval.jsonl", "reference_samples.jsonl")]
    if not all(f.is_file() for f in files):
        return None
    try:
        demo = json.loads(files[0].read_text())
        ran = json.loads(files[1].read_text()).get("demo", {})
        prompts = [r["prompt"] for r in read_jsonl(files[2])]
        rows = read_jsonl(files[3])
    except (ValueError, KeyError, UserError, OSError) as e:
        log(f"reference samples: not reusing {folder} ({e})")
        return None
    want = {"seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens, "sample_batch_size": cfg.sample_batch_size,
            "n_reference": cfg.n_reference, "system": cfg.system, "threads": cfg.threads}
    differ = [k for k, v in want.items() if demo.get(k) != v]
    if ran.get("dtype") != dtype:
        differ.append("dtype")
    if ran.get("model") != model_name:
        differ.append("model")
    if prompts != eval_p or [r.get("prompt") for r in rows] != eval_p:
        differ.append("eval prompts")
    if any(len(r.get("completions", ())) != cfg.n_reference for r in rows):
        differ.append("samples per prompt")
    if differ:
        log(f"reference samples: {folder} was sampled with other settings ({', '.join(differ)}); sampling again")
        return None
    log(f"reference samples: reusing {files[3]} (same model, dtype, seed and settings)")
    return Samples(prompts=prompts, completions=[list(r["completions"]) for r in rows], token_ids=[], chat=bool(rows[0]["chat"]),
                   meta={"system": cfg.system, "reused_from": str(files[3])})


def _conversation(prompt: str, system: str | None, chat: bool):
    """The reward model's input prompt for a sampling prompt: the row ``prefalign label`` writes (the system turn
    included), so the model scores each sample in the very context its training pairs had."""
    from prefalign.data.render import prompt_row

    return prompt_row(prompt, system, chat)


def _completion(text: str, chat: bool):
    return [{"role": "assistant", "content": text}] if chat else text


def _score_pairs(rm, pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = [p["prompt"] for p in pairs]
    return rm(prompts, [p["chosen"] for p in pairs]), rm(prompts, [p["rejected"] for p in pairs])


def run_reward_demo(cfg: RewardDemoConfig, log=None, model_folder: str | None = None, reward=None,
                    prompts=None) -> dict:
    """Run the reward-model demo; returns the metrics dict (also written to ``cfg.out``).

    ``model_folder``, ``reward`` and ``prompts`` = (train, eval) replace SmolLM2, VADER and the built-in prompts
    (the tests use a tiny model and a stub reward); ``reward`` is the oracle that labels pairs and grades best-of-n.
    """
    from prefalign.decode.generate import GenOptions
    from prefalign.demo.prompts import split_prompts
    from prefalign.demo.run import _model_name, spread
    from prefalign.evaluate import EvalConfig, reference_samples
    from prefalign.model import DTYPES, expand_path, load_model, load_tokenizer, resolve_dtype
    from prefalign.pairs import make_pairs, sample_completions, score_samples, write_jsonl
    from prefalign.reward import calibration, evaluation, load_reward
    from prefalign.train.config import TrainConfig
    from prefalign.train.loop import train

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    dtype, why = resolve_dtype(cfg.dtype, "cpu")
    log(f"dtype {why}" if why.startswith("auto:") else f"dtype {dtype} ({why})")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(expand_path(cfg.out))
    if cfg.n_reference < 2:
        raise UserError("demo", f"n_reference must be >= 2 for best-of-n, got {cfg.n_reference}", "raise it")

    # 1. model, oracle, prompts -----------------------------------------------------------------------------------
    oracle = load_reward(reward if reward is not None else "vader")
    if model_folder is None:
        from prefalign.demo.model import smollm2_folder

        model_folder = str(smollm2_folder(log))
    model_name = _model_name(model_folder)
    train_all, eval_all = prompts if prompts is not None else split_prompts()
    train_p, eval_p = spread(train_all, cfg.train_prompts), spread(eval_all, cfg.eval_prompts)
    _prepare_out(out)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
    _write_text(out / MARKER, json.dumps(settings, indent=1))
    tokenizer = load_tokenizer(model_folder)
    model = load_model(model_folder, dtype).eval()
    opts = GenOptions(max_new_tokens=cfg.max_new_tokens, temperature=1.0, seed=cfg.seed,
                      batch_size=cfg.sample_batch_size, system=cfg.system)
    log(f"demo --reward-model: {len(train_p)} train prompts × {cfg.n} samples → best-vs-worst pairs → train / "
        f"calibration / test ({1 - cfg.test_fraction - cfg.calibration_fraction:.0%} / {cfg.calibration_fraction:.0%} / "
        f"{cfg.test_fraction:.0%}); LoRA reward model, {cfg.epochs:g} epochs of {cfg.batch_size}-pair steps at lr "
        f"{cfg.learning_rate:g}; best-of-n ≤ {cfg.n_reference} on {len(eval_p)} held-out prompts; {model_name}, "
        f"{dtype}, {torch.get_num_threads()} threads")
    timings["setup"] = time.perf_counter() - t_start

    # 2. sample + label + split ---------------------------------------------------------------------------------
    t = time.perf_counter()
    samples = sample_completions(model, tokenizer, train_p, cfg.n, opts, desc="1/4 sample train")
    score_samples(samples, oracle)
    write_jsonl(out / "samples.jsonl", samples.rows())
    pairs, stats = make_pairs(samples.prompts, samples.completions, samples.rewards, samples.chat,
                              system=cfg.system if samples.chat else None)
    if not pairs:
        raise UserError("demo", "labelling produced no pairs (every prompt's samples tied)", "use more samples")
    train_pairs, cal_pairs, test_pairs = split_pairs(pairs, cfg.seed, cfg.test_fraction, cfg.calibration_fraction)
    for name, rows in (("train", train_pairs), ("calibration", cal_pairs), ("test", test_pairs)):
        write_jsonl(out / "pairs" / f"{name}.jsonl", rows)
    log(f"label: {stats.line()} → {len(train_pairs)} train, {len(cal_pairs)} calibration, {len(test_pairs)} test")
    timings["sample+label"] = time.perf_counter() - t

    # 3. reference samples on held-out prompts, drawn as `prefalign demo` draws them ------------------------------
    t = time.perf_counter()
    ecfg = EvalConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.sample_batch_size,
                      n_reference=cfg.n_reference, n_policy=1, seed=cfg.seed + 1000, system=cfg.system,
                      best_of=cfg.best_of())
    ref = _reusable_reference(cfg, dtype, model_name, eval_p, log)
    if ref is None:
        ref = reference_samples(model, tokenizer, eval_p, oracle, ecfg, desc="2/4 sample reference")
    else:
        score_samples(ref, oracle)
    write_jsonl(out / "reference_samples.jsonl", ref.rows())
    timings["reference samples"] = time.perf_counter() - t
    del model

    # 4. prefalign reward train -----------------------------------------------------------------------------------
    t = time.perf_counter()
    tcfg = TrainConfig(model=model_folder, data=str(out / "pairs" / "train.jsonl"), output_dir=str(out / "rm"),
                       method="reward", objective="bt", dtype=dtype, lora=True, lora_r=cfg.lora_r,
                       lora_alpha=cfg.lora_alpha, lora_target_modules=cfg.lora_targets,
                       learning_rate=cfg.learning_rate, lr_scheduler="constant", batch_size=cfg.batch_size,
                       num_epochs=cfg.epochs, seed=cfg.seed, report_to=[], max_length=256, truncation="keep_end",
                       overwrite=True)
    log(f"3/4 train the reward model ({_steps(cfg, len(train_pairs))} steps)")
    rm_folder = train(tcfg, log=lambda msg: None)
    train_log = _train_log(rm_folder)
    timings["train reward model"] = time.perf_counter() - t

    # 5. prefalign reward eval: test pairs, T fitted on the calibration pairs --------------------------------------
    t = time.perf_counter()
    rm = load_reward(str(rm_folder), batch_size=cfg.score_batch_size, dtype=DTYPES[dtype])
    log("4/4 score pairs and held-out samples with the reward model")
    cal_c, cal_r = _score_pairs(rm, cal_pairs)
    test_c, test_r = _score_pairs(rm, test_pairs)
    temperature = calibration.fit_temperature(cal_c - cal_r)
    test = evaluation.evaluate_pairs(test_c, test_r, temperature=temperature)
    test.update(temperature_fitted_on=f"{len(cal_pairs)} calibration pairs (pairs/calibration.jsonl)",
                data="pairs/test.jsonl", model="rm/")
    evaluation.write_report(out / "reward-eval", test, test_c, test_r,
                            title="prefalign demo --reward-model: the reward model on the test pairs")
    calib_self = evaluation.evaluate_pairs(cal_c, cal_r, temperature=temperature)
    # pairs on the held-out prompts (best vs worst of m reference samples; other items than any training pair)
    ref_pairs, ref_stats = make_pairs(ref.prompts, ref.completions, ref.rewards, ref.chat,
                                      system=cfg.system if ref.chat else None)
    held = None
    if ref_pairs:
        hc, hr = _score_pairs(rm, ref_pairs)
        held = evaluation.evaluate_pairs(hc, hr, temperature=temperature)
    # the same test pairs scored from plain-string prompts, as `prefalign label --reward rm/` scores samples
    plain = [{**p, "prompt": next(m["content"] for m in p["prompt"] if m["role"] == "user"),
              "chosen": p["chosen"][0]["content"], "rejected": p["rejected"][0]["content"]}
             for p in test_pairs] if ref.chat else None
    plain_view = None
    if plain:
        pc, pr = _score_pairs(rm, plain)
        trained, shifted = torch.cat([test_c, test_r]), torch.cat([pc, pr])
        plain_view = {"accuracy": evaluation.evaluate_pairs(pc, pr)["accuracy"],
                      "pearson_with_trained_rendering": pearson(trained, shifted),
                      "mean_shift_sd": float((shifted - trained).mean() / (trained.std() or 1.0))}

    # 6. best-of-n on the held-out prompts: learned reward vs oracle, both graded by the oracle ---------------------
    flat_p = [_conversation(p, cfg.system, ref.chat) for p in ref.prompts for _ in range(ref.n)]
    flat_c = [_completion(c, ref.chat) for row in ref.completions for c in row]
    rm_scores = rm(flat_p, flat_c).reshape(len(ref.prompts), ref.n)
    lengths = torch.tensor([[len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in row]
                            for row in ref.completions], dtype=torch.float64)
    corr = correlations(rm_scores, ref.rewards, lengths)
    rows = best_of_n_comparison(rm_scores, ref.rewards, cfg.best_of())
    v = verdict(rows)
    examples = _examples(ref, rm_scores, k=4)
    timings["evaluate"] = time.perf_counter() - t

    # 7. report ---------------------------------------------------------------------------------------------------
    metrics = {
        "demo": {**settings, "dtype": dtype, "dtype_setting": cfg.dtype, "dtype_reason": why, "model": model_name,
                 "oracle": getattr(oracle, "name", str(oracle)), "train_prompts_used": len(train_p),
                 "eval_prompts_used": len(eval_p), "label": dataclasses.asdict(stats),
                 "reference_samples": ref.meta.get("reused_from", "sampled")},
        "pairs": {"train": len(train_pairs), "calibration": len(cal_pairs), "test": len(test_pairs),
                  "held_out_prompts": len(ref_pairs), "held_out_label": dataclasses.asdict(ref_stats)},
        "reward_model": {"folder": str(rm_folder), "steps": _steps(cfg, len(train_pairs)), "train": train_log,
                         "temperature": temperature, "temperature_fitted_on": "calibration pairs"},
        "test": _brief(test), "calibration_split": _brief(calib_self),
        "held_out_prompts": _brief(held) if held else None,
        "test_plain_prompt": plain_view,
        "correlation": corr, "best_of_n": rows, "verdict": v, "examples": examples,
    }
    text = json.dumps(_finite(metrics), indent=1, ensure_ascii=False, allow_nan=False)
    _write_text(out / "metrics.json", text + "\n")
    shown = "VADER" if metrics["demo"]["oracle"] == "vader" else metrics["demo"]["oracle"]
    plot_bon(rows, out / "bon_learned_vs_oracle.png", oracle_name=shown)
    timings["total"] = time.perf_counter() - t_start
    _write_text(out / "timings.json", json.dumps({k: round(x, 1) for k, x in timings.items()}, indent=1))
    report = render_report(metrics)
    _write_text(out / "report.md", report)  # last: it names the files above
    print(summary(metrics))
    print(f"report: {out / 'report.md'}  plot: {out / 'bon_learned_vs_oracle.png'}  reward model: {rm_folder}  "
          f"({timings['total']:.0f} s)")
    return metrics


def _steps(cfg: RewardDemoConfig, n_pairs: int) -> int:
    return max(1, math.ceil(cfg.epochs * math.ceil(n_pairs / cfg.batch_size)))


def _train_log(folder: Path) -> dict:
    path = Path(folder) / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return {}
    tail = rows[-max(1, len(rows) // 4):]  # the last quarter of the steps: the training fit at the end
    out = {"steps_logged": len(rows), "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
           "loss_last_quarter": sum(r["loss"] for r in tail) / len(tail)}
    if "accuracy" in rows[-1]:
        out["accuracy_last_quarter"] = sum(r.get("accuracy", 0.0) for r in tail) / len(tail)
    return out


def _brief(result: dict) -> dict:
    keys = ("n_pairs", "accuracy", "ties", "margin_mean", "margin_std", "reward_mean", "reward_std", "temperature",
            "temperature_clamped", "ece_before", "ece_after", "nll_before", "nll_after")
    out = {k: result[k] for k in keys}
    out["accuracy_se"] = math.sqrt(max(out["accuracy"] * (1 - out["accuracy"]), 0.0) / max(1, out["n_pairs"]))
    return out


def _examples(ref, rm_scores: torch.Tensor, k: int = 4) -> list[dict]:
    """The held-out prompts where the learned reward's top sample and the oracle's differ most in oracle reward."""
    gaps = []
    for i in range(len(ref.prompts)):
        a, b = int(rm_scores[i].argmax()), int(ref.rewards[i].argmax())
        gaps.append((float(ref.rewards[i, b] - ref.rewards[i, a]), i, a, b))
    out = []
    for gap, i, a, b in sorted(gaps, key=lambda g: (-g[0], g[1]))[:k]:
        if gap <= 0:
            break
        out.append({"prompt": ref.prompts[i], "learned_pick": ref.completions[i][a],
                    "learned_pick_oracle": float(ref.rewards[i, a]), "learned_pick_rm": float(rm_scores[i, a]),
                    "oracle_pick": ref.completions[i][b], "oracle_pick_oracle": float(ref.rewards[i, b]),
                    "oracle_pick_rm": float(rm_scores[i, b])})
    return out


def plot_bon(rows: list[dict], path: Path, oracle_name: str = "vader") -> Path:
    """Left: oracle reward of best-of-n picked by the oracle and by the learned reward (± 1 SE) against n. Right: the
    gain over n = 1 of the learned pick, in per-sample std units, as the learned reward sees it (proxy) and as the
    oracle sees it: a proxy that keeps rising over a flat oracle line is overoptimisation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prefalign.reward.calibration import atomic_write

    ns = [r["n"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120)
    a.errorbar(ns, [r["oracle_pick"] for r in rows], yerr=[r["oracle_pick_se"] for r in rows], marker="o",
               capsize=3, color="tab:gray", label=f"picked by {oracle_name} (oracle best-of-n)")
    a.errorbar(ns, [r["learned_pick"] for r in rows], yerr=[r["learned_pick_se"] for r in rows], marker="s",
               capsize=3, color="tab:blue", label="picked by the learned reward model")
    a.set_xscale("log", base=2)
    a.set_xticks(ns, [f"{n}\nKL {r['kl']:.2f}" for n, r in zip(ns, rows)])
    a.set_xlabel("n (best-of-n from reference samples; KL bound in nats)")
    a.set_ylabel(f"{oracle_name} reward of the pick (mean ± SE over prompts)")
    a.set_title("best-of-n: learned reward vs oracle")
    a.legend(fontsize=8)
    b.errorbar(ns, [r["proxy_gain"] for r in rows], yerr=[r["proxy_gain_se"] for r in rows], marker="s", capsize=3,
               color="tab:orange", label="learned pick, as the learned reward scores it (proxy)")
    b.errorbar(ns, [r["learned_gain_sd"] for r in rows], yerr=[r["learned_gain_sd_se"] for r in rows], marker="s",
               capsize=3, color="tab:blue", label=f"learned pick, as {oracle_name} scores it")
    b.errorbar(ns, [r["oracle_gain_sd"] for r in rows], yerr=[r["oracle_gain_sd_se"] for r in rows], marker="o",
               capsize=3, color="tab:gray", label=f"{oracle_name}'s own pick")
    b.set_xscale("log", base=2)
    b.set_xticks(ns, [str(n) for n in ns])
    b.set_xlabel("n")
    b.set_ylabel("gain over n = 1 (each reward's per-sample std)")
    b.set_title("proxy vs oracle gain of the learned pick")
    b.axhline(0, color="black", linewidth=0.6)
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


def _table(rows: list[list[str]]) -> str:
    from prefalign.evaluate.report import markdown_table

    return markdown_table(rows)


def summary(metrics: dict) -> str:
    t = metrics["test"]
    lines = [f"reward model: test accuracy {t['accuracy']:.3f} ± {t['accuracy_se']:.3f} on {t['n_pairs']} pairs; ECE "
             f"{t['ece_before']:.3f} (T = 1) → {t['ece_after']:.3f} (T = {t['temperature']:.3g}, fitted on the "
             "calibration pairs)", "", _table(bon_rows(metrics["best_of_n"]))]
    return "\n".join(lines)


def bon_rows(rows: list[dict]) -> list[list[str]]:
    out = [["n", "KL bound (nats)", "picked by oracle", "picked by learned RM", "learned − oracle",
            "gain kept", "proxy gain (RM std)"]]
    for r in rows:
        kept = f"{r['retained']:.0%}" if r["retained"] is not None else "—"
        out.append([str(r["n"]), f"{r['kl']:.3f}", f"{r['oracle_pick']:.3f} ± {r['oracle_pick_se']:.3f}",
                    f"{r['learned_pick']:.3f} ± {r['learned_pick_se']:.3f}", f"{r['gap']:+.3f} ± {r['gap_se']:.3f}",
                    kept, f"{r['proxy_gain']:+.2f}"])
    return out


def render_report(m: dict) -> str:
    d, p, rmi, corr = m["demo"], m["pairs"], m["reward_model"], m["correlation"]
    oracle = "VADER compound sentiment in [−1, 1]" if d["oracle"] == "vader" else f"`{d['oracle']}`"
    acc_rows = [["pairs", "n", "accuracy (± SE)", "ECE (T = 1)", f"ECE (T = {rmi['temperature']:.3g})",
                 "NLL (T = 1 → T)"]]
    for label, r in (("test (held-out train prompts)", m["test"]),
                     ("held-out prompts (best vs worst of the reference samples)", m["held_out_prompts"]),
                     ("calibration (T was fitted here)", m["calibration_split"])):
        if r:
            acc_rows.append([label, str(r["n_pairs"]), f"{r['accuracy']:.3f} ± {r['accuracy_se']:.3f}",
                             f"{r['ece_before']:.3f}", f"{r['ece_after']:.3f}",
                             f"{r['nll_before']:.3f} → {r['nll_after']:.3f}"])
    tl = rmi["train"]
    train_line = (f" Training: loss {tl['loss_first']:.3f} at the first step, {tl['loss_last_quarter']:.3f} over the last "
                  f"quarter of steps" + (f" (pair accuracy {tl['accuracy_last_quarter']:.2f} there)"
                                         if "accuracy_last_quarter" in tl else "") + ".") if tl else ""
    plain = m.get("test_plain_prompt")
    plain_line = (f"The reward model scores every sequence here in its training context (the pairs' empty system turn "
                  f"included). Scored from plain-string prompts instead — what `prefalign label --reward rm` and "
                  f"`prefalign evaluate --reward rm` pass, and SmolLM2's template then inserts its default system "
                  f"message — the test pairs give accuracy {plain['accuracy']:.3f}; those scores correlate "
                  f"{plain['pearson_with_trained_rendering']:.3f} with the trained-context ones and are shifted by "
                  f"{plain['mean_shift_sd']:+.2f} std.") if plain else ""
    lines = [
        "# prefalign demo --reward-model: a learned reward vs its oracle", "",
        f"Model: {d['model']} ({d['dtype']}). Oracle: {oracle}. {d['train_prompts_used']} train prompts × {d['n']} "
        f"reference samples → {d['label']['pairs']} best-vs-worst pairs (ties dropped), split by prompt into "
        f"{p['train']} train / {p['calibration']} calibration / {p['test']} test pairs (seed {d['seed']}). Reward model: "
        f"LoRA rank {d['lora_r']} ({d['lora_targets']}) on a new score head, Bradley–Terry loss, lr "
        f"{d['learning_rate']:g} constant, {rmi['steps']} steps of {d['batch_size']} pairs ({d['epochs']:g} epochs).{train_line}"
        " Wall times: `timings.json`.", "",
        "## The reward model on held-out pairs", "",
        "Accuracy counts r_chosen > r_rejected (a tie ½). ECE is that of σ((r_c − r_r)/T) on both orderings of each "
        f"pair, 10 bins; T = {rmi['temperature']:.4g} was fitted on the calibration pairs only, so the test and "
        "held-out-prompt rows' \"after\" ECE is an honest one (the calibration row's is fitted in-sample).", "",
        _table(acc_rows), "", plain_line, "",
        "Reliability and score plots of the test pairs: [reward-eval/report.md](reward-eval/report.md).", "",
        "## Learned reward vs oracle on the held-out samples", "",
        f"{corr['samples']} reference samples ({d['n_reference']} per held-out prompt): "
        f"Pearson {corr['pearson']:.3f}, Spearman {corr['spearman']:.3f} pooled; mean within-prompt Spearman "
        f"{corr['spearman_within_prompt_mean']:.3f} (over {corr['spearman_within_prompt_prompts']} prompts); the "
        f"learned reward orders {corr['pair_ranking_accuracy']:.1%} of the {corr['pair_ranking_pairs']} within-prompt "
        f"sample pairs the oracle does not tie as the oracle does. Correlation with length in tokens: learned "
        f"{corr.get('length_pearson_rm', float('nan')):+.3f}, oracle {corr.get('length_pearson_oracle', float('nan')):+.3f}.",
        "",
        "## Best-of-n: picked by the learned reward vs by the oracle, both graded by the oracle", "",
        "Each cell is the oracle reward of the pick, mean ± SE over prompts, estimated without bias from the m reference "
        "samples per prompt (every n-subset averaged). \"learned − oracle\" is paired by prompt; \"gain kept\" is the "
        "learned pick's gain over n = 1 as a share of the oracle pick's; \"proxy gain\" is the learned reward's own "
        "score of its pick over n = 1, in units of its per-sample std.", "",
        _table(bon_rows(m["best_of_n"])), "",
        "![best-of-n: learned vs oracle](bon_learned_vs_oracle.png)", "",
        verdict_text(m["best_of_n"], m["verdict"]), "",
        "Steps of the learned curve (n/2 → n, paired by prompt): " + ", ".join(
            f"n = {r['n']}: {r['learned_step']:+.3f} ± {r['learned_step_se']:.3f}" for r in m["best_of_n"][1:]) + ".",
        "",
    ]
    if m["examples"]:
        lines += ["## Where the learned pick loses most", "",
                  "Held-out prompts where the learned reward's top sample of all m and the oracle's top sample differ "
                  "most in oracle reward (oracle / learned score):", ""]
        rows = [["prompt", "learned reward's pick", "oracle's pick"]]
        for e in m["examples"]:
            rows.append([_cell(e["prompt"]),
                         f"{_cell(e['learned_pick'])} ({e['learned_pick_oracle']:+.3f} / {e['learned_pick_rm']:+.2f})",
                         f"{_cell(e['oracle_pick'])} ({e['oracle_pick_oracle']:+.3f} / {e['oracle_pick_rm']:+.2f})"])
        lines += [_table(rows), ""]
    lines += ["## Files", "",
              "`rm/` the reward model (`prefalign.reward.load_reward('rm')`, `prefalign label --reward rm`), "
              "`pairs/{train,calibration,test}.jsonl`, `samples.jsonl` (train prompts), `reference_samples.jsonl` "
              f"(held-out prompts; {d['reference_samples']}), `reward-eval/`, `metrics.json`, "
              "`bon_learned_vs_oracle.png`, `timings.json`.", ""]
    return "\n".join(lines)


def _finite(x):
    """NaN and inf as null: metrics.json stays strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
