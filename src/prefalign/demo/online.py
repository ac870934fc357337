"""``prefalign demo --online``: the DPO paper's Figure 2 in miniature — the reward–KL frontier of online RL (PPO,
GRPO, RLOO, online DPO) next to offline LoRA-DPO and best-of-n, on SmolLM2-135M-Instruct with VADER, on a CPU.

Every step is the library call behind a real command, as in ``prefalign demo`` (``demo/run.py``):

    prefalign evaluate  reference samples on the held-out prompts (best-of-n comes from them)    (evaluate.*)
    prefalign sample    + label: G reference samples per train prompt → best-vs-worst pairs       (pairs.*)
    prefalign train     LoRA-DPO on those pairs (offline: the reference's samples)                (train.loop.train)
    prefalign train     --method online --objective ppo | grpo | rloo | online_dpo --reward vader (train.loop.train)
    prefalign evaluate  each adapter on the same held-out prompts: reward, win rate, KL(π‖π_ref)  (evaluate.*)

Every method sees the same train prompts and the same number of samples: online, ``steps`` rollouts of
``prompts_per_step`` prompts × ``num_generations`` completions from the current policy; offline, the same prompts ×
``num_generations`` completions from the reference, labelled once. Then a verifiable example: generated arithmetic
problems ("What is 17 + 25? Answer with the number only.", an ``answer`` column), GRPO with the exact-match reward
``math``, greedy accuracy on held-out problems before and after.

The output folder holds report.md (the frontier table, the evaluation table, samples), frontier_online.png,
metrics.json, timings.json, prompts/, pairs.jsonl, one adapter folder per method (``<method>-beta<β>/``, loadable
with ``prefalign evaluate --model``) and arithmetic/ (problems, the adapter, accuracy.json).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefalign.errors import UserError

# One KL coefficient per algorithm, each the library's (= the reference implementation's) default, except GRPO
# (TRL's default is 0: no KL term, no reference) and online DPO (the offline run's β, so the two compare).
BETAS = {"ppo": (0.05,), "grpo": (0.04,), "rloo": (0.05,), "online_dpo": (0.1,)}
NAMES = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "online_dpo": "online DPO", "dpo": "LoRA-DPO (offline)",
         "reinforce_pp": "REINFORCE++"}


# --- defaults (measured on 2 CPU cores; see docs/demo.md#online) ----------------------------------------------------
@dataclass
class OnlineDemoConfig:
    out: str = "outputs/demo-online"  # output folder (a previous online demo there is replaced)
    seed: int = 0  # seeds sampling, LoRA init and data order
    threads: int = 2  # torch CPU threads (0: torch's default)
    dtype: str = "auto"  # auto | fp32 | bf16 (as ``prefalign demo``)
    system: str | None = ""  # system message ("" = an empty one; None = the model's default)
    max_new_tokens: int = 32  # every sample: rollouts, reference samples, evaluation
    sample_batch_size: int = 32
    # online RL: each method runs `steps` rollouts of `prompts_per_step` train prompts × `num_generations`
    methods: tuple[str, ...] = ("ppo", "grpo", "rloo", "online_dpo")
    betas: dict = field(default_factory=lambda: dict(BETAS))  # method → its β values (one frontier point each)
    steps: int = 10
    prompts_per_step: int = 8
    num_generations: int = 4
    learning_rate: float = 5e-4  # every method, offline DPO included (LoRA, constant)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: str | list = "all-linear"
    # offline LoRA-DPO on best-vs-worst of the same number of reference samples (the same prompts)
    offline_dpo: bool = True
    dpo_beta: float = 0.1
    dpo_epochs: float = 1.0  # 1 epoch of batch `prompts_per_step` pairs: the online methods' number of steps
    # evaluation (as ``prefalign demo``: seeds seed + 1000 for the reference, seed + 1001 for each policy)
    eval_prompts: int = 64  # held-out prompts (of 70)
    n_reference: int = 8  # reference samples per held-out prompt (best-of-n up to 8)
    n_policy: int = 1
    # the verifiable example: arithmetic with an exact-match reward
    arithmetic: bool = True
    arith_train: int = 96  # generated train problems (= arith_steps × arith_prompts_per_step: one pass)
    arith_eval: int = 100  # held-out problems (none of them in the train set)
    arith_steps: int = 12
    arith_prompts_per_step: int = 8
    arith_generations: int = 8
    arith_max_new_tokens: int = 12
    arith_learning_rate: float = 5e-4
    arith_reward: str = "math"  # the verifiable reward against the `answer` column (reward/verifiable.py)
    quick: bool = False
    extra: dict = field(default_factory=dict)

    def runs(self) -> list[tuple[str, float]]:
        """(method, β) of every online run, in order."""
        return [(m, float(b)) for m in self.methods for b in self.betas.get(m, BETAS.get(m, (0.05,)))]

    def train_prompts(self) -> int:
        return self.steps * self.prompts_per_step


QUICK = dict(steps=4, prompts_per_step=4, eval_prompts=24, n_reference=4, max_new_tokens=24, learning_rate=1e-3,
             arith_train=16, arith_eval=48, arith_steps=4, arith_prompts_per_step=4, arith_max_new_tokens=10,
             arith_learning_rate=1e-3)


def quick_config(**overrides) -> OnlineDemoConfig:
    return OnlineDemoConfig(quick=True, **{**QUICK, **overrides})


# --- the arithmetic problems --------------------------------------------------------------------------------------
ARITH_TEMPLATE = "What is {a} {op} {b}? Answer with the number only."


def arithmetic_problems(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held-out) rows ``{"prompt", "answer"}``: sums and differences of two-digit numbers and products of
    one-digit ones, every problem distinct, none of the held-out ones in the train set (fixed by ``seed``)."""
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n_train + n_eval:
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 9), rng.randint(2, 9)
        else:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if op == "-" and b > a:
                a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        rows.append({"prompt": ARITH_TEMPLATE.format(a=a, op=op, b=b), "answer": str(value)})
    return rows[n_eval:], rows[:n_eval]


def exact_number(prompts, completions, answer):
    """A fallback exact-match reward (``module:function``): 1.0 when the completion's last integer is the answer."""
    import re

    out = []
    for c, a in zip(completions, answer):
        found = re.findall(r"-?\d+", c.replace(",", ""))
        out.append(None if a is None else float(bool(found) and found[-1] == str(a).strip()))
    return out


# --- the demo -------------------------------------------------------------------------------------------------------
class Clock:
    """Wall and process-CPU seconds per phase (on a shared machine the CPU seconds are the steadier number: with
    one thread they are about the wall time the phase takes on an idle core)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def start(self) -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def stop(self, name: str, t0: tuple[float, float]) -> float:
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0[0]
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - t0[1]
        return self.wall[name]

    def json(self) -> str:
        return json.dumps({**{k: round(v, 1) for k, v in self.wall.items()},
                           "cpu_seconds": {k: round(v, 1) for k, v in self.cpu.items()},
                           "threads": torch.get_num_threads()}, indent=1)


def run_online_demo(cfg: OnlineDemoConfig, log=None, model_folder: str | None = None, reward: str | None = None,
                    prompts=None) -> dict:
    """Run the online demo; returns the metrics dict (also written to ``cfg.out``).

    ``model_folder``, ``reward`` (a reward *spec*: the online method loads it by name) and ``prompts`` =
    (train, eval) replace SmolLM2, VADER and the built-in prompts (the tests use a tiny model and a stub reward).
    """
    from prefalign.data.render import Renderer
    from prefalign.decode.generate import GenOptions
    from prefalign.demo.prompts import split_prompts
    from prefalign.demo.run import _jsonable, _model_name, _prepare_out, spread
    from prefalign.evaluate import EvalConfig, assemble, reference_samples
    from prefalign.evaluate.report import markdown_table
    from prefalign.model import expand_path, load_model, load_tokenizer, resolve_dtype
    from prefalign.pairs import make_pairs, sample_completions, score_samples, write_jsonl
    from prefalign.reward import load_reward

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    clock = Clock()
    t_start = t = clock.start()
    spec = "vader" if reward is None else reward
    if not isinstance(spec, str):
        raise UserError("demo --online", "the reward must be a spec string (the online method loads it by name)",
                        "pass 'vader', 'module:function' or a reward-model folder")
    bad = [m for m in cfg.methods if m not in NAMES or m == "dpo"]
    if bad:
        raise UserError("demo --online", f"unknown online method(s) {', '.join(bad)}",
                        f"use some of: {', '.join(k for k in NAMES if k != 'dpo')}")
    dtype, why = resolve_dtype(cfg.dtype, "cpu")
    log(f"dtype {why}" if why.startswith("auto:") else f"dtype {dtype} ({why})")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(expand_path(cfg.out))

    # 1. model, reward, prompts ---------------------------------------------------------------------------------
    reward_fn = load_reward(spec)  # a missing vaderSentiment fails first
    arith_spec = _arith_reward(cfg.arith_reward, log) if cfg.arithmetic else None
    if model_folder is None:
        from prefalign.demo.model import smollm2_folder

        model_folder = str(smollm2_folder(log))
    train_all, eval_all = prompts if prompts is not None else split_prompts()
    train_p, eval_p = spread(train_all, cfg.train_prompts()), spread(eval_all, cfg.eval_prompts)
    _prepare_out(out)
    (out / "demo.json").write_text(json.dumps({"online": True, **_jsonable(dataclasses.asdict(cfg))}, indent=1))
    tokenizer = load_tokenizer(model_folder)
    render = Renderer(tokenizer)
    # the online method renders each row's prompt as written: the conversation sampling renders (system turn kept)
    write_jsonl(out / "prompts" / "train.jsonl", ({"prompt": render.prompt_row(p, cfg.system)} for p in train_p))
    write_jsonl(out / "prompts" / "eval.jsonl", ({"prompt": p} for p in eval_p))
    model = load_model(model_folder, dtype).eval()
    opts = GenOptions(max_new_tokens=cfg.max_new_tokens, temperature=1.0, seed=cfg.seed,
                      batch_size=cfg.sample_batch_size, system=cfg.system)
    runs_todo = cfg.runs()
    log(f"demo --online: {len(runs_todo)} online runs ({', '.join(f'{NAMES[m]} β={b:g}' for m, b in runs_todo)})"
        f"{' + offline LoRA-DPO' if cfg.offline_dpo else ''}, each {cfg.steps} steps of {cfg.prompts_per_step} "
        f"prompts × {cfg.num_generations} samples ({len(train_p)} train prompts); {len(eval_p)} held-out prompts × "
        f"{cfg.n_reference} reference + {cfg.n_policy} policy samples; ≤{cfg.max_new_tokens} new tokens; "
        f"{dtype}, {torch.get_num_threads()} threads")
    estimate = estimate_online(model, tokenizer, cfg, train_p, len(eval_p), opts)
    log(estimate["line"])
    clock.stop("setup", t)

    # 2. reference samples on the held-out prompts (best-of-n, win rate) -------------------------------------------
    t = clock.start()
    ecfg = EvalConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.sample_batch_size,
                      n_reference=cfg.n_reference, n_policy=cfg.n_policy, seed=cfg.seed + 1000, system=cfg.system,
                      best_of=tuple(n for n in (1, 2, 4, 8, 16) if n <= cfg.n_reference))
    ref = reference_samples(model, tokenizer, eval_p, reward_fn, ecfg, desc="1/4 sample reference")
    clock.stop("reference samples", t)

    # 3. offline LoRA-DPO on the reference's samples of the same prompts ---------------------------------------------
    runs, pairs, label = [], [], None
    dpo_key = f"train dpo β={cfg.dpo_beta:g}"
    if cfg.offline_dpo:
        t = clock.start()
        samples = sample_completions(model, tokenizer, train_p, cfg.num_generations, opts, desc="2/4 sample train")
        score_samples(samples, reward_fn)
        write_jsonl(out / "samples.jsonl", samples.rows())
        pairs, label = make_pairs(samples.prompts, samples.completions, samples.rewards, samples.chat,
                                  system=cfg.system if samples.chat else None, tokenizer=tokenizer)
        write_jsonl(out / "pairs.jsonl", pairs)
        log(f"label: {label.line()}")
        clock.stop(dpo_key, t)  # the offline run's sampling and labelling count as its training
    del model
    if cfg.offline_dpo and pairs:
        t = clock.start()
        log("3/4 train LoRA-DPO (offline)")
        adapter = _train(cfg, model_folder, dtype, out / f"dpo-beta{cfg.dpo_beta:g}", data=out / "pairs.jsonl",
                         objective="dpo", beta=cfg.dpo_beta, batch_size=cfg.prompts_per_step,
                         num_epochs=cfg.dpo_epochs, reference="adapter", max_length=256)
        train_s = clock.stop(dpo_key, t)
        run = _evaluate(cfg, "dpo", cfg.dpo_beta, adapter, model_folder, dtype, tokenizer, eval_p, reward_fn, ecfg,
                        ref, clock, train_s)
        run["train"]["pairs"] = label.pairs
        runs.append(run)
    elif cfg.offline_dpo:
        log("offline DPO skipped: labelling produced no pairs (every prompt's samples tied)")

    # 4. online RL: prefalign train --method online, one run per (method, β) -----------------------------------------
    for k, (method, beta) in enumerate(runs_todo):
        t = clock.start()
        log(f"3/4 train {NAMES[method]} β={beta:g} ({k + 1}/{len(runs_todo)}, online: {cfg.steps} rollouts)")
        adapter = _train(cfg, model_folder, dtype, out / f"{method}-beta{beta:g}", data=out / "prompts" / "train.jsonl",
                         objective=method, beta=beta, batch_size=cfg.prompts_per_step, max_steps=cfg.steps,
                         method="online", reward=spec, num_generations=cfg.num_generations,
                         max_new_tokens=cfg.max_new_tokens, temperature=1.0, reference="adapter",
                         sample_log_steps=max(1, cfg.steps // 2))
        train_s = clock.stop(f"train {method} β={beta:g}", t)
        runs.append(_evaluate(cfg, method, beta, adapter, model_folder, dtype, tokenizer, eval_p, reward_fn, ecfg,
                              ref, clock, train_s))

    # 5. the verifiable example --------------------------------------------------------------------------------------
    arith = None
    if cfg.arithmetic:
        arith = run_arithmetic(cfg, out / "arithmetic", model_folder, dtype, tokenizer, arith_spec, log, clock)

    # 6. report --------------------------------------------------------------------------------------------------
    metrics = assemble(ecfg, eval_p, reward_fn, ref, runs)
    metrics["demo"] = {**_jsonable(dataclasses.asdict(cfg)), "online": True, "dtype": dtype,
                       "dtype_setting": cfg.dtype, "dtype_reason": why, "model": _model_name(model_folder),
                       "train_prompts_used": len(train_p), "reward_spec": spec,
                       "label": dataclasses.asdict(label) if label is not None else None,
                       "estimate_s": {k: round(v, 1) for k, v in estimate.items() if k != "line"}}
    if arith is not None:
        metrics["arithmetic"] = arith
    table = frontier_rows(metrics)
    write_online_report(out, metrics, table, cfg, reward_fn)
    total = clock.stop("total", t_start)
    (out / "timings.json").write_text(clock.json())
    print(markdown_table(table))
    if arith is not None:
        print(f"\narithmetic ({arith['reward']}, greedy, {arith['eval_problems']} held-out problems): accuracy "
              f"{arith['before']['accuracy']:.2f} before → {arith['after']['accuracy']:.2f} after "
              f"{arith['steps']} GRPO steps")
    print(f"report: {out / 'report.md'}  frontier: {out / 'frontier_online.png'}  ({total:.0f} s)")
    return metrics


def _arith_reward(spec: str, log) -> str:
    """The verifiable reward's spec: ``math`` where ``reward/verifiable.py`` provides it, else this module's
    exact-match function (said in the log and the report)."""
    from prefalign.reward import load_reward

    try:
        load_reward(spec)
        return spec
    except UserError as e:
        fallback = "prefalign.demo.online:exact_number"
        log(f"reward '{spec}' is not available ({e.what}); using {fallback}")
        return fallback


def _train(cfg: OnlineDemoConfig, model_folder: str, dtype: str, out: Path, data: Path, **kw) -> Path:
    """``prefalign train`` in process: LoRA on ``model_folder``, the demo's shared settings, ``kw`` per run."""
    from prefalign.train.config import TrainConfig
    from prefalign.train.loop import train

    base = dict(model=model_folder, data=str(data), output_dir=str(out), dtype=dtype, lora=True, lora_r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha, lora_target_modules=cfg.lora_targets,
                learning_rate=cfg.learning_rate, lr_scheduler="constant", seed=cfg.seed, report_to=[],
                overwrite=True, memory_probe=False)  # the engine's progress bar shows each rollout's reward
    return train(TrainConfig(**{**base, **kw}), log=lambda msg: None)


def _evaluate(cfg, method: str, beta: float, adapter: Path, model_folder: str, dtype: str, tokenizer, eval_p,
              reward_fn, ecfg, ref, clock: Clock, train_s: float) -> dict:
    """``prefalign evaluate`` of one adapter against its base (the adapter disabled), as the offline demo does."""
    from peft import PeftModel

    from prefalign.demo.run import _train_summary
    from prefalign.evaluate import evaluate_policy
    from prefalign.model import load_model, quiet_third_party

    t = clock.start()
    name = f"{NAMES[method]} β={beta:g}"
    with quiet_third_party():
        policy = PeftModel.from_pretrained(load_model(model_folder, dtype), str(adapter)).eval()
    run = evaluate_policy(policy, tokenizer, eval_p, reward_fn, ecfg, ref, reference_context=policy.disable_adapter,
                          name=name, desc=f"4/4 evaluate {name}")
    del policy
    run.update(algorithm=method, beta=beta, label=name, adapter=adapter.name,
               train={**_train_summary(adapter), **_reward_curve(adapter)}, train_s=round(train_s, 1))
    run["eval_s"] = round(clock.stop(f"evaluate {method} β={beta:g}", t), 1)
    return run


def _reward_curve(folder: Path) -> dict:
    """The mean rollout reward of the first and the last logged step (online runs' metrics.jsonl)."""
    path = Path(folder) / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    rows = [r for r in rows if "reward" in r and "step" in r]
    if not rows:
        return {}
    return {"rollout_reward_first": rows[0]["reward"], "rollout_reward_last": rows[-1]["reward"],
            "steps": rows[-1]["step"]}


# --- arithmetic -----------------------------------------------------------------------------------------------------
def run_arithmetic(cfg: OnlineDemoConfig, out: Path, model_folder: str, dtype: str, tokenizer, spec: str,
                   log, clock: Clock | None = None) -> dict:
    """GRPO with a verifiable reward on generated problems; greedy accuracy on held-out problems before/after."""
    from peft import PeftModel

    from prefalign.data.render import Renderer
    from prefalign.model import load_model, quiet_third_party
    from prefalign.pairs import write_jsonl
    from prefalign.reward import load_reward

    train_rows, eval_rows = arithmetic_problems(cfg.arith_train, cfg.arith_eval, seed=cfg.seed)
    render = Renderer(tokenizer)
    write_jsonl(out / "train.jsonl", ({**r, "prompt": render.prompt_row(r["prompt"], cfg.system)}
                                      for r in train_rows))
    write_jsonl(out / "eval.jsonl", eval_rows)
    reward = load_reward(spec)
    clock = clock or Clock()
    t = clock.start()
    base = load_model(model_folder, dtype).eval()
    before = arithmetic_accuracy(base, tokenizer, eval_rows, reward, cfg, desc="arithmetic: before")
    del base
    log(f"arithmetic: greedy accuracy before {before['accuracy']:.2f} on {len(eval_rows)} held-out problems; "
        f"GRPO {cfg.arith_steps} steps of {cfg.arith_prompts_per_step} problems × {cfg.arith_generations} samples")
    t_before = clock.stop("arithmetic: accuracy before", t)
    t = clock.start()
    adapter = _train(cfg, model_folder, dtype, out / "adapter", data=out / "train.jsonl", method="online",
                     objective="grpo", beta=0.0, reward=spec, num_generations=cfg.arith_generations,
                     max_new_tokens=cfg.arith_max_new_tokens, temperature=1.0, batch_size=cfg.arith_prompts_per_step,
                     max_steps=cfg.arith_steps, learning_rate=cfg.arith_learning_rate,
                     sample_log_steps=max(1, cfg.arith_steps // 2))
    t_train = clock.stop("arithmetic: train", t)
    t = clock.start()
    with quiet_third_party():
        policy = PeftModel.from_pretrained(load_model(model_folder, dtype), str(adapter)).eval()
    after = arithmetic_accuracy(policy, tokenizer, eval_rows, reward, cfg, desc="arithmetic: after")
    del policy
    t_after = clock.stop("arithmetic: accuracy after", t)
    result = {"reward": spec, "decoding": "greedy", "eval_problems": len(eval_rows), "train_problems": len(train_rows),
              "steps": cfg.arith_steps, "generations": cfg.arith_generations,
              "prompts_per_step": cfg.arith_prompts_per_step, "max_new_tokens": cfg.arith_max_new_tokens,
              "learning_rate": cfg.arith_learning_rate, "before": before, "after": after,
              "train": _reward_curve(adapter),
              "seconds": {"accuracy before": round(t_before, 1), "train": round(t_train, 1),
                          "accuracy after": round(t_after, 1)}}
    (out / "accuracy.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    log(f"arithmetic: greedy accuracy {before['accuracy']:.2f} → {after['accuracy']:.2f}")
    return result


def arithmetic_accuracy(model, tokenizer, rows: list[dict], reward, cfg: OnlineDemoConfig, desc: str) -> dict:
    """Greedy accuracy (the verifiable reward's mean) on ``rows``, with a few examples."""
    from prefalign.decode.generate import GenOptions
    from prefalign.pairs import sample_completions

    opts = GenOptions(max_new_tokens=cfg.arith_max_new_tokens, temperature=0.0, seed=cfg.seed,
                      batch_size=max(cfg.sample_batch_size, 32), system=cfg.system)
    s = sample_completions(model, tokenizer, [r["prompt"] for r in rows], 1, opts, desc=desc)
    texts = [row[0] for row in s.completions]
    scores = reward([r["prompt"] for r in rows], texts, columns={"answer": [r["answer"] for r in rows]},
                    allow_none=True)
    ok = ~torch.isnan(scores)
    acc = float(scores[ok].mean()) if ok.any() else float("nan")
    n = int(ok.sum())
    se = math.sqrt(max(acc * (1 - acc), 0.0) / n) if n else float("nan")
    return {"accuracy": acc, "accuracy_se": se, "correct": int(scores[ok].sum()), "judged": n,
            "examples": [{"prompt": r["prompt"], "answer": r["answer"], "completion": c, "reward": float(v)}
                         for r, c, v in list(zip(rows, texts, scores.tolist()))[:6]]}


# --- timing estimate ------------------------------------------------------------------------------------------------
def estimate_online(model, tokenizer, cfg: OnlineDemoConfig, train_prompts: list[str], n_eval: int, opts) -> dict:
    """A rough wall time for the demo on this machine, from ``run.timing_probe``: one sampling batch of P·G rows and
    one forward pass over a rollout (P·G rows of prompt + max_new_tokens). Per online step: the rollout, the
    rollout-time log-probs (policy and reference: 2 forwards, when the algorithm has a KL term) and the update
    (forward + backward ≈ 3 forwards); online DPO updates on P pairs (2P rows) instead. Offline DPO: P·G reference
    samples, then its steps on P pairs. The arithmetic part is scaled from the same numbers by rows × tokens."""
    from prefalign.demo.run import timing_probe

    rows = cfg.prompts_per_step * cfg.num_generations
    prefill, step, forward, shape = timing_probe(model, tokenizer, train_prompts, opts, rows, rows,
                                                 cfg.max_new_tokens)
    sample_batch = prefill + cfg.max_new_tokens * step  # one rollout / one sampling batch of `rows` rows
    batches = lambda seqs: math.ceil(seqs / cfg.sample_batch_size)  # noqa: E731
    per_batch = sample_batch * cfg.sample_batch_size / rows
    pair_fwd = forward * 2 * cfg.prompts_per_step / rows
    online = 0.0
    for method, beta in cfg.runs():
        if method == "online_dpo":
            update = 4 * pair_fwd  # policy forward + backward, reference forward on 2P rows
        else:
            update = 3 * forward + (2 * forward if beta > 0 or method == "ppo" else 0.0)
        online += cfg.steps * (sample_batch + update)
    dpo_steps = math.ceil(cfg.dpo_epochs * cfg.steps) if cfg.offline_dpo else 0
    offline = (batches(rows * cfg.steps) * per_batch + dpo_steps * 4 * pair_fwd) if cfg.offline_dpo else 0.0
    n_runs = len(cfg.runs()) + (1 if cfg.offline_dpo else 0)
    policy_eval = batches(cfg.n_policy * n_eval) * per_batch + 2 * forward * cfg.n_policy * n_eval / rows
    evaluation = batches(cfg.n_reference * n_eval) * per_batch + n_runs * policy_eval
    arith = 0.0
    if cfg.arithmetic:
        a_rows = cfg.arith_prompts_per_step * cfg.arith_generations
        width = 16 + cfg.arith_max_new_tokens  # arithmetic prompts are a few tokens shorter than the sentiment ones
        scale = a_rows * width / (shape[0] * shape[1])
        a_step = cfg.arith_max_new_tokens * step * a_rows / rows + 3 * forward * scale
        a_eval = 2 * batches(cfg.arith_eval) * cfg.arith_max_new_tokens * step * cfg.sample_batch_size / rows
        arith = cfg.arith_steps * a_step + a_eval
    total = online + offline + evaluation + arith

    def fmt(sec: float) -> str:
        return f"{sec / 60:.0f} min" if sec >= 90 else f"{sec:.0f} s"

    line = (f"estimate: ~{fmt(total)} on this machine (online RL ~{fmt(online)}, offline DPO ~{fmt(offline)}, "
            f"evaluation ~{fmt(evaluation)}, arithmetic ~{fmt(arith)}), from timing one {rows}-row sampling batch "
            f"(prefill {prefill:.2f} s, {step:.2f} s per token) and one {shape[0]}-row forward pass ({forward:.2f} s)")
    return {"line": line, "total": total, "online": online, "offline_dpo": offline, "evaluation": evaluation,
            "arithmetic": arith, "probe_prefill": prefill, "probe_step": step, "probe_forward": forward}


# --- report ---------------------------------------------------------------------------------------------------------
def frontier_rows(metrics: dict) -> list[list[str]]:
    """Header + the reference, best-of-n and one row per trained run: method, β, reward, KL, win rate, wall time."""
    ref = metrics["reference"]
    rows = [["method", "β", "reward (mean ± SE)", "KL(π‖π_ref) nats", "win rate vs ref", "train wall time"]]
    rows.append([f"reference ({ref['samples_per_prompt']} samples/prompt)", "—",
                 f"{ref['reward_mean']:.3f} ± {ref['reward_se']:.3f}", "0", f"{ref['win_rate']:.2f}", "—"])
    for b in metrics.get("best_of_n", []):
        if b["n"] > 1:
            rows.append([f"best-of-{b['n']} (reference)", "—", f"{b['reward_mean']:.3f} ± {b['reward_se']:.3f}",
                         f"{b['kl']:.3f} (analytic)", "—", "—"])
    for r in metrics["runs"]:
        rows.append([NAMES.get(r.get("algorithm"), r["name"]), f"{r['beta']:g}",
                     f"{r['reward_mean']:.3f} ± {r['reward_se']:.3f}", f"{r['kl']:.3f} ± {r['kl_se']:.3f}",
                     f"{r['win_rate']:.2f} ± {r['win_rate_se']:.2f}", f"{r['train_s']:.0f} s"])
    return rows


def plot_online_frontier(metrics: dict, path: str | Path, title: str) -> Path:
    """Mean reward against KL(π‖π_ref) (± 1 SE): best-of-n from the reference, one colour per method (its β values
    joined by a line), the reference at the origin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.2, 4.6), dpi=120)
    bon = metrics.get("best_of_n", [])
    if bon:
        ax.errorbar([b["kl"] for b in bon], [b["reward_mean"] for b in bon], yerr=[b["reward_se"] for b in bon],
                    marker="o", color="tab:gray", capsize=3, label="best-of-n from reference (analytic KL)")
        for b in bon:
            ax.annotate(f"n={b['n']}", (b["kl"], b["reward_mean"]), textcoords="offset points", xytext=(4, -12),
                        fontsize=8, color="tab:gray")
    colors = {"dpo": "tab:blue", "ppo": "tab:red", "grpo": "tab:green", "rloo": "tab:orange",
              "online_dpo": "tab:purple", "reinforce_pp": "tab:brown"}
    markers = {"dpo": "s", "online_dpo": "D"}
    groups: dict[str, list[dict]] = {}
    for r in metrics["runs"]:
        groups.setdefault(r.get("algorithm", r["name"]), []).append(r)
    for method, runs in groups.items():
        runs = sorted(runs, key=lambda r: r["kl"])
        color = colors.get(method, "tab:olive")
        ax.errorbar([r["kl"] for r in runs], [r["reward_mean"] for r in runs], xerr=[r["kl_se"] for r in runs],
                    yerr=[r["reward_se"] for r in runs], marker=markers.get(method, "^"), color=color, capsize=3,
                    linestyle="-" if len(runs) > 1 else "none", label=NAMES.get(method, method))
        for r in runs:
            ax.annotate(f"β={r['beta']:g}", (r["kl"], r["reward_mean"]), textcoords="offset points", xytext=(5, 5),
                        fontsize=8, color=color)
    ref = metrics["reference"]
    ax.scatter([0], [ref["reward_mean"]], marker="*", s=120, color="black", zorder=5, label="reference")
    ax.set_xlabel("KL(π ‖ π_ref)  [nats per completion]")
    ax.set_ylabel(f"mean reward ({metrics['eval'].get('reward', 'reward')}), held-out prompts")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # off the points
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_online_report(out: Path, metrics: dict, table: list[list[str]], cfg: OnlineDemoConfig, reward_fn) -> None:
    """metrics.json, frontier_online.png and report.md (the frontier table first, then ``prefalign evaluate``'s
    table and samples, then the arithmetic example)."""
    import os

    from prefalign.evaluate.report import markdown_table, render_markdown

    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, ensure_ascii=False))
    os.replace(tmp, out / "metrics.json")
    title = "prefalign demo --online: reward vs KL, online RL next to offline DPO and best-of-n"
    plot_online_frontier(metrics, out / "frontier_online.png", title="Online RL vs offline DPO vs best-of-n")
    what = "VADER compound sentiment in [−1, 1]" if reward_fn.name == "vader" else f"`{reward_fn.name}`"
    d = metrics["demo"]
    intro = [f"Model: {d['model']} ({d['dtype']}), LoRA rank {cfg.lora_r} ({cfg.lora_targets}), learning rate "
             f"{cfg.learning_rate:g} constant, seed {cfg.seed}. Reward: {what}. Every method sees the same "
             f"{d['train_prompts_used']} train prompts and {d['train_prompts_used'] * cfg.num_generations} samples: "
             f"online, {cfg.steps} rollouts of {cfg.prompts_per_step} prompts × {cfg.num_generations} completions "
             f"from the current policy (`prefalign train --method online`); offline DPO, {cfg.num_generations} "
             f"reference samples per prompt, best vs worst as pairs (β {cfg.dpo_beta:g}, {cfg.dpo_epochs:g} epoch(s) "
             f"of {cfg.prompts_per_step}-pair steps). Train wall time: training only, plus sampling and labelling "
             "for offline DPO (evaluation times and every phase: `timings.json`).", "",
             "## Frontier", "", markdown_table(table), "", "![reward vs KL](frontier_online.png)", ""]
    text = render_markdown(metrics, title, intro)
    text = text.replace("## Reward vs KL\n\n![reward vs KL](frontier.png)\n\n", "")  # ours is in the intro
    if metrics.get("arithmetic") is not None:
        text = text.rstrip("\n") + "\n\n" + "\n".join(arithmetic_section(metrics["arithmetic"]))
    (out / "report.md").write_text(text, encoding="utf-8")


def arithmetic_section(a: dict) -> list[str]:
    b, f = a["before"], a["after"]
    lines = ["## Verifiable reward: arithmetic", "",
             f"Generated problems (\"{ARITH_TEMPLATE.format(a=17, op='+', b=25)}\", sums and differences of two-digit "
             f"numbers, products of one-digit ones) with an `answer` column; reward `{a['reward']}` (1 if the "
             f"completion's final number equals the answer, else 0); GRPO (β 0) for {a['steps']} steps of "
             f"{a['prompts_per_step']} problems × {a['generations']} samples, ≤ {a['max_new_tokens']} new tokens, "
             f"learning rate {a['learning_rate']:g}, on {a['train_problems']} train problems. Accuracy: greedy "
             f"decoding on {a['eval_problems']} held-out problems (none in the train set).", "",
             "| | greedy accuracy (± SE) | correct |", "|---|---|---|",
             f"| before | {b['accuracy']:.3f} ± {b['accuracy_se']:.3f} | {b['correct']}/{b['judged']} |",
             f"| after {a['steps']} GRPO steps | {f['accuracy']:.3f} ± {f['accuracy_se']:.3f} | "
             f"{f['correct']}/{f['judged']} |", ""]
    tr = a.get("train") or {}
    if tr:
        lines += [f"Mean reward of the sampled rollouts (temperature 1): {tr['rollout_reward_first']:.3f} at the "
                  f"first step, {tr['rollout_reward_last']:.3f} at the last.", ""]
    lines += ["| problem | answer | before | after |", "|---|---|---|---|"]
    for x, y in zip(b["examples"], f["examples"]):
        cell = lambda s: " ".join(s.replace("|", "\\|").split()) or "(empty)"  # noqa: E731
        lines.append(f"| {cell(x['prompt'])} | {x['answer']} | {cell(x['completion'])} ({x['reward']:.0f}) | "
                     f"{cell(y['completion'])} ({y['reward']:.0f}) |")
    return lines + [""]
