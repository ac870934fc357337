"""Side-by-side DPO benchmark: prefalign vs TRL's DPOTrainer on the same model, data and hyperparameters.

    python bench/dpo_vs_trl.py [--device cpu|cuda] [--quick] [--workloads W1,W2]

Each run is a separate process (so peak memory is its own). Printed per run: median step time, tokens/s (every
pair's prompt+chosen and prompt+rejected tokens, counted the same way for both), peak memory (RSS on CPU,
torch.cuda.max_memory_allocated on GPU), step-1 and last loss, achieved model FLOP/s as a fraction of a GEMM peak
measured in the same run, and the ratios prefalign / TRL. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {  # fixed so numbers compare across versions
    "W1": dict(prompt=256, completion=64, hidden=512, layers=6, heads=8, inter=1408, vocab=16000, pairs=4),
    "W2": dict(prompt=32, completion=256, hidden=512, layers=6, heads=8, inter=1408, vocab=16000, pairs=4),
}
QUICK = dict(prompt=32, completion=16, hidden=64, layers=2, heads=4, inter=128, vocab=1000, pairs=2)
LR = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# Setup shared by both sides: a word-level tokenizer (one token per word, so TRL's text pipeline and prefalign's
# give identical ids), a random Llama, and a JSONL of pairs.
def make_assets(folder: Path, w: dict, steps: int, seed: int = 0) -> tuple[Path, Path]:
    import random

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(w["vocab"] - 2)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    cfg = LlamaConfig(vocab_size=w["vocab"], hidden_size=w["hidden"], num_hidden_layers=w["layers"],
                      num_attention_heads=w["heads"], num_key_value_heads=w["heads"], intermediate_size=w["inter"],
                      max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                      bos_token_id=None)
    torch.manual_seed(seed)
    model_dir = folder / "model"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    fast.save_pretrained(model_dir)
    rng = random.Random(seed)
    words = lambda n: " ".join(f"w{rng.randrange(w['vocab'] - 2)}" for _ in range(n))
    # Completions are one word short: the EOS both libraries append makes them `completion` tokens long.
    rows = [{"prompt": words(w["prompt"]), "chosen": " " + words(w["completion"] - 1),
             "rejected": " " + words(w["completion"] - 1)} for _ in range(w["pairs"] * steps)]
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, data


def gemm_peak(device: str, dtype) -> float:
    """FLOP/s of a large square matmul in the run's dtype (the machine's practical peak)."""
    import torch

    n = 2048 if device == "cpu" else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    reps = 5 if device == "cpu" else 50
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def peak_memory(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux → MiB


# ----------------------------------------------------------------------------------------------------------------
def run_prefalign(model_dir: Path, data: Path, out: Path, args, reference: str, layout: str,
                  ckpt: bool = False) -> dict:
    from prefalign.train.config import TrainConfig
    from prefalign.train.loop import train

    cfg = TrainConfig(model=str(model_dir), data=str(data), output_dir=str(out), learning_rate=LR, beta=0.1,
                      batch_size=args.pairs, max_steps=args.steps, lr_scheduler="linear", max_length=None,
                      reference=reference, layout=layout, shuffle=False, report_to=[], progress=False,
                      gradient_checkpointing=ckpt,
                      dtype="bf16" if args.device == "cuda" else "fp32", reference_cache_dir=str(out) + "-cache")
    train(cfg, log=lambda *a: None)
    ms = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"losses": [m["loss"] for m in ms if "step_time" in m], "times": [m["step_time"] for m in ms
                                                                           if "step_time" in m]}


def run_trl(model_dir: Path, data: Path, out: Path, args, precompute: bool) -> dict:
    import torch
    from datasets import load_dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(model_dir)
    times, losses = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, s, c, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, a, s, c, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

        def on_log(self, a, s, c, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    class InOrder(DPOTrainer):  # same batch order as prefalign's shuffle=False; nothing else changed
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    cfg = DPOConfig(output_dir=str(out), learning_rate=LR, beta=0.1, per_device_train_batch_size=args.pairs,
                    max_steps=args.steps, lr_scheduler_type="linear", logging_steps=1, save_strategy="no",
                    report_to="none", max_length=None, precompute_ref_log_probs=precompute,
                    bf16=args.device == "cuda", use_cpu=args.device == "cpu", seed=0, disable_tqdm=True,
                    dataloader_drop_last=True)
    trainer = InOrder(model=model, ref_model=ref, args=cfg, train_dataset=load_dataset("json", data_files=str(data),
                      split="train"), processing_class=tok, callbacks=[Clock()])
    trainer.train()
    return {"losses": losses, "times": times}


def worker(args) -> None:
    import torch

    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    model_dir, data, out = Path(args.model_dir), Path(args.data), Path(args.out)
    if args.side == "trl":
        res = run_trl(model_dir, data, out, args, precompute=False)
    elif args.side == "trl_precompute":
        res = run_trl(model_dir, data, out, args, precompute=True)
    else:
        reference, layout, *flags = args.side.split(":")[1:]
        res = run_prefalign(model_dir, data, out, args, reference, layout, ckpt="ckpt" in flags)
    res["peak_mib"] = peak_memory(args.device)
    print("RESULT " + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------------------------------------------
SIDES = [("TRL default", "trl"), ("TRL precompute_ref", "trl_precompute"),
         ("prefalign copy+separate", "prefalign:copy:separate"),
         ("prefalign precompute+shared", "prefalign:precompute:shared_prefix"),
         ("prefalign precompute+shared+ckpt", "prefalign:precompute:shared_prefix:ckpt")]
OURS = ("prefalign precompute+shared", "prefalign precompute+shared+ckpt")


def model_flops_per_step(w: dict) -> float:
    """6·N·T (forward + backward) over the counted tokens, N = parameters used per token (layers + LM head)."""
    h, i, v = w["hidden"], w["inter"], w["vocab"]
    per_layer = 4 * h * h + 3 * h * i
    n = w["layers"] * per_layer + h * v
    return 6 * n * counted_tokens(w)


def counted_tokens(w: dict) -> int:
    return w["pairs"] * 2 * (w["prompt"] + w["completion"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the harness")
    p.add_argument("--workloads", default="W1,W2")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--measured", type=int, default=5)
    p.add_argument("--json", help="also write the results here")
    for hidden in ("side", "model_dir", "data", "out"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    p.add_argument("--pairs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return worker(args)
    import torch

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    peak = gemm_peak(args.device, dtype)
    print(f"device {args.device}, dtype {dtype}, GEMM peak {peak / 1e9:.1f} GFLOP/s")
    steps = args.warmup + args.measured
    report = {"device": args.device, "gemm_peak_flops": peak, "workloads": {}}
    for name in args.workloads.split(","):
        w = dict(QUICK if args.quick else WORKLOADS[name])
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        model_dir, data = make_assets(tmp, w, steps)
        rows = {}
        for label, side in SIDES:
            cmd = [sys.executable, __file__, "--side", side, "--model_dir", str(model_dir), "--data", str(data),
                   "--out", str(tmp / side.replace(":", "-")), "--pairs", str(w["pairs"]), "--steps", str(steps),
                   "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(f"{label}: failed\n{proc.stderr[-3000:]}")
                continue
            res = json.loads(line[0][7:])
            step = statistics.median(res["times"][args.warmup :])
            rows[label] = dict(step_s=step, tokens_s=counted_tokens(w) / step, peak_mib=res["peak_mib"],
                               loss_first=res["losses"][0], loss_last=res["losses"][-1], losses=res["losses"],
                               mfu=model_flops_per_step(w) / step / peak)
        report["workloads"][name] = rows
        print_table(name, w, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def print_table(name: str, w: dict, rows: dict) -> None:
    print(f"\n{name}: prompt {w['prompt']}, completions {w['completion']}, {w['pairs']} pairs/step, "
          f"hidden {w['hidden']} x {w['layers']} layers, vocab {w['vocab']}")
    print(f"{'run':<34}{'step s':>9}{'tokens/s':>10}{'peak MiB':>10}{'loss 1':>9}{'loss last':>11}{'FLOP/s %':>10}")
    for label, r in rows.items():
        print(f"{label:<34}{r['step_s']:>9.3f}{r['tokens_s']:>10.0f}{r['peak_mib']:>10.0f}{r['loss_first']:>9.4f}"
              f"{r['loss_last']:>11.5f}{100 * r['mfu']:>9.1f}%")
    for label in OURS:
        ours = rows.get(label)
        for peer in ("TRL default", "TRL precompute_ref"):
            if ours and peer in rows:
                them = rows[peer]
                gap = max(abs(a - b) for a, b in zip(ours["losses"], them["losses"]))
                print(f"{label[10:]:<22} / {peer:<19} tokens/s x{ours['tokens_s'] / them['tokens_s']:.2f}   "
                      f"memory x{ours['peak_mib'] / them['peak_mib']:.2f}   max loss-curve gap {gap:.2e}")


if __name__ == "__main__":
    main()
