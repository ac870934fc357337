"""Side-by-side reward-model benchmark: prefalign (``method: reward``) vs TRL's RewardTrainer, same model and pairs.

    python bench/rm_vs_trl.py [--device cpu|cuda] [--quick] [--steps N] [--warmup N] [--workloads R1,R2]
                              [--runs prefalign,prefalign_separate,trl,...] [--threads 2] [--json out.json]

The model is bench/dpo_vs_trl.py's W1 Llama (hidden 512, 6 layers, 8 heads, intermediate 1408, vocab 16,000, random
weights from seed 0) as a sequence classifier with one output: the parent builds it once
(``AutoModelForSequenceClassification.from_pretrained(W1 folder, num_labels=1)`` after ``torch.manual_seed(0)``) and
saves it with its score head, so both sides start from the same weights, head included. Full fine-tuning, fp32 on
CPU (bf16 weights on CUDA), Bradley–Terry loss, AdamW lr 1e-5, betas (0.9, 0.999), eps 1e-8, no weight decay, linear
schedule without warm-up, clipping 1.0, the same pairs in the same order (TRL: ``train_sampling_strategy
="sequential"``; prefalign: ``shuffle: false``), no gradient checkpointing on either side unless the run's name says
``ckpt`` (TRL's own default is on: run ``trl_ckpt`` for it).

Rows are TRL's standard preference format (prompt / chosen / rejected strings) over a word-level tokenizer (one
token per word). Each completion ends in the text ``<eos>``, so TRL does not append another and prefalign (which
never appends one) scores the same ids: ``prompt + chosen`` and ``prompt + rejected``, ``completion`` tokens each
including the EOS. Every worker reports a digest of the exact token sequences it scored at each step, and the
parent checks that all runs scored identical sequences; the step-1 loss (before any update) must then agree to
~1e-5 in fp32.

Each run is its own process (so ``ru_maxrss`` at the end is its own peak: RSS high-water mark on CPU, including the
Python runtime and imported libraries; ``torch.cuda.max_memory_allocated`` on GPU). The processes are started
together and driven in lock-step through a line protocol (bench/grpo_vs_trl.py's ``Worker``/``Proto``): step k of
one run, then step k of the next — the order reversed on every other step — so only one run computes at a time and
drift in a shared machine's speed hits every run alike. Step time: prefalign = the engine's ``_step`` (collate,
forward, backward, clip, AdamW, scheduler), TRL = ``on_step_begin`` → ``on_step_end`` (forward, backward, clip,
AdamW, scheduler; its collate happens before ``on_step_begin``, so is not counted). Medians over the measured steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_vs_trl import QUICK as TINY_MODEL  # noqa: E402
from dpo_vs_trl import WORKLOADS as DPO_WORKLOADS  # noqa: E402
from dpo_vs_trl import gemm_peak, make_assets, peak_memory  # noqa: E402
from grpo_vs_trl import Proto, Worker, WorkerFailed, _sync, rss_now_mib, step_clock  # noqa: E402

MODEL_KEYS = ("hidden", "layers", "heads", "inter", "vocab")
MODEL = {k: DPO_WORKLOADS["W1"][k] for k in MODEL_KEYS}  # the W1 model of bench/dpo_vs_trl.py
WORKLOADS = {  # fixed so numbers compare across versions; completion = tokens per side including the EOS
    "R1": dict(prompt=256, completion=64, pairs=8),
    "R2": dict(prompt=32, completion=128, pairs=8),
}
QUICK = dict(prompt=32, completion=16, pairs=4)  # --quick: with the tiny model of dpo_vs_trl.py, seconds
LR = 1e-5
RUNS = {  # side → label
    "prefalign": "prefalign",  # layout shared_prefix (the default): the prompt once per pair
    "prefalign_separate": "prefalign separate",  # TRL's layout (every sequence its own row) in prefalign's loop
    "trl": "TRL",  # RewardTrainer, gradient checkpointing off (as prefalign)
    "prefalign_ckpt": "prefalign ckpt",  # shared_prefix + gradient_checkpointing: true
    "trl_ckpt": "TRL ckpt (default)",  # RewardTrainer with its default gradient_checkpointing=True
}
DEFAULT_RUNS = "prefalign,prefalign_separate,trl"
PEERS = {"prefalign": "trl", "prefalign_separate": "trl", "prefalign_ckpt": "trl_ckpt"}


def digest(seqs: list[list[int]]) -> str:
    return hashlib.sha1(json.dumps(seqs).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Assets: the W1 causal LM of dpo_vs_trl.py turned into a reward model (head saved), and TRL-format pairs.
def make_rm_assets(folder: Path, model: dict, w: dict, steps: int, seed: int = 0) -> tuple[Path, Path]:
    import random

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the expected load report (lm_head dropped, score head new) and progress bars
    hf_logging.disable_progress_bar()
    lm_dir, _ = make_assets(folder, {**model, "prompt": 1, "completion": 2, "pairs": 1}, 1, seed)
    torch.manual_seed(seed)
    rm = AutoModelForSequenceClassification.from_pretrained(lm_dir, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = 0
    rm_dir = folder / "reward-model"
    rm.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(lm_dir).save_pretrained(rm_dir)
    rng = random.Random(seed)
    words = lambda n: " ".join(f"w{rng.randrange(model['vocab'] - 2)}" for _ in range(n))  # noqa: E731
    rows = [{"prompt": words(w["prompt"]), "chosen": " " + words(w["completion"] - 1) + " <eos>",
             "rejected": " " + words(w["completion"] - 1) + " <eos>"} for _ in range(w["pairs"] * steps)]
    data = folder / "rm_pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rm_dir, data


# ----------------------------------------------------------------------------------------------------------------
# Workers
def run_prefalign(args, proto: Proto, layout: str, ckpt: bool) -> None:
    from prefalign.train.config import TrainConfig
    from prefalign.train.loop import build

    dev = args.device
    cfg = TrainConfig(model=args.model_dir, data=args.data, output_dir=args.out, method="reward", objective="bt",
                      learning_rate=LR, batch_size=args.pairs, max_steps=args.steps, lr_scheduler="linear",
                      max_length=None, shuffle=False, layout=layout, gradient_checkpointing=ckpt, report_to=[],
                      progress=False, dtype="bf16" if dev == "cuda" else "fp32", seed=0)
    engine = build(cfg, log=lambda *a: print(*a, file=sys.stderr, flush=True))
    m = engine.method
    cap: dict = {}
    orig_mb = m.micro_batches

    def micro_batches(step, idx, rank, world):
        out = orig_mb(step, idx, rank, world)
        cap["idx"], cap["positions"] = list(idx), sum(mb.data.input_ids.numel() for mb in out)
        return out

    m.micro_batches = micro_batches
    orig_step = engine._step

    def step(s, health):
        if s == 0:
            proto.send("READY", {"rss_mib": rss_now_mib()})
            proto.wait()
        _sync(dev)
        t = time.perf_counter()
        metrics = orig_step(s, health)
        _sync(dev)
        dt = time.perf_counter() - t
        exs = [m.examples[i] for i in cap["idx"]]
        seqs = [e.prompt_ids + e.chosen_ids for e in exs] + [e.prompt_ids + e.rejected_ids for e in exs]
        proto.send("STEP", {"step_s": dt, "loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                            "tokens": sum(map(len, seqs)), "positions": cap["positions"], "digest": digest(seqs)})
        proto.wait()
        return metrics

    engine._step = step
    engine.train()
    proto.send("RESULT", {"peak_mib": peak_memory(dev)})


def run_trl(args, proto: Proto, ckpt: bool) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    dev = args.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, dtype=dtype)  # num_labels=1, head saved
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    clock: dict = {}
    cap: dict = {}

    class Clock(step_clock(proto, dev, clock)):
        def on_log(self, a, s, c, logs=None, **k):
            if logs and "loss" in logs and "dt" in clock:
                ids, mask = cap.pop("batch")
                seqs = [row[: int(n)].tolist() for row, n in zip(ids.cpu(), mask.sum(-1).cpu())]
                proto.send("STEP", {"step_s": clock.pop("dt"), "loss": logs["loss"],
                                    "grad_norm": logs.get("grad_norm", float("nan")), "tokens": sum(map(len, seqs)),
                                    "positions": ids.numel(), "digest": digest(seqs)})
                proto.wait()

    cfg = RewardConfig(output_dir=args.out, learning_rate=LR, per_device_train_batch_size=args.pairs,
                       max_steps=args.steps, lr_scheduler_type="linear", logging_steps=1, save_strategy="no",
                       report_to="none", max_length=None, gradient_checkpointing=ckpt, bf16=False, use_cpu=dev == "cpu",
                       seed=0, disable_tqdm=True, dataloader_drop_last=True, train_sampling_strategy="sequential")
    tr = RewardTrainer(model=model, args=cfg, train_dataset=load_dataset("json", data_files=args.data, split="train"),
                       processing_class=tok, callbacks=[Clock()])
    orig_loss = tr.compute_loss

    def compute_loss(model, inputs, *a, **k):
        if model.training:
            cap["batch"] = (inputs["input_ids"], inputs["attention_mask"])  # references: read after the step
        return orig_loss(model, inputs, *a, **k)

    tr.compute_loss = compute_loss
    tr.train()
    proto.send("RESULT", {"peak_mib": peak_memory(dev)})


def worker(args) -> None:
    import torch

    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    proto = Proto()
    if args.side.startswith("trl"):
        return run_trl(args, proto, ckpt=args.side == "trl_ckpt")
    layout = "separate" if args.side == "prefalign_separate" else "shared_prefix"
    return run_prefalign(args, proto, layout, ckpt=args.side == "prefalign_ckpt")


# ----------------------------------------------------------------------------------------------------------------
# Parent
def lockstep(sides: list[str], common: list[str], tmp: Path, steps: int) -> dict:
    """One process per run, started together; then step k of each run in turn (order reversed every other step)."""
    workers = [Worker(side, [sys.executable, __file__, "--side", side, "--out", str(tmp / side), *common],
                      tmp / f"{side}.log") for side in sides]
    res = {w.label: {"steps": []} for w in workers}
    try:
        for w in workers:
            res[w.label]["rss_setup_mib"] = w.expect("READY")["rss_mib"]
        for k in range(steps):
            for w in workers if k % 2 == 0 else workers[::-1]:
                w.say("go")
                res[w.label]["steps"].append(w.expect("STEP"))
        for w in workers:
            w.say("end")
            res[w.label].update(w.expect("RESULT"))
            w.proc.wait()
    except WorkerFailed as e:
        print(f"  failed: {e}", flush=True)
        res = {k: v for k, v in res.items() if "peak_mib" in v}
    finally:
        for w in workers:
            w.kill()
    return res


def summarize(res: dict, w: dict, warmup: int) -> dict:
    rows = {}
    for side, r in res.items():
        meas = r["steps"][warmup:] or r["steps"]
        step = statistics.median(s["step_s"] for s in meas)
        rows[side] = dict(step_s=step, pairs_s=w["pairs"] / step, tokens_s=meas[0]["tokens"] / step,
                          positions=meas[0]["positions"], peak_mib=r["peak_mib"], rss_setup_mib=r["rss_setup_mib"],
                          losses=[s["loss"] for s in r["steps"]], grad_norms=[s["grad_norm"] for s in r["steps"]],
                          times=[s["step_s"] for s in r["steps"]], digests=[s["digest"] for s in r["steps"]],
                          tokens=[s["tokens"] for s in r["steps"]])
    return rows


def print_table(title: str, rows: dict) -> None:
    print(f"\n{title}")
    print(f"{'run':<20}{'step s':>8}{'pairs/s':>9}{'tokens/s':>10}{'positions/step':>16}{'setup MiB':>11}"
          f"{'peak MiB':>10}{'loss 1':>11}{'loss last':>11}")
    for side, r in rows.items():
        print(f"{RUNS[side]:<20}{r['step_s']:>8.3f}{r['pairs_s']:>9.2f}{r['tokens_s']:>10.0f}{r['positions']:>16}"
              f"{r['rss_setup_mib']:>11.0f}{r['peak_mib']:>10.0f}{r['losses'][0]:>11.6f}{r['losses'][-1]:>11.6f}")
    print("per step (warm-up steps first):")
    for side, r in rows.items():
        print(f"  {RUNS[side]:<18} loss   " + " ".join(f"{x:.7f}" for x in r["losses"]))
        print(f"  {'':<18} step s " + " ".join(f"{x:>9.3f}" for x in r["times"]))


def print_ratios(rows: dict, warmup: int) -> dict:
    out = {}
    ref = next(iter(rows.values()), None)
    if ref is not None:
        same = all(r["digests"] == ref["digests"] for r in rows.values())
        print(f"same token sequences scored by every run at every step: {'yes' if same else 'NO'} "
              f"({len(ref['digests'])} steps, {ref['tokens'][0]} real tokens per step)")
        out["same_sequences"] = same
    for ours, peer in PEERS.items():
        if ours not in rows or peer not in rows:
            continue
        a, b = rows[ours], rows[peer]
        per_step = sorted(tb / ta for ta, tb in zip(a["times"][warmup:], b["times"][warmup:]))
        r = dict(pairs_s=a["pairs_s"] / b["pairs_s"], memory=a["peak_mib"] / b["peak_mib"],
                 per_step_median=statistics.median(per_step), per_step_range=(per_step[0], per_step[-1]),
                 loss1_gap=abs(a["losses"][0] - b["losses"][0]),
                 loss_gap=max(abs(x - y) for x, y in zip(a["losses"], b["losses"])),
                 grad_norm_gap=max(abs(x - y) for x, y in zip(a["grad_norms"], b["grad_norms"])))
        out[f"{ours} / {peer}"] = r
        print(f"{RUNS[ours]} / {RUNS[peer]}: pairs/s x{r['pairs_s']:.2f} (per-step ratios: median "
              f"x{r['per_step_median']:.2f}, range {r['per_step_range'][0]:.2f}-{r['per_step_range'][1]:.2f}), "
              f"peak memory x{r['memory']:.2f}; step-1 loss gap {r['loss1_gap']:.1e}, max loss-curve gap "
              f"{r['loss_gap']:.1e}, max grad-norm gap {r['grad_norm_gap']:.1e}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny model and shapes, 1 warm-up + 2 measured steps: a "
                                                        "smoke test of the harness in seconds")
    p.add_argument("--workloads", default="R1,R2")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma list of {', '.join(RUNS)} (or 'all')")
    p.add_argument("--steps", type=int, help="measured steps (default 5; 2 with --quick)")
    p.add_argument("--warmup", type=int, help="warm-up steps before them (default 2; 1 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process on CPU")
    p.add_argument("--json", help="also write the results here")
    for hidden in ("side", "model_dir", "data", "out"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    p.add_argument("--pairs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--total_steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        args.steps = args.total_steps
        return worker(args)
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    measured = args.steps if args.steps is not None else (2 if args.quick else 5)
    steps = warmup + measured
    sides = list(RUNS) if args.runs == "all" else [s.strip() for s in args.runs.split(",")]
    unknown = [s for s in sides if s not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    model = dict(TINY_MODEL if args.quick else MODEL)
    model = {k: model[k] for k in MODEL_KEYS}
    peak = gemm_peak(args.device, dtype)
    print(f"device {args.device}, dtype {dtype}, {args.threads if args.device == 'cpu' else '-'} threads, GEMM peak "
          f"{peak / 1e9:.1f} GFLOP/s; {warmup} warm-up + {measured} measured steps; model hidden {model['hidden']} x "
          f"{model['layers']} layers, vocab {model['vocab']}, num_labels 1", flush=True)
    report = {"device": args.device, "threads": args.threads, "warmup": warmup, "measured": measured,
              "model": model, "gemm_peak": peak, "workloads": {}}
    for name in args.workloads.split(","):
        w = dict(QUICK if args.quick else WORKLOADS[name])
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-rm-{name}-"))
        model_dir, data = make_rm_assets(tmp, model, w, steps)
        common = ["--model_dir", str(model_dir), "--data", str(data), "--device", args.device, "--threads",
                  str(args.threads), "--pairs", str(w["pairs"]), "--total_steps", str(steps)]
        t0 = time.time()
        res = lockstep(sides, common, tmp, steps)
        rows = summarize(res, w, warmup)
        print_table(f"{name}: {w['pairs']} pairs/step, prompt {w['prompt']} tokens, chosen and rejected "
                    f"{w['completion']} tokens each (EOS included); real tokens/step "
                    f"{2 * w['pairs'] * (w['prompt'] + w['completion'])} (every sequence's prompt + completion); "
                    f"{time.time() - t0:.0f} s wall", rows)
        ratios = print_ratios(rows, warmup)
        report["workloads"][name] = {"shape": w, "rows": rows, "ratios": ratios}
        if len(rows) == len(sides):  # the runs' output folders (saved models) are not needed any more
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"worker logs kept in {tmp}")
        sys.stdout.flush()
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
