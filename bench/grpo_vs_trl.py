"""Side-by-side GRPO benchmark: prefalign's online method vs TRL's GRPOTrainer (HF generate, no vLLM).

    python bench/grpo_vs_trl.py [--device cpu|cuda] [--workload G1|G2|both] [--quick] [--tiny] [--json out.json]

Same model (bench/dpo_vs_trl.py's W1 Llama: hidden 512, 6 layers, vocab 16k, random weights from seed 0), same
prompts in the same order, 4 prompts × G = 8 completions per step, completions of exactly ``completion`` tokens on
both sides (EOS suppressed: ``SamplingOptions.ignore_eos`` for prefalign, ``min_new_tokens`` = max for TRL — both
set the EOS logit to −inf), a deterministic reward (a CRC32 hash of each completion's text, i.e. of its ids under the
word-level tokenizer), β = 0.04 (k3 KL, reference model run every step) and β = 0, loss_type dapo, μ = 1, AdamW
lr 1e-5 with a linear schedule, gradient clipping 1.0.

How each side runs:

- prefalign: the real engine (``prefalign.train.loop.build`` with ``method: online, objective: grpo``), unchanged,
  except that ``prefalign.online.rollout.generate_groups`` is wrapped to set ``ignore_eos=True`` (the method does not
  expose it) and every phase is wrapped with a clock (generation = ``generate_groups``; reward = the method's
  ``Rewards``; reference = ``Reference.logps``; old = the rest of ``Online._score_rollout``, the no-grad policy pass;
  update = the rest of the engine's ``_step``: decode, collate, advantages, forward + backward, clip, AdamW).
- TRL: ``GRPOTrainer`` with its defaults (gradient checkpointing on), wrapped the same way (generation =
  ``_generate``: tokenize, ``model.generate`` on the 32 pre-repeated rows, decode; reward = ``_calculate_rewards``;
  reference = ``_get_per_token_logps_and_entropies`` on ``ref_model``; update = the rest of the optimizer step).
  TRL's sampled ids are then *replaced* by the ids prefalign sampled at the same step (its generation is timed in
  full first), so both sides update on identical completions: their loss and grad-norm curves must coincide.

Each run is its own process (peak memory is its own: ``ru_maxrss`` on CPU, ``max_memory_allocated`` on GPU); the
runs of one table are driven in lock-step — step k of prefalign, then step k of TRL, then step k + 1 … — so a busy
machine slows both alike; medians over the measured steps. A separate process checks one update on identical
prompts, completions, advantages and reference log-probs (policy perturbed away from the reference, so the KL term
and its gradient are not zero): loss and every parameter's gradient, prefalign vs TRL's ``_compute_loss``. It also
times generation alone: ``generate_groups`` (prompt prefilled once per group) vs HF ``generate(...,
num_return_sequences=G)``, in interleaved pairs.
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
import zlib
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_vs_trl import QUICK as TINY_MODEL  # noqa: E402
from dpo_vs_trl import WORKLOADS as DPO_WORKLOADS  # noqa: E402
from dpo_vs_trl import gemm_peak, make_assets, peak_memory  # noqa: E402

MODEL_KEYS = ("hidden", "layers", "heads", "inter", "vocab")
MODEL = {k: DPO_WORKLOADS["W1"][k] for k in MODEL_KEYS}  # the W1 model of bench/dpo_vs_trl.py
WORKLOADS = {  # fixed so numbers compare across versions
    "G1": dict(prompt=256, completion=64, prompts=4, G=8),
    "G2": dict(prompt=32, completion=256, prompts=4, G=8),
}
QUICK_G2 = dict(prompt=32, completion=128, prompts=4, G=8)  # --quick: a shorter G2
TINY = dict(prompt=16, completion=8, prompts=2, G=4)  # --tiny: a smoke test of the harness (seconds)
BETAS = (0.04, 0.0)
LR = 1e-5
REWARD = "grpo_vs_trl:hash_reward"  # importable in the workers (bench/ is on sys.path)
RUNS = {  # label → worker side
    "TRL default": "trl",
    "TRL no-ckpt": "trl_nockpt",
    "prefalign": "prefalign",
    "prefalign ckpt": "prefalign_ckpt",
    "prefalign separate": "prefalign_separate",
}
DEFAULT_RUNS = "prefalign,trl"


def hash_reward(prompts, completions, **kwargs):
    """A deterministic reward in [0, 1): CRC32 of the completion's text (one word per id, so a hash of the ids)."""
    return [zlib.crc32(c.encode()) % 10007 / 10007 for c in completions]


# ----------------------------------------------------------------------------------------------------------------
# Worker side: a line protocol on a private copy of stdout (everything else printed goes to the log).
class Proto:
    def __init__(self):
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)

    def send(self, kind: str, obj) -> None:
        self.out.write(f"@@{kind} {json.dumps(obj)}\n")
        self.out.flush()

    def wait(self) -> str:
        word = sys.stdin.readline().strip()
        if not word:  # the parent is gone: stop here rather than run on unpaced
            os._exit(3)
        return word


def rss_now_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _timed(fn, phases: dict, key: str, device: str):
    def wrapper(*a, **k):
        _sync(device)
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            _sync(device)
            phases[key] += time.perf_counter() - t

    return wrapper


def step_clock(proto: Proto, device: str, clock: dict, before_step=lambda: None):
    """A ``TrainerCallback`` base for the TRL workers: at the first step it reports READY and waits for the parent's
    go (so every run starts stepping together); each step's wall time lands in ``clock["dt"]``. Subclasses send it
    from ``on_log``."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_begin(self, a, s, c, **k):
            if "ready" not in clock:
                clock["ready"] = True
                proto.send("READY", {"rss_mib": rss_now_mib()})
                proto.wait()
            before_step()
            _sync(device)
            clock["t"] = time.perf_counter()

        def on_step_end(self, a, s, c, **k):
            _sync(device)
            clock["dt"] = time.perf_counter() - clock["t"]

    return StepClock


def read_prompts(path: str) -> list[str]:
    return [json.loads(x)["prompt"] for x in Path(path).read_text().splitlines()]


def run_prefalign(args, proto: Proto, ckpt: bool, layout: str) -> None:
    import dataclasses

    import prefalign.online.method as om
    import prefalign.online.rollout as rollout
    from prefalign.train.config import TrainConfig
    from prefalign.train.loop import build

    dev = args.device
    phases: dict[str, float] = defaultdict(float)
    ids_dir = Path(args.ids_dir) if args.ids_dir else None
    calls = [0]
    orig_gen = rollout.generate_groups

    def generate_groups(model, prompts, group_size, opts, *a, **k):
        opts = dataclasses.replace(opts, ignore_eos=True)  # exactly max_new_tokens per completion, as TRL's side
        out = _timed(orig_gen, phases, "gen", dev)(model, prompts, group_size, opts, *a, **k)
        if ids_dir is not None:
            tmp = ids_dir / f"step-{calls[0]}.json.tmp"
            tmp.write_text(json.dumps({"prompts": out.prompt_ids, "completions": out.completion_ids}))
            os.replace(tmp, ids_dir / f"step-{calls[0]}.json")
        calls[0] += 1
        return out

    rollout.generate_groups = generate_groups  # method.py imports it at call time
    om.collate_groups = _timed(om.collate_groups, phases, "collate", dev)  # diagnostic sub-phase
    cfg = TrainConfig(model=args.model_dir, data=args.data, output_dir=args.out, method="online", objective="grpo",
                      objective_args={"loss_type": "dapo"}, beta=args.beta, reward=REWARD,
                      num_generations=args.G, max_new_tokens=args.completion, temperature=1.0,
                      batch_size=args.prompts, max_steps=args.steps, learning_rate=LR, lr_scheduler="linear",
                      shuffle=False, report_to=[], progress=False, max_length=None, sample_log_steps=0,
                      gradient_checkpointing=ckpt, layout=layout, dtype="bf16" if dev == "cuda" else "fp32", seed=0)
    engine = build(cfg, log=lambda *a: print(*a, file=sys.stderr, flush=True))
    m = engine.method
    m.rewards = _timed(m.rewards, phases, "reward", dev)
    if m.reference.live:
        m.reference.logps = _timed(m.reference.logps, phases, "ref", dev)
    m._score_rollout = _timed(m._score_rollout, phases, "score", dev)
    orig_step = engine._step

    def step(s, health):
        if s == 0:
            proto.send("READY", {"rss_mib": rss_now_mib()})
            proto.wait()
        phases.clear()
        _sync(dev)
        t = time.perf_counter()
        metrics = orig_step(s, health)
        _sync(dev)
        dt = time.perf_counter() - t
        proto.send("STEP", {"step_s": dt, "gen": phases["gen"], "reward": phases["reward"], "ref": phases["ref"],
                            "old": phases["score"] - phases["ref"], "collate": phases["collate"],
                            "loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                            "kl": metrics.get("kl", 0.0)})
        proto.wait()
        return metrics

    engine._step = step
    engine.train()
    proto.send("RESULT", {"peak_mib": peak_memory(dev)})


def run_trl(args, proto: Proto, ckpt: bool) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    dev = args.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    phases: dict[str, float] = defaultdict(float)
    clock: dict = {}

    class Clock(step_clock(proto, dev, clock, phases.clear)):
        def on_log(self, a, s, c, logs=None, **k):
            if logs and "loss" in logs and "dt" in clock:
                proto.send("STEP", {"step_s": clock.pop("dt"), "gen": phases["gen"], "reward": phases["reward"],
                                    "ref": phases["ref"], "old": 0.0, "collate": 0.0, "loss": logs["loss"],
                                    "grad_norm": logs.get("grad_norm", float("nan")), "kl": logs.get("kl", 0.0)})
                proto.wait()

    cfg = GRPOConfig(output_dir=args.out, learning_rate=LR, beta=args.beta, per_device_train_batch_size=args.prompts
                     * args.G, num_generations=args.G, max_completion_length=args.completion, loss_type="dapo",
                     temperature=1.0, use_vllm=False, generation_kwargs={"min_new_tokens": args.completion},
                     report_to="none", logging_steps=1, save_strategy="no", max_steps=args.steps,
                     lr_scheduler_type="linear", shuffle_dataset=False, seed=0, disable_tqdm=True,
                     activation_checkpointing=ckpt, bf16=dev == "cuda", use_cpu=dev == "cpu", log_completions=False)
    data = Dataset.from_dict({"prompt": read_prompts(args.data)})
    tr = GRPOTrainer(model=model, reward_funcs=hash_reward, args=cfg, train_dataset=data, processing_class=tok,
                     callbacks=[Clock()])
    tr._generate = _timed(tr._generate, phases, "gen", dev)
    tr._calculate_rewards = _timed(tr._calculate_rewards, phases, "reward", dev)
    orig_lp = tr._get_per_token_logps_and_entropies

    def per_token_logps(model, *a, **k):
        if model is tr.ref_model:
            return _timed(orig_lp, phases, "ref", dev)(model, *a, **k)
        return orig_lp(model, *a, **k)

    tr._get_per_token_logps_and_entropies = per_token_logps
    if args.ids_dir:  # after TRL's own (timed) generation, update on the ids prefalign sampled at this step
        orig_single = tr._generate_single_turn
        n = [0]

        def single_turn(prompt_ids, *a, **k):
            ids, logprobs = orig_single(prompt_ids, *a, **k)
            if tr.model.training:
                d = json.loads((Path(args.ids_dir) / f"step-{n[0]}.json").read_text())
                want = [p for p in d["prompts"] for _ in range(args.G)]
                if [list(p) for p in prompt_ids] != want:
                    raise RuntimeError(f"step {n[0]}: TRL's prompts differ from prefalign's")
                if [len(c) for c in ids] != [len(c) for c in d["completions"]]:
                    raise RuntimeError(f"step {n[0]}: TRL sampled other lengths than prefalign")
                ids, n[0] = d["completions"], n[0] + 1
            return ids, logprobs

        tr._generate_single_turn = single_turn
    tr.train()
    proto.send("RESULT", {"peak_mib": peak_memory(dev)})


def run_exact(args, proto: Proto) -> None:
    """One update on identical prompts, completions, advantages and reference log-probs; then generation alone."""
    import copy

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from prefalign.data.batch import collate_groups
    from prefalign.logps import sequence_logps
    from prefalign.online import features as _features  # noqa: F401  (registers entropy_stat)
    from prefalign.online.advantages import group_advantages
    from prefalign.online.aggregate import aggregate
    from prefalign.online.algos.base import PolicyBatch, get
    from prefalign.online.rollout import SamplingOptions, generate_groups

    dev = args.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    P, G, T = args.prompts, args.G, args.completion
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    reference = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).to(dev).eval()
    texts = read_prompts(args.data)[:P]
    prompts = [tok(t)["input_ids"] for t in texts]
    out: dict = {"generation": gen_bench(args, reference, prompts)}

    gen = torch.Generator(device=dev).manual_seed(0)
    samples = generate_groups(reference, prompts, G, SamplingOptions(max_new_tokens=T, ignore_eos=True), [1], 0, gen)
    comps = samples.completion_ids
    rewards = torch.tensor(hash_reward(None, samples.texts(tok)), dtype=torch.float32)
    group = torch.arange(P).repeat_interleave(G)
    adv = group_advantages(rewards, group, "group")  # [N], given to both sides
    batch = collate_groups(prompts, comps, G, 0, "shared_prefix").to(dev)
    with torch.no_grad():
        ref_logp = sequence_logps(reference, batch).token_logps.float()  # [N, T], given to both sides

    policy = copy.deepcopy(reference).train()
    torch.manual_seed(1)
    with torch.no_grad():  # move the policy away from the reference: a non-zero KL term with a non-zero gradient
        for p in policy.parameters():
            p.add_(0.2 * p.std() * torch.randn_like(p))
    del reference
    # beta 0 at construction (no reference model loaded: its log-probs are given), set per case below
    cfg = GRPOConfig(output_dir=args.out, beta=0.0, per_device_train_batch_size=P * G, num_generations=G,
                     max_completion_length=T, loss_type="dapo", report_to="none", use_cpu=dev == "cpu",
                     bf16=dev == "cuda")
    tr = GRPOTrainer(model=policy, reward_funcs=hash_reward, args=cfg, processing_class=tok,
                     train_dataset=Dataset.from_dict({"prompt": texts}))
    # as TRL trains by default (and it keeps this check's memory in bounds); the same model serves both sides
    tr.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1  # what Trainer.train sets before a step
    params = [p for p in tr.model.parameters() if p.requires_grad]
    prompt_ids = torch.tensor([p for p in prompts for _ in range(G)], device=dev)
    comp_ids = torch.tensor(comps, device=dev)
    mask = torch.ones_like(comp_ids)
    out["exact"] = {}
    for beta in BETAS:
        tr.beta = beta
        inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": comp_ids,
                  "completion_mask": mask, "advantages": adv.to(dev), "num_items_in_batch": mask.sum()}
        if beta:
            inputs["ref_per_token_logps"] = ref_logp
        trl_loss = tr._compute_loss(tr.model, inputs)
        trl_grads = torch.autograd.grad(trl_loss, params)

        pol = sequence_logps(tr.model, batch, chunk_size=1024, temperature=1.0, features=("entropy_stat",))
        algo = get("grpo", beta=beta, loss_type="dapo")
        b = PolicyBatch(logp=pol.token_logps, old_logp=pol.token_logps.detach(), mask=pol.mask, advantages=adv.to(dev),
                        group=group.to(dev), rewards=rewards.to(dev), ref_logp=ref_logp if beta else None,
                        entropy=pol.features["entropy_stat"])
        per_token, _ = algo.loss(b)
        total, units = aggregate(per_token, pol.mask, "dapo", T)
        ours = total / units
        del pol, b, per_token
        our_grads = torch.autograd.grad(ours, params)
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(our_grads, trl_grads))
        scale = max(float(a.float().abs().max()) for a in trl_grads)
        norm = lambda gs: float(torch.sqrt(sum((g.float() ** 2).sum() for g in gs)))  # noqa: E731
        out["exact"][str(beta)] = {"loss_prefalign": float(ours.detach()), "loss_trl": float(trl_loss.detach()),
                                   "loss_gap": abs(float(ours) - float(trl_loss)), "grad_gap": diff,
                                   "grad_max": scale, "grad_norm_prefalign": norm(our_grads),
                                   "grad_norm_trl": norm(trl_grads)}
    proto.send("RESULT", out)


def gen_bench(args, model, prompts) -> dict:
    """prefalign's generate_groups, with each ``kv_cache`` (grouped: one prompt KV per group; in_place: repeated G
    times, written in place; dynamic: transformers' DynamicCache), vs HF generate(num_return_sequences=G): same
    prompts, exactly T new tokens each, sampling at temperature 1 with no filtering, in interleaved rounds (the
    order rotates every round; the first round is a warm-up)."""
    import torch

    from prefalign.online.rollout import SamplingOptions, generate_groups

    P, G, T, dev = len(prompts), args.G, args.completion, args.device
    ids = torch.tensor(prompts, device=dev)
    def ours(kv_cache: str):
        opts = SamplingOptions(max_new_tokens=T, ignore_eos=True, kv_cache=kv_cache)
        return lambda: generate_groups(model, prompts, G, opts, [1], 0, torch.Generator(device=dev).manual_seed(0))

    def hf():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 num_return_sequences=G, max_new_tokens=T, min_new_tokens=T, temperature=1.0,
                                 top_k=0, top_p=1.0, pad_token_id=0, eos_token_id=1)
        assert out.shape == (P * G, ids.shape[1] + T)

    runs = [("prefalign", ours("grouped")), ("in_place", ours("in_place")), ("dynamic", ours("dynamic")), ("hf", hf)]
    times = {name: [] for name, _ in runs}
    for i in range(args.gen_pairs + 1):
        for name, fn in runs[i % len(runs):] + runs[: i % len(runs)]:
            _sync(dev)
            t = time.perf_counter()
            fn()
            _sync(dev)
            if i:
                times[name].append(time.perf_counter() - t)
    return {"new_tokens": P * G * T, **times}


def worker(args) -> None:
    import torch

    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    proto = Proto()
    if args.side == "exact":
        return run_exact(args, proto)
    if args.side.startswith("trl"):
        return run_trl(args, proto, ckpt=args.side == "trl")
    return run_prefalign(args, proto, ckpt=args.side == "prefalign_ckpt",
                         layout="separate" if args.side == "prefalign_separate" else "shared_prefix")


# ----------------------------------------------------------------------------------------------------------------
# Parent side
class WorkerFailed(Exception):
    pass


class Worker:
    def __init__(self, label: str, cmd: list[str], log: Path):
        self.label, self.log = label, log
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"),
                                     text=True, bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def expect(self, kind: str):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                tail = self.log.read_text()[-3000:]
                raise WorkerFailed(f"{self.label}: exited ({self.proc.returncode}) waiting for {kind}\n{tail}")
            if line.startswith(f"@@{kind} "):
                return json.loads(line[len(kind) + 3 :])

    def say(self, word: str) -> None:
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def worker_cmd(side: str, common: list[str], out: Path, extra: list[str] = ()) -> list[str]:
    return [sys.executable, __file__, "--side", side, "--out", str(out), *common, *extra]


def lockstep(runs: list[tuple[str, str]], common: list[str], tmp: Path, steps: int, ids_dir: Path) -> dict:
    """Start one process per run, then step them in turn: step k of each run (in order), then step k + 1."""
    workers = []
    writer = next((side for _, side in runs if side.startswith("prefalign")), None)  # the first prefalign run
    for label, side in runs:
        extra = ["--ids_dir", str(ids_dir)] if writer and (side == writer or side.startswith("trl")) else []
        workers.append(Worker(label, worker_cmd(side, common, tmp / side, extra), tmp / f"{side}.log"))
    res = {w.label: {"steps": []} for w in workers}
    try:
        for w in workers:
            res[w.label]["rss_setup_mib"] = w.expect("READY")["rss_mib"]
        for _ in range(steps):
            for w in workers:
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


def counted_tokens(w: dict) -> int:
    """Every sample's prompt + completion tokens (P·G samples), the same count for both sides."""
    return w["prompts"] * w["G"] * (w["prompt"] + w["completion"])


def update_flops(side: str, m: dict, w: dict, device: str) -> float:
    """Model FLOPs the update's forward + backward (3 × forward) actually executes in the layout each side runs;
    recomputation (checkpointed layers, prefalign's re-run LM-head chunks) is not counted.

    prefalign: per group ⌈G / k⌉ rows of the prompt + k completions (shared prefix; k from ``online.rows``'s cost
    model, as the engine picks it), the LM head on the P·G·T scored positions only, and dense masked attention
    (SDPA with a 4D mask computes the whole n² square; k = 1 rows are plain causal rows). TRL: P·G rows of prompt + completion,
    causal attention (L(L+1)/2 pairs), the LM head on every position but the last on CPU (its fused head scores all
    positions off Triton devices) and on the completion positions only on CUDA."""
    h, layers, inter, vocab = m["hidden"], m["layers"], m["inter"], m["vocab"]
    P, G, Lp, T = w["prompts"], w["G"], w["prompt"], w["completion"]
    per_token = 2 * layers * (4 * h * h + 3 * h * inter)
    if side.startswith("prefalign") and side != "prefalign_separate":
        from prefalign.online.rows import completions_per_row

        rho = 2 * h / (4 * h * h + 3 * h * inter + 2 * h)  # a Llama layer: 4 projections, 3 MLP matrices, 2 norms
        k = completions_per_row([Lp] * P, [T] * (P * G), G, rho)
        rows = [Lp + min(k, G - s) * T for s in range(0, G, k)]  # one group's rows
        tokens, head = P * sum(rows), P * G * T
        pairs = P * sum(n * n if k > 1 else n * (n + 1) / 2 for n in rows)
    else:  # one row per sample, causal attention (no padding: SDPA's is_causal path)
        row = Lp + T
        tokens, pairs = P * G * row, P * G * row * (row + 1) / 2
        head = P * G * (row - 1) if device == "cpu" and side.startswith("trl") else P * G * T
    return 3 * (per_token * tokens + 2 * h * vocab * head + layers * 4 * h * pairs)


def summarize(res: dict, w: dict, m: dict, warmup: int, peak: float, device: str, sides: dict) -> dict:
    rows = {}
    for label, r in res.items():
        meas = r["steps"][warmup:] or r["steps"]
        med = {k: statistics.median(s[k] for s in meas) for k in ("step_s", "gen", "reward", "ref", "old", "collate")}
        update = statistics.median(s["step_s"] - s["gen"] - s["reward"] - s["ref"] - s["old"] for s in meas)
        rows[label] = dict(**med, update=update, tokens_s=counted_tokens(w) / med["step_s"], peak_mib=r["peak_mib"],
                           rss_setup_mib=r["rss_setup_mib"], losses=[s["loss"] for s in r["steps"]],
                           grad_norms=[s["grad_norm"] for s in r["steps"]],
                           update_flops_frac=update_flops(sides[label], m, w, device) / update / peak)
    return rows


def print_table(title: str, rows: dict) -> None:
    print(f"\n{title}")
    print(f"{'run':<19}{'step s':>8}{'gen s':>8}{'reward s':>9}{'ref s':>7}{'old s':>7}{'update s':>9}"
          f"{'(collate)':>10}{'tokens/s':>9}{'peak MiB':>10}{'setup MiB':>10}{'update FLOP/s %':>16}")
    for label, r in rows.items():
        print(f"{label:<19}{r['step_s']:>8.2f}{r['gen']:>8.2f}{r['reward']:>9.3f}{r['ref']:>7.2f}{r['old']:>7.2f}"
              f"{r['update']:>9.2f}{r['collate']:>10.2f}{r['tokens_s']:>9.0f}{r['peak_mib']:>10.0f}{r['rss_setup_mib']:>10.0f}"
              f"{100 * r['update_flops_frac']:>15.1f}%")
    print("per step (warm-up steps first):")
    for label, r in rows.items():
        print(f"  {label:<18} loss      " + " ".join(f"{x:>11.3e}" for x in r["losses"]))
        print(f"  {'':<18} grad norm " + " ".join(f"{x:>11.5f}" for x in r["grad_norms"]))


def print_ratios(rows: dict, targets: dict) -> dict:
    out = {}
    them = rows.get("TRL default") or rows.get("TRL no-ckpt")
    peer = "TRL default" if "TRL default" in rows else "TRL no-ckpt"
    for label in ("prefalign", "prefalign ckpt", "prefalign separate"):
        ours = rows.get(label)
        if not ours or not them:
            continue
        r = dict(tokens_s=ours["tokens_s"] / them["tokens_s"], memory=ours["peak_mib"] / them["peak_mib"],
                 gen=them["gen"] / ours["gen"], update=them["update"] / ours["update"],
                 ref=them["ref"] / ours["ref"] if ours["ref"] else float("nan"),
                 loss_gap=max(abs(a - b) for a, b in zip(ours["losses"], them["losses"])),
                 grad_norm_gap=max(abs(a - b) for a, b in zip(ours["grad_norms"], them["grad_norms"])))
        out[f"{label} / {peer}"] = r
        t = targets
        print(f"{label} / {peer}: tokens/s x{r['tokens_s']:.2f} (target {t.get('tokens', '-')}), "
              f"peak memory x{r['memory']:.2f} (target {t.get('memory', '-')}); speed-ups: generation "
              f"x{r['gen']:.2f}, reference x{r['ref']:.2f}, update x{r['update']:.2f}; identical completions: max "
              f"loss-curve gap {r['loss_gap']:.1e}, max grad-norm gap {r['grad_norm_gap']:.1e}")
    return out


def print_exact(name: str, res: dict) -> None:
    print(f"\n{name}: one update on identical prompts, completions, advantages and reference log-probs "
          "(policy perturbed from the reference), target 1e-5:")
    print(f"{'beta':>6}{'loss prefalign':>17}{'loss TRL':>17}{'|dloss|':>10}{'max |dgrad|':>13}{'max |grad|':>12}"
          f"{'grad norm pf':>14}{'grad norm TRL':>15}")
    for beta, e in res["exact"].items():
        print(f"{float(beta):>6}{e['loss_prefalign']:>17.9e}{e['loss_trl']:>17.9e}{e['loss_gap']:>10.1e}"
              f"{e['grad_gap']:>13.1e}{e['grad_max']:>12.2e}{e['grad_norm_prefalign']:>14.7f}"
              f"{e['grad_norm_trl']:>15.7f}")
    g = res["generation"]
    ours, hf = statistics.median(g["prefalign"]), statistics.median(g["hf"])
    pairs = sorted(h / o for h, o in zip(g["hf"], g["prefalign"]))
    print(f"generation alone ({g['new_tokens']} new tokens, prompt prefilled once per group vs HF generate "
          f"num_return_sequences): prefalign {g['new_tokens'] / ours:.0f} tok/s, HF generate "
          f"{g['new_tokens'] / hf:.0f} tok/s, x{statistics.median(pairs):.2f} (rounds {pairs[0]:.2f}-{pairs[-1]:.2f})")
    if "in_place" in g:
        tok = {k: g["new_tokens"] / statistics.median(g[k]) for k in ("dynamic", "in_place", "prefalign")}
        print(f"  by rollout_kv_cache: dynamic {tok['dynamic']:.0f} tok/s (prompt prefilled once, DynamicCache), "
              f"in_place {tok['in_place']:.0f}, grouped (default) {tok['prefalign']:.0f} tok/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--workload", default="both", choices=["G1", "G2", "both"])
    p.add_argument("--quick", action="store_true", help="1 warm-up + 2 measured steps, G2 with 128-token completions")
    p.add_argument("--tiny", action="store_true", help="a tiny model and shapes: checks the harness in seconds")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma list of {', '.join(s for s in RUNS.values())}")
    p.add_argument("--betas", default=",".join(str(b) for b in BETAS))
    p.add_argument("--warmup", type=int)
    p.add_argument("--measured", type=int)
    p.add_argument("--threads", type=int, default=2, help="torch threads per process on CPU")
    p.add_argument("--gen_pairs", type=int, help="interleaved pairs for the generation-alone timing (3; --quick 1)")
    p.add_argument("--no_exact", action="store_true", help="skip the identical-inputs check and generation timing")
    p.add_argument("--json", help="also write the results here")
    for hidden in ("side", "model_dir", "data", "out", "ids_dir"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    for hidden in ("prompt", "completion", "prompts", "G", "steps"):
        p.add_argument(f"--{hidden}", type=int, help=argparse.SUPPRESS)
    p.add_argument("--beta", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return worker(args)
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    warmup = args.warmup if args.warmup is not None else (1 if args.quick or args.tiny else 2)
    measured = args.measured if args.measured is not None else (2 if args.quick or args.tiny else 5)
    steps = warmup + measured
    if args.gen_pairs is None:
        args.gen_pairs = 1 if args.quick or args.tiny else 3
    peaks = [gemm_peak(args.device, dtype)]
    print(f"device {args.device}, dtype {dtype}, {args.threads if args.device == 'cpu' else '-'} threads, GEMM peak "
          f"{peaks[0] / 1e9:.1f} GFLOP/s; {warmup} warm-up + {measured} measured steps", flush=True)
    if args.device == "cpu":
        print("no GPU in this run: the bf16 rows need `--device cuda` on a GPU machine", flush=True)
    model = dict(TINY_MODEL if args.tiny else MODEL)
    labels = {side: label for label, side in RUNS.items()}
    order = [s.strip() for s in args.runs.split(",")]
    order = sorted(order, key=lambda s: not s.startswith("prefalign"))  # prefalign samples first (TRL replays it)
    runs = [(labels[s], s) for s in order]
    sides = {label: side for label, side in runs}
    report = {"device": args.device, "threads": args.threads, "warmup": warmup, "measured": measured,
              "model": model, "workloads": {}}
    names = ["G1", "G2"] if args.workload == "both" else [args.workload]
    for name in names:
        w = dict(TINY if args.tiny else QUICK_G2 if args.quick and name == "G2" else WORKLOADS[name])
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-grpo-{name}-"))
        model_dir, _ = make_assets(tmp, {**model, "prompt": 1, "completion": 2, "pairs": 1}, 1)
        import random

        rng = random.Random(1)
        data = tmp / "prompts.jsonl"
        data.write_text("".join(json.dumps({"prompt": " ".join(f"w{rng.randrange(model['vocab'] - 2)}"
                                                                for _ in range(w["prompt"]))}) + "\n"
                                for _ in range(w["prompts"] * steps)))
        common = ["--model_dir", str(model_dir), "--data", str(data), "--device", args.device, "--threads",
                  str(args.threads), "--prompt", str(w["prompt"]), "--completion", str(w["completion"]),
                  "--prompts", str(w["prompts"]), "--G", str(w["G"]), "--steps", str(steps),
                  "--gen_pairs", str(args.gen_pairs)]
        entry = {"shape": w, "tokens_per_step": counted_tokens(w), "runs": {}}
        print(f"\n=== {name}: {w['prompts']} prompts x G {w['G']}, prompt {w['prompt']} tokens, completions "
              f"exactly {w['completion']} tokens; {counted_tokens(w)} prompt+completion tokens per step; model "
              f"hidden {model['hidden']} x {model['layers']} layers, vocab {model['vocab']}", flush=True)
        if not args.no_exact:
            proc = Worker("exact", worker_cmd("exact", common + ["--beta", "0.04"], tmp / "exact"),
                          tmp / "exact.log")
            try:
                entry["exact"] = proc.expect("RESULT")
                print_exact(name, entry["exact"])
            except WorkerFailed as e:
                print(f"  exact check failed: {e}")
            finally:
                proc.kill()
        for beta in [float(b) for b in args.betas.split(",")]:
            ids_dir = tmp / f"ids-{beta}"
            ids_dir.mkdir()
            (tmp / f"beta-{beta}").mkdir()
            res = lockstep(runs, common + ["--beta", str(beta)], tmp / f"beta-{beta}", steps, ids_dir)
            peaks.append(gemm_peak(args.device, dtype))
            peak = max(peaks)
            rows = summarize(res, w, model, warmup, peak, args.device, sides)
            print_table(f"{name}, beta {beta} (GEMM peak {peak / 1e9:.1f} GFLOP/s, max of {len(peaks)} measurements)",
                        rows)
            targets = ({"tokens": ">= x2.5", "memory": "<= x0.6"} if name == "G1" and beta > 0
                       else {"tokens": ">= x1.0"} if name == "G2" else {})
            ratios = print_ratios(rows, targets)
            entry["runs"][str(beta)] = {"rows": rows, "ratios": ratios, "raw": res, "gemm_peak": peak}
            sys.stdout.flush()
        report["workloads"][name] = entry
        report["gemm_peaks"] = peaks
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
