"""``prefalign decode``: decoding-time alignment from the command line (calls ``run_decode``)."""

from __future__ import annotations

import argparse

from prefalign.errors import UserError

HELP = """Decode one completion per prompt with a decoding-time alignment method (no training).

  prefalign decode --method best_of_n --model M --prompts p.jsonl --reward vader --hparam n=8 --out out.jsonl
  prefalign decode --method dera --model outputs/lora-run --hparam lam=2.0 --prompts p.jsonl --out out.jsonl
  prefalign decode --method args --model M --reward vader --hparam k=10 --hparam w=1.5 --prompts p.jsonl

Methods: {methods}
A LoRA adapter folder as --model loads as a PEFT model, so DeRa can use the adapter on and off as aligned and
reference models (or give --ref-model). Prompts: .jsonl rows with a "prompt" string, or a .txt, one per line.

--reward module:function imports that Python module, which runs its code: name only code you trust. It is found on
sys.path (installed, or on PYTHONPATH); prefalign does not add the working directory to it (PYTHONPATH=. for a
my_rewards.py there). An exception the function raises is reported as 'reward X raised ...: fix the function'.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    from prefalign.decode.run import METHODS

    methods = "; ".join(f"{name} ({summary})" for name, (_, _, summary) in METHODS.items())
    p = sub.add_parser("decode", help="decoding-time alignment: best-of-n, ARGS, DeRa, Linear Alignment, DAEMON",
                       description=HELP.format(methods=methods), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--model", required=True, help="model folder (or LoRA adapter folder)")
    p.add_argument("--ref-model", help="reference model folder (DeRa without an adapter)")
    p.add_argument("--prompts", required=True, help=".jsonl with 'prompt' or .txt with one prompt per line")
    p.add_argument("--reward", help="vader, module:function (imports and runs that module: see above), or a "
                   "reward-model folder")
    p.add_argument("--hparam", action="append", default=[], metavar="NAME=VALUE", help="method hyperparameter")
    p.add_argument("--out", help="write JSONL rows {prompt, completion, ...} here (default: print)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--system", help="system message for every prompt")
    p.add_argument("--no-chat", action="store_true", help="do not use the tokenizer's chat template")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                   help="weights' dtype (default auto: bf16 where the device computes it natively, else fp32)")
    p.add_argument("--safetensors-only", action="store_true",
                   help="refuse model, adapter and reward folders whose weights are pickle files (pytorch_model.bin, "
                        "read with torch.load(weights_only=True) otherwise); also PREFALIGN_SAFETENSORS_ONLY=1")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def parse_hparams(items: list[str]) -> dict:
    """``["n=8", "w=1.5"]`` → ``{"n": "8", "w": "1.5"}`` (typed later by the method's dataclass)."""
    hparams = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError("--hparam", f"'{item}' is not NAME=VALUE", "write e.g. --hparam n=8")
        hparams[key.strip()] = value.strip()
    return hparams


def run(args, rest) -> int:
    import json
    import sys

    from prefalign.decode.generate import GenOptions
    from prefalign.decode.run import _check, make_config, run_decode
    from prefalign.model import dtype_line, expand_path
    from prefalign.pairs.io import check_out_file, read_prompts, write_jsonl

    for key in ("model", "ref_model", "prompts", "reward", "out"):
        setattr(args, key, expand_path(getattr(args, key, None)))
    hparams = parse_hparams(args.hparam)
    opts = GenOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      seed=args.seed, batch_size=args.batch_size)
    _check(args.method, opts, make_config(args.method, hparams))  # every argument before anything is read
    if args.out:
        check_out_file(args.out)
    dtype, line = dtype_line(getattr(args, "dtype", "auto"), "cpu")
    print(line, file=sys.stderr, flush=True)
    prompts = read_prompts(args.prompts)
    result = run_decode(args.method, args.model, prompts=prompts, reward=args.reward, ref_model=args.ref_model,
                        hparams=hparams, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_p=args.top_p, seed=args.seed, stop=args.stop, batch_size=args.batch_size,
                        chat=False if args.no_chat else None, system=args.system, progress=True, dtype=dtype,
                        use_safetensors=True if getattr(args, "safetensors_only", False) else None)
    rows = [{k: v for k, v in r.items() if k != "token_ids"} for r in result.rows(prompts)]
    if args.out:
        write_jsonl(args.out, rows)
        rewards = [r["reward"] for r in rows if isinstance(r.get("reward"), (int, float))]
        extra = f", mean reward {sum(rewards) / len(rewards):.4f}" if rewards else ""
        print(f"{len(rows)} completions ({args.method}) written to {args.out}{extra}")
    else:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    return 0
