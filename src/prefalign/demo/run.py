"""``prefalign demo``: the DPO paper's controlled-sentiment experiment, in miniature, offline on a CPU.

Every step is the library call behind a real command:

    prefalign sample    reference samples for the train prompts       (pairs.sample_completions)
    prefalign label     VADER scores → best-vs-worst pairs, ties dropped (pairs.make_pairs)
    prefalign train     LoRA-DPO, reference = the adapter disabled     (train.loop.train)
    prefalign evaluate  held-out prompts: reward, win rate, KL, best-of-n (evaluate.*)

and the output folder holds what each step wrote: prompts/, samples.jsonl, pairs.jsonl, reference_samples.jsonl
(the held-out prompts' reference samples), adapter*/ (the trained LoRA adapter, loadable with ``prefalign evaluate
--model``), metrics.json, report.md, frontier.png, timings.json.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefalign.errors import UserError


# --- defaults (measured on 2 CPU cores; see docs/demo.md) -----------------------------------------------------------
@dataclass
class DemoConfig:
    out: str = "outputs/demo"  # output folder (a previous demo there is replaced)
    seed: int = 0  # seeds sampling, LoRA init and data order
    threads: int = 2  # torch CPU threads (0: torch's default)
    dtype: str = "auto"  # auto | fp32 | bf16: weights' dtype for sampling, training and evaluation (auto: bf16 only
    # where the CPU computes it natively, AVX512-BF16 / AMX; emulated bf16 is several times slower than fp32)
    system: str | None = ""  # system message ("" = an empty one; None = the model's default, 16 tokens longer)
    # sampling and labelling
    train_prompts: int = 128  # train prompts used (of 279), spread evenly over the item list
    n: int = 4  # reference samples per train prompt; best vs worst becomes a pair
    max_new_tokens: int = 40
    sample_batch_size: int = 32
    # LoRA-DPO
    beta: float = 0.1
    sweep_betas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)  # with --sweep
    learning_rate: float = 2e-4
    epochs: float = 2.0
    batch_size: int = 8  # pairs per step
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: str | list = "all-linear"
    # evaluation
    eval_prompts: int = 64  # held-out prompts (of 70)
    n_reference: int = 16  # reference samples per held-out prompt (best-of-n up to 16)
    n_policy: int = 1  # policy samples per held-out prompt
    sweep: bool = False
    quick: bool = False
    decoding: bool = False  # also evaluate decoding-time methods (DeRa over the β adapter; ARGS, Linear Alignment)
    extra: dict = field(default_factory=dict)

    def decoders(self) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
        """(methods over the aligned adapter, methods over the reference model) for ``decoding``."""
        over_policy = [("dera", {"lam": lam}) for lam in (0.5, 2.0)]
        over_reference = [("args", {"k": 10, "w": w}) for w in (2.0, 5.0)]
        over_reference.append(("linear_alignment", {"principle": PRINCIPLE, "alpha": 1.0}))
        return over_policy, over_reference

    def betas(self) -> list[float]:
        return list(self.sweep_betas) if self.sweep else [self.beta]


PRINCIPLE = "Always write in a warm, cheerful and positive tone."
QUICK = dict(train_prompts=48, n=4, eval_prompts=32, n_reference=8, max_new_tokens=24, epochs=2.0, learning_rate=5e-4)


def quick_config(**overrides) -> DemoConfig:
    return DemoConfig(quick=True, **{**QUICK, **overrides})


def spread(items: list, k: int) -> list:
    """``k`` items evenly spread over the list (the item list is grouped by topic)."""
    if k >= len(items):
        return list(items)
    return [items[(i * len(items)) // k] for i in range(k)]


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / "demo.json").is_file():
            raise UserError(str(out), "folder exists and does not hold a previous demo",
                            "choose another --out (the demo replaces only its own output)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_demo(cfg: DemoConfig, log=None, model_folder: str | None = None, reward=None, prompts=None) -> dict:
    """Run the demo; returns the metrics dict (also written to ``cfg.out``).

    ``model_folder``, ``reward`` and ``prompts`` = (train, eval) replace SmolLM2, VADER and the built-in prompts
    (the tests use a tiny model and a stub reward).
    """
    from prefalign.decode.generate import GenOptions
    from prefalign.demo.prompts import split_prompts
    from prefalign.evaluate import EvalConfig, assemble, evaluate_policy, reference_samples, write_report
    from prefalign.evaluate.report import markdown_table, summary_rows
    from prefalign.model import expand_path, load_model, load_tokenizer, quiet_third_party, resolve_dtype
    from prefalign.pairs import make_pairs, sample_completions, score_samples, write_jsonl
    from prefalign.reward import load_reward
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

    # 1. model, reward, prompts ---------------------------------------------------------------------------------
    reward = load_reward(reward if reward is not None else "vader")  # a missing vaderSentiment fails first
    if model_folder is None:
        from prefalign.demo.model import smollm2_folder

        model_folder = str(smollm2_folder(log))
    train_all, eval_all = prompts if prompts is not None else split_prompts()
    train_p, eval_p = spread(train_all, cfg.train_prompts), spread(eval_all, cfg.eval_prompts)
    _prepare_out(out)
    (out / "demo.json").write_text(json.dumps(_jsonable(dataclasses.asdict(cfg)), indent=1))
    write_jsonl(out / "prompts" / "train.jsonl", ({"prompt": p} for p in train_p))
    write_jsonl(out / "prompts" / "eval.jsonl", ({"prompt": p} for p in eval_p))
    tokenizer = load_tokenizer(model_folder)
    model = load_model(model_folder, dtype).eval()
    opts = GenOptions(max_new_tokens=cfg.max_new_tokens, temperature=1.0, seed=cfg.seed,
                      batch_size=cfg.sample_batch_size, system=cfg.system)
    steps = _steps(cfg, len(train_p))
    log(f"demo: {len(train_p)} train prompts × {cfg.n} samples → ≤{len(train_p)} pairs → {steps} LoRA-DPO steps of "
        f"{cfg.batch_size} pairs per β ({', '.join(f'{b:g}' for b in cfg.betas())}); {len(eval_p)} held-out prompts "
        f"× {cfg.n_reference} reference + {cfg.n_policy} policy samples; ≤{cfg.max_new_tokens} new tokens; "
        f"{dtype}, {torch.get_num_threads()} threads")
    log(estimate_line(model, tokenizer, cfg, train_p, len(eval_p), opts))
    timings["setup"] = time.perf_counter() - t_start

    # 2. prefalign sample + prefalign label ----------------------------------------------------------------------
    t = time.perf_counter()
    samples = sample_completions(model, tokenizer, train_p, cfg.n, opts, desc="1/4 sample train")
    score_samples(samples, reward)
    write_jsonl(out / "samples.jsonl", samples.rows())
    pairs, stats = make_pairs(samples.prompts, samples.completions, samples.rewards, samples.chat,
                              system=cfg.system if samples.chat else None)
    if not pairs:
        raise UserError("demo", "labelling produced no pairs (every prompt's samples tied)", "use more samples")
    write_jsonl(out / "pairs.jsonl", pairs)
    log(f"label: {stats.line()}")
    timings["sample+label"] = time.perf_counter() - t

    # 3. reference samples on held-out prompts (the model is still the reference) ----------------------------------
    t = time.perf_counter()
    ecfg = EvalConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.sample_batch_size,
                      n_reference=cfg.n_reference, n_policy=cfg.n_policy, seed=cfg.seed + 1000, system=cfg.system,
                      best_of=tuple(n for n in (1, 2, 4, 8, 16) if n <= cfg.n_reference))
    ref = reference_samples(model, tokenizer, eval_p, reward, ecfg, desc="2/4 sample reference")
    write_jsonl(out / "reference_samples.jsonl", ref.rows())  # `prefalign demo --reward-model` can reuse them
    timings["reference samples"] = time.perf_counter() - t
    del model

    # 4. prefalign train (LoRA-DPO), 5. prefalign evaluate, per β -----------------------------------------------------
    runs = []
    for k, beta in enumerate(cfg.betas()):
        name = "adapter" if not cfg.sweep else f"adapter-beta{beta:g}"
        t = time.perf_counter()
        tcfg = TrainConfig(model=model_folder, data=str(out / "pairs.jsonl"), output_dir=str(out / name),
                           dtype=dtype, objective="dpo", beta=beta, reference="adapter", lora=True,
                           lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_target_modules=cfg.lora_targets,
                           learning_rate=cfg.learning_rate, lr_scheduler="constant", batch_size=cfg.batch_size,
                           num_epochs=cfg.epochs, seed=cfg.seed, report_to=[], max_length=256, overwrite=True)
        log(f"3/4 train β={beta:g} ({k + 1}/{len(cfg.betas())})")
        adapter = train(tcfg, log=lambda msg: None)
        timings[f"train β={beta:g}"] = time.perf_counter() - t
        t = time.perf_counter()
        from peft import PeftModel

        with quiet_third_party():
            policy = PeftModel.from_pretrained(load_model(model_folder, dtype), str(adapter)).eval()
        run = evaluate_policy(policy, tokenizer, eval_p, reward, ecfg, ref, reference_context=policy.disable_adapter,
                              name=f"LoRA-DPO β={beta:g}", desc=f"4/4 evaluate β={beta:g}")
        run.update(beta=beta, label=f"β={beta:g}", adapter=name, train=_train_summary(adapter))
        runs.append(run)
        timings[f"evaluate β={beta:g}"] = time.perf_counter() - t
        if cfg.decoding and (beta == cfg.beta or len(cfg.betas()) == 1):
            t = time.perf_counter()
            runs += _decoding_runs(cfg.decoders()[0], policy, tokenizer, eval_p, reward, ecfg, ref,
                                   policy.disable_adapter, f" (β={beta:g} adapter)")
            timings["decoding over the adapter"] = time.perf_counter() - t
        del policy
    if cfg.decoding:
        t = time.perf_counter()
        base = load_model(model_folder, dtype).eval()
        runs += _decoding_runs(cfg.decoders()[1], base, tokenizer, eval_p, reward, ecfg, ref, None, "")
        timings["decoding over the reference"] = time.perf_counter() - t
        del base

    # 6. report -------------------------------------------------------------------------------------------------
    metrics = assemble(ecfg, eval_p, reward, ref, runs)
    metrics["demo"] = {**_jsonable(dataclasses.asdict(cfg)), "dtype": dtype, "dtype_setting": cfg.dtype,
                       "dtype_reason": why, "model": _model_name(model_folder),
                       "train_prompts_used": len(train_p), "pairs": stats.pairs, "label": dataclasses.asdict(stats),
                       "train_reward_mean": float(samples.rewards.mean())}
    what = "VADER compound sentiment in [−1, 1]" if reward.name == "vader" else f"`{reward.name}`"
    dropped = ", ".join(f"{v} {k}" for k, v in stats.dropped.items() if v) or "none"
    intro = [f"Model: {metrics['demo']['model']} ({dtype}), aligned with LoRA-DPO (rank {cfg.lora_r}, "
             f"{cfg.lora_targets}) on {stats.pairs} best-vs-worst pairs from {len(train_p)} train prompts × {cfg.n} "
             f"reference samples (prompts dropped: {dropped}); learning rate {cfg.learning_rate:g}, "
             f"{cfg.epochs:g} epochs of {cfg.batch_size}-pair steps, seed {cfg.seed}. Reward: {what}. Wall times: "
             "`timings.json`.", ""]
    write_report(out, metrics, title="prefalign demo: controlled sentiment generation", intro=intro)
    timings["total"] = time.perf_counter() - t_start
    (out / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=1))
    print(markdown_table(summary_rows(metrics)))
    best = max((r for r in runs if "adapter" in r), key=lambda r: r["reward_mean"])
    z = best.get("reward_gain_z")
    print(f"\n{best['name']}: mean reward {best['reward_mean']:.3f} vs reference {metrics['reference']['reward_mean']:.3f}"
          f" ({'+' if best['reward_gain'] >= 0 else ''}{best['reward_gain']:.3f}, "
          f"{f'z = {z:.1f}' if z is not None else 'no spread'}), win rate {best['win_rate']:.2f}, "
          f"KL {best['kl']:.2f} nats")
    print(f"report: {out / 'report.md'}  frontier: {out / 'frontier.png'}  adapter: {out / best['adapter']}  "
          f"({timings['total']:.0f} s)")
    return metrics


def estimate_line(model, tokenizer, cfg: DemoConfig, train_prompts: list[str], n_eval: int, opts) -> str:
    """A rough wall time for the whole demo on this machine, from a short timing: the prefill and a few greedy decode
    steps of one full sampling batch, and one forward pass over a training step's rows (a step ≈ 4 such passes: the
    policy's forward and backward, the reference's forward). Greedy, so the probe draws nothing from the seeded
    generators; an upper bound for sampling, where rows that emit EOS end early."""
    import math

    prefill, step, forward, seq = timing_probe(model, tokenizer, train_prompts, opts, cfg.sample_batch_size,
                                               2 * cfg.batch_size, cfg.max_new_tokens)

    def batches(seqs: int) -> int:
        return math.ceil(seqs / cfg.sample_batch_size)

    n_betas = len(cfg.betas())
    decoded = batches(cfg.n * len(train_prompts)) + batches(cfg.n_reference * n_eval)
    decoded += n_betas * batches(cfg.n_policy * n_eval)
    if cfg.decoding:  # DeRa ×2 and Linear Alignment read two streams each, ARGS ×2 one stream plus its reward calls
        decoded += 8 * batches(cfg.n_policy * n_eval)
    sampling = decoded * (prefill + cfg.max_new_tokens * step)
    training = n_betas * (_steps(cfg, len(train_prompts)) + 1) * 4 * forward  # + 1: the memory probe's step
    total = sampling + training

    def fmt(sec: float) -> str:
        return f"{sec / 60:.0f} min" if sec >= 90 else f"{sec:.0f} s"

    return (f"estimate: ~{fmt(total)} on this machine (sampling ~{fmt(sampling)}, training ~{fmt(training)}), from "
            f"timing one {cfg.sample_batch_size}-row sampling batch (prefill {prefill:.2f} s, {step:.2f} s per token) "
            f"and one {seq[0]}-row forward pass ({forward:.2f} s)")


def timing_probe(model, tokenizer, prompts: list[str], opts, batch_rows: int, forward_rows: int, new_tokens: int,
                 probe: int = 4) -> tuple[float, float, float, tuple[int, int]]:
    """(prefill s, s per decode step, forward s, the forward's [rows, width]): the prefill and ``probe`` greedy
    decode steps of one ``batch_rows``-row sampling batch of ``prompts``, and one forward pass over ``forward_rows``
    rows of prompt + ``new_tokens`` tokens (``estimate_line``; ``demo.online`` too)."""
    from prefalign.decode.generate import Stream, encode_prompts, pad_id

    rows = [prompts[i % len(prompts)] for i in range(batch_rows)]
    ids, mask = encode_prompts(tokenizer, rows, opts, device=next(model.parameters()).device)
    stream = Stream(model, ids, mask)
    t = time.perf_counter()
    tokens = stream.prefill().argmax(-1)
    prefill = time.perf_counter() - t
    for _ in range(probe):
        tokens = stream.step(tokens).argmax(-1)
    step = (time.perf_counter() - t - prefill) / probe  # s per decode step of a full batch
    seq = torch.full((forward_rows, ids.shape[1] + new_tokens), pad_id(tokenizer), device=ids.device)
    t = time.perf_counter()
    with torch.no_grad():
        model(input_ids=seq, use_cache=False)
    forward = time.perf_counter() - t
    return prefill, step, forward, tuple(seq.shape)


def _decoding_runs(methods, model, tokenizer, prompts, reward, ecfg, ref, ref_context, suffix: str) -> list[dict]:
    """Decoding-time methods evaluated like the trained runs (``prefalign evaluate --decode``)."""
    from prefalign.evaluate.decoding import evaluate_decoding

    runs = []
    for method, hp in methods:
        shown = ", ".join(f"{k}={v:g}" for k, v in hp.items() if k != "principle")
        run = evaluate_decoding(method, hp, model, tokenizer, prompts, reward, ecfg, ref,
                                reference_context=ref_context, name=f"{method} ({shown}){suffix}")
        run["label"] = f"{method} {shown}"
        runs.append(run)
    return runs


def _steps(cfg: DemoConfig, max_pairs: int) -> int:
    import math

    return max(1, math.ceil(cfg.epochs * math.ceil(max_pairs / cfg.batch_size)))


def _train_summary(out: Path) -> dict:
    """Last logged training metrics (loss, preference accuracy, reward margin) from metrics.jsonl."""
    path = Path(out) / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return {}
    last = rows[-1]
    keys = ("step", "loss", "rewards/accuracies", "rewards/margins")
    return {k: last[k] for k in keys if k in last}


def _model_name(folder: str) -> str:
    from prefalign.demo.model import CACHE_NAME

    return "SmolLM2-135M-Instruct" if Path(folder).name == CACHE_NAME else Path(folder).name


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
