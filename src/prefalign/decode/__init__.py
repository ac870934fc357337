"""Decoding-time alignment: best-of-n, ARGS, DeRa, Linear Alignment, DAEMON.

    from prefalign.decode import run_decode
    out = run_decode("best_of_n", model, tokenizer, ["Write a happy sentence."], reward="vader",
                     hparams={"n": 8}, max_new_tokens=32, seed=0)
    out.completions[0], out.info[0]["reward"]

The pure pieces (``best_of_n_select``, ``dera_logits``, ``linear_alignment_logits``, ``args_scores``,
``fit_mu``) are exported so they can be checked on toys without a model.
"""

from prefalign.decode.args import ArgsConfig, args_scores
from prefalign.decode.best_of_n import BestOfNConfig, best_of_n_select, bon_kl_bound
from prefalign.decode.daemon import DaemonConfig, fit_mu, sir_select
from prefalign.decode.dera import DeRaConfig, dera_logits
from prefalign.decode.generate import GenOptions, StepState, Stream, render_prompts, token_loop
from prefalign.decode.linear_alignment import LinearAlignmentConfig, linear_alignment_logits
from prefalign.decode.run import (
    METHODS,
    DecodeResult,
    load_causal_lm,
    make_config,
    method_hparams,
    run_decode,
)

__all__ = [
    "METHODS",
    "ArgsConfig",
    "BestOfNConfig",
    "DaemonConfig",
    "DeRaConfig",
    "DecodeResult",
    "GenOptions",
    "LinearAlignmentConfig",
    "StepState",
    "Stream",
    "args_scores",
    "best_of_n_select",
    "bon_kl_bound",
    "dera_logits",
    "fit_mu",
    "linear_alignment_logits",
    "load_causal_lm",
    "make_config",
    "method_hparams",
    "render_prompts",
    "run_decode",
    "sir_select",
    "token_loop",
]
