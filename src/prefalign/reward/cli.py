"""`prefalign reward train|eval|losses`: reward models on the one training engine, and their held-out report.

``train`` is ``prefalign train`` with ``method: reward``: the same config file and ``--field value`` flags, with
the reward defaults of TRL's RewardTrainer where the config does not set them (``objective: bt``,
``learning_rate: 1e-4``). ``eval`` scores held-out pairs exactly as training scored them and writes report.md,
metrics.json, reliability.png and distribution.png (``reward/evaluation.py``); with ``--save-temperature`` the fitted
temperature goes into the model folder's ``reward_stats.json``.
"""

from __future__ import annotations

import argparse
import sys

from prefalign.errors import UserError

TRAIN_DEFAULTS = {"method": "reward", "objective": "bt", "learning_rate": 1e-4}

REWARD_HELP = """Train and evaluate reward models.

  prefalign reward train --config rm.yaml --learning_rate 1e-4
  prefalign reward eval --model outputs/rm --data heldout.jsonl --out report/
  prefalign reward losses
"""
TRAIN_HELP = """Train a reward model (method: reward) on the one training engine.

  prefalign reward train --config rm.yaml
  prefalign reward train --model ./causal-lm --data pairs.jsonl --output_dir outputs/rm --lora
  accelerate launch --num_processes 2 -m prefalign reward train --config rm.yaml

The config is `prefalign train`'s (every field below, as a YAML key or --field value). Defaults that differ here:
objective: bt (the loss; `prefalign reward losses` lists them, objective_args their hyperparameters, e.g.
{center_rewards_coefficient: 0.01}) and learning_rate: 1e-4 (TRL's RewardTrainer). The output folder loads with
AutoModelForSequenceClassification and with `prefalign label --reward FOLDER`.
"""
EVAL_HELP = """Score held-out preference pairs with a reward model and write a report.

  prefalign reward eval --model outputs/rm --data heldout.jsonl --out report/ [--fit-data val.jsonl]

Accuracy (a tie counts 1/2), margins, per-source accuracy (a 'source' or 'dataset' column), the reward mean/std,
calibration of sigma(r_c - r_r) before and after temperature scaling (T fitted on --fit-data, else on these pairs:
then the "after" ECE is optimistic), reliability and distribution plots. Pairs are rendered and scored exactly as
`prefalign reward train` scores them.
"""


def add_parser(sub) -> None:
    """The ``reward`` command and its sub-commands, on the main parser's sub-parsers."""
    from prefalign.train.config import help_text

    raw = argparse.RawDescriptionHelpFormatter
    r = sub.add_parser("reward", help="train and evaluate reward models (train, eval, losses)",
                       description=REWARD_HELP, formatter_class=raw)
    r.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    rs = r.add_subparsers(dest="reward_command", required=True)

    t = rs.add_parser("train", help="train a reward model (the config of `prefalign train`, method: reward)",
                      description=TRAIN_HELP, usage="%(prog)s [-h] [--config FILE] [--FIELD VALUE ...]",
                      epilog="config fields, by group (--field TYPE: what it does (default: value)):\n\n"
                             + help_text(_help_width()), formatter_class=raw)
    t.add_argument("--config", metavar="FILE", help="YAML config file")
    t.add_argument("--skip-invalid", action="store_true", help="drop invalid rows instead of stopping")
    t.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    t.set_defaults(field_flags=True)  # the remaining --field value flags are config fields

    e = rs.add_parser("eval", help="accuracy, calibration and plots of a reward model on held-out pairs",
                      description=EVAL_HELP, formatter_class=raw)
    e.add_argument("--model", required=True, help="reward-model folder (or a SEQ_CLS LoRA adapter folder)")
    e.add_argument("--data", required=True, help="held-out pairs (TRL's preference formats)")
    e.add_argument("--out", required=True, help="folder for report.md, metrics.json, reliability.png, "
                                                "distribution.png")
    e.add_argument("--fit-data", default=None, help="pairs to fit the temperature on (default: --data)")
    e.add_argument("--save-temperature", action="store_true",
                   help="write the fitted temperature into the model folder's reward_stats.json")
    e.add_argument("--head", type=int, default=0, help="which output of a multi-head model (default 0)")
    e.add_argument("--batch-size", type=int, default=16, help="pairs scored together (default 16)")
    e.add_argument("--max-length", type=int, default=None,
                   help="most tokens per scored sequence, the end kept (default: no limit)")
    e.add_argument("--bins", type=int, default=10, help="calibration bins (default 10)")
    e.add_argument("--name", default=None, help="the model's name in the report title")
    e.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                   help="weights' dtype (default auto: bf16 where the device computes it natively, else fp32)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    e.add_argument("--safetensors-only", action="store_true", help="refuse pickle-format weights")
    e.add_argument("--skip-invalid", action="store_true", help="drop invalid rows instead of stopping")
    e.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    o = rs.add_parser("losses", help="list the registered reward-model losses")
    o.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)


def _help_width() -> int:
    import shutil

    return max(60, min(120, shutil.get_terminal_size().columns) - 2)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args, rest: list[str]) -> int:
    return {"train": train, "eval": evaluate, "losses": list_losses}[args.reward_command](args, rest)


# ---- train ------------------------------------------------------------------------------------------------------
def resolve(config_path: str | None, overrides: list[str]):
    """The ``TrainConfig`` of ``prefalign reward train``: the file, then the flags, then the reward defaults for
    fields neither sets."""
    from prefalign.train import config as config_mod

    values = config_mod.load_yaml(config_path) if config_path else {}
    values.update(config_mod.parse_overrides(overrides))
    if values.get("method", "reward") != "reward":
        raise UserError(config_path or "command line", f"method is '{values['method']}', but `prefalign reward "
                        "train` trains reward models", "drop method (or set method: reward), or use prefalign train")
    for key, value in TRAIN_DEFAULTS.items():
        values.setdefault(key, value)
    return config_mod.from_dict(values, config_path or "command line")


def train(args, rest: list[str]) -> int:
    from prefalign.train.loop import train as run_train

    extra = list(rest) + (["--skip_invalid=true"] if args.skip_invalid else [])
    cfg = resolve(args.config, extra)
    run_train(cfg, log=_log)
    return 0


# ---- eval -------------------------------------------------------------------------------------------------------
def score_pairs(model, tokenizer, examples, batch_size: int = 16, layout: str = "shared_prefix"):
    """(chosen [N, K], rejected [N, K]) fp32 scores of reward-pair examples, as training computes them."""
    import torch

    from prefalign.reward.scoring import collate_pair_sequences, reward_forward

    device = next(model.parameters()).device
    c, r = [], []
    with torch.no_grad():
        for s in range(0, len(examples), batch_size):
            chunk = examples[s : s + batch_size]
            b = collate_pair_sequences(chunk, tokenizer.pad_token_id, layout).to(device)
            sc = reward_forward(model, b).scores.float().cpu()
            c.append(sc[: len(chunk)])
            r.append(sc[len(chunk) :])
    return torch.cat(c), torch.cat(r)


def _pairs(path: str, tokenizer, max_length, skip_invalid: bool):
    from prefalign.data import encode_rows, load_rows
    from prefalign.data.kinds import reward_pairs  # noqa: F401  (registers the kind)

    rows = load_rows(path, kind="reward_pairs", skip_invalid=skip_invalid)
    examples, report = encode_rows(rows, tokenizer, max_length, "keep_end")
    if not examples:
        raise UserError(path, "no usable pairs after preprocessing", "check --max-length")
    return examples, report


def evaluate(args, rest: list[str]) -> int:
    from pathlib import Path

    from prefalign.model import DTYPES, dtype_line, expand_path
    from prefalign.pairs.io import check_out_dir
    from prefalign.reward import calibration, evaluation
    from prefalign.reward.scoring import load_reward_model, read_meta

    for name in ("model", "data", "out", "fit_data"):
        setattr(args, name, expand_path(getattr(args, name)))
    problems = [f"--{k.replace('_', '-')} must be >= {lo}, got {getattr(args, k)}"
                for k, lo in (("batch_size", 1), ("bins", 1), ("head", 0)) if getattr(args, k) < lo]
    if args.max_length is not None and args.max_length < 2:
        problems.append(f"--max-length must be >= 2, got {args.max_length}")
    if args.threads is not None and args.threads < 0:
        problems.append(f"--threads must be >= 0, got {args.threads}")
    if problems:  # every argument checked before anything is read or loaded
        raise UserError("reward eval", "; ".join(problems), "fix the arguments")
    if not Path(args.model).is_dir():
        raise UserError(args.model, "reward-model folder does not exist", "check --model")
    check_out_dir(args.out)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    dtype, line = dtype_line(args.dtype)
    _log(line)
    model, tok = load_reward_model(args.model, DTYPES[dtype], True if args.safetensors_only else None)
    k = model.config.num_labels
    if args.head >= k:
        raise UserError(args.model, f"--head {args.head} does not exist (the model has {k} outputs)",
                        f"pick a head in 0..{k - 1}")
    examples, report = _pairs(args.data, tok, args.max_length, args.skip_invalid)
    _log(report.render())
    c, r = (x[:, args.head] for x in score_pairs(model, tok, examples, args.batch_size))
    fitted_on = args.data
    if args.fit_data:
        fit_examples, _ = _pairs(args.fit_data, tok, args.max_length, args.skip_invalid)
        fc, fr = (x[:, args.head] for x in score_pairs(model, tok, fit_examples, args.batch_size))
        temperature, fitted_on = calibration.fit_temperature(fc - fr), args.fit_data
    else:
        temperature = calibration.fit_temperature(c - r)
    sources = None
    if any(ex.source is not None for ex in examples):
        sources = [ex.source if ex.source is not None else "(none)" for ex in examples]
    result = evaluation.evaluate_pairs(c, r, sources, temperature=temperature, n_bins=args.bins)
    meta = read_meta(args.model)
    result.update(model=args.model, data=args.data, temperature_fitted_on=fitted_on, head=args.head,
                  loss=meta.get("loss"))
    evaluation.write_report(args.out, result, c, r, sources,
                            title=f"prefalign reward eval: {args.name or args.model}")
    if args.save_temperature:
        stats = calibration.load_calibration(args.model) or {}
        rest_keys = {k: v for k, v in stats.items() if k not in calibration.DEFAULTS}
        mean = stats.get("mean", result["reward_mean"])
        std = stats.get("std", result["reward_std"])
        rest_keys.update(temperature_fitted_on=fitted_on)
        if not stats:  # a folder without statistics: those of the scores just computed
            rest_keys.update(rows_of=f"eval: {args.data}", n_scores=2 * result["n_pairs"])
        calibration.save_calibration(args.model, temperature, mean, std, rest_keys)
        _log(f"wrote temperature {temperature:.4g} to {args.model}/reward_stats.json")
    _log(f"accuracy {result['accuracy']:.3f} on {result['n_pairs']} pairs; ECE {result['ece_before']:.3f} → "
         f"{result['ece_after']:.3f} at T = {temperature:.4g}; wrote {Path(args.out) / 'report.md'}, metrics.json, "
         "reliability.png, distribution.png")
    return 0


def list_losses(args, rest: list[str]) -> int:
    from prefalign.reward import losses

    for name in losses.names():
        cls = losses.get_class(name)
        rows = cls.rows if isinstance(cls.__dict__.get("rows", cls.rows), str) else "pairs or scored"
        params = ", ".join(losses.hparam_names(name)) or "none"
        print(f"{name:<10} {cls.summary}  [{rows} rows; objective_args: {params}]")
    return 0
