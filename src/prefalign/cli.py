"""`prefalign <command>`: thin — parses arguments, calls the library, turns user errors into one line + exit 2."""

from __future__ import annotations

import argparse
import sys

from prefalign.errors import HealthError, UserError

TRAIN_HELP = """Train a policy on preference data.

  prefalign train --config my.yaml --beta 0.2
  accelerate launch --num_processes 2 -m prefalign train --config my.yaml

Every config field can be given as --field value (values are parsed as YAML: --objective "[dpo, sft]").
Fields: {fields}
"""


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


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


COMMANDS = {
    "train": (_train, "train a policy on preference data (DPO and friends)"),
    "objectives": (_objectives, "list the registered objectives"),
}


def build_parser() -> argparse.ArgumentParser:
    from prefalign.train.config import field_names

    p = argparse.ArgumentParser(prog="prefalign", description="Align language models with preference data.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help=COMMANDS["train"][1], description=TRAIN_HELP.format(
        fields=", ".join(field_names())), formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", help="YAML config file")
    t.add_argument("--skip-invalid", action="store_true", help="drop invalid rows instead of stopping")
    t.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    o = sub.add_parser("objectives", help=COMMANDS["objectives"][1])
    o.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train":
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
