"""``run_decode``: the one entry point (the CLI's ``prefalign decode --method ...`` calls it).

Plain arguments in, completions and per-prompt info out. Each method declares its hyperparameters as a
dataclass (field help = documentation); an unknown hyperparameter is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prefalign.decode.args import ArgsConfig, args_decode
from prefalign.decode.best_of_n import BestOfNConfig, best_of_n
from prefalign.decode.daemon import DaemonConfig, daemon_decode
from prefalign.decode.dera import DeRaConfig, dera_decode
from prefalign.decode.generate import GenOptions, model_device, sample
from prefalign.decode.linear_alignment import LinearAlignmentConfig, linear_alignment_decode
from prefalign.errors import UserError
from prefalign.model import DTYPES, expand_path, missing_note, resolve_dtype


@dataclass
class SampleConfig:
    """Plain decoding: no hyperparameters beyond the shared ones (temperature 0 = greedy)."""


# name -> (hyperparameter dataclass, needs a reward, one-line summary)
METHODS: dict[str, tuple[type, bool, str]] = {
    "sample": (SampleConfig, False, "plain sampling from the model (greedy at temperature 0)"),
    "best_of_n": (BestOfNConfig, True, "n samples per prompt, keep the highest reward"),
    "args": (ArgsConfig, True, "ARGS: top-k tokens rescored by logit + w·reward(prefix+token)"),
    "dera": (DeRaConfig, False, "DeRa: softmax(λ·z_aligned + (1−λ)·z_ref)"),
    "linear_alignment": (LinearAlignmentConfig, False, "(1+α)·z(x ⊕ principle) − α·z(x)"),
    "daemon": (DaemonConfig, False, "DAEMON: resample candidates ∝ exp(−μᵀf) to match target metrics"),
}


@dataclass
class DecodeResult:
    completions: list[str]  # one per prompt, in order
    info: list[dict]  # one per prompt: reward, token count, method-specific numbers
    method: str = ""
    hparams: dict = field(default_factory=dict)

    def rows(self, prompts: Sequence[str]) -> list[dict]:
        """JSONL-ready rows: {"prompt", "completion", **info}."""
        return [{"prompt": p, "completion": c, **i} for p, c, i in zip(prompts, self.completions, self.info)]


def method_hparams(method: str) -> dict[str, tuple[object, str]]:
    """{hparam: (default, help)} for a method (for ``--help`` and error messages)."""
    cls = _method(method)[0]
    return {f.name: (f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)}


def make_config(method: str, hparams: dict | None):
    """The method's hparam dataclass from a dict; strings from the CLI are converted to the default's type."""
    cls = _method(method)[0]
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in (hparams or {}).items():
        if key not in known:
            raise UserError(f"decode {method}", f"unknown hparam '{key}'",
                            f"valid: {', '.join(known) or '(none)'}")
        values[key] = _coerce(method, key, value, known[key].default)
    return cls(**values)


def run_decode(method: str, model, tokenizer=None, prompts: Sequence[str] = (), *, reward=None, ref_model=None,
               hparams: dict | None = None, max_new_tokens: int = 128, temperature: float = 1.0,
               top_p: float = 1.0, seed: int = 0, stop: Sequence[str] | None = None, batch_size: int = 8,
               chat: bool | None = None, system: str | None = None, progress: bool = False,
               desc: str | None = None, dtype: str | None = None,
               use_safetensors: bool | None = None) -> DecodeResult:
    """Decode one completion per prompt with a decoding-time alignment ``method`` (see ``METHODS``).

    ``model`` / ``ref_model``: a causal LM or a folder path (a PEFT adapter folder loads as a PEFT model);
    ``tokenizer`` defaults to the model folder's; ``dtype`` (auto, fp32, bf16; default: the checkpoint's) applies
    to models loaded from paths. ``reward``: a spec for ``load_reward`` or a callable.
    Models are put in eval mode (decoding never wants dropout). ``progress``: a bar labelled ``desc``.
    ``use_safetensors``: refuse pickle-format weights in model and reward folders (None: the
    ``PREFALIGN_SAFETENSORS_ONLY`` environment variable).
    """
    needs_reward = _method(method)[1]
    cfg = make_config(method, hparams)
    opts = GenOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                      stop=tuple(stop or ()), batch_size=batch_size, chat=chat, system=system,
                      progress=(desc or method) if progress else "")
    _check(method, opts, cfg)
    reward_fn = None  # loaded first: a bad reward spec fails before any model is loaded
    if reward is not None:
        from prefalign.reward import load_reward

        device = "cpu" if isinstance(model, (str, Path)) else str(model_device(model))
        reward_fn = load_reward(reward, device=device, use_safetensors=use_safetensors)
    elif needs_reward:
        raise UserError(f"decode {method}", "needs a reward", "pass --reward (vader, module:function or a folder)")
    if isinstance(model, (str, Path)):
        model = expand_path(model)
        tokenizer = tokenizer or model
        model = load_causal_lm(model, dtype=dtype, use_safetensors=use_safetensors)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = _load_tokenizer(expand_path(tokenizer))
    if isinstance(ref_model, (str, Path)):
        ref_model = load_causal_lm(ref_model, device=model_device(model), dtype=dtype,
                                   use_safetensors=use_safetensors)
    if tokenizer is None:
        raise UserError(f"decode {method}", "no tokenizer given", "pass a tokenizer or a model folder path")
    for m in (model, ref_model):
        if m is not None:
            m.eval()
    prompts = list(prompts)
    if not prompts:
        return DecodeResult([], [], method, dataclasses.asdict(cfg))

    if method == "sample":
        drawn = sample(model, tokenizer, prompts, opts)
        completions, info = drawn.texts, drawn.info()
    elif method == "best_of_n":
        completions, info = best_of_n(model, tokenizer, prompts, reward_fn, opts, cfg)
    elif method == "args":
        completions, info = args_decode(model, tokenizer, prompts, reward_fn, opts, cfg)
    elif method == "dera":
        completions, info = dera_decode(model, tokenizer, prompts, opts, cfg, ref_model=ref_model)
    elif method == "linear_alignment":
        completions, info = linear_alignment_decode(model, tokenizer, prompts, opts, cfg)
    else:  # daemon
        completions, info = daemon_decode(model, tokenizer, prompts, opts, cfg)
    if reward_fn is not None and method not in ("best_of_n", "args"):  # those already scored their output
        for d, r in zip(info, reward_fn(prompts, completions).tolist()):
            d["reward"] = r
    return DecodeResult(completions, info, method, dataclasses.asdict(cfg))


def load_causal_lm(path: str | Path, device="cpu", dtype=None, use_safetensors: bool | None = None):
    """A causal LM from a folder; a PEFT adapter folder loads as a PEFT model (so DeRa can disable it).

    ``dtype``: "auto", "fp32", "bf16" (``prefalign.model.resolve_dtype`` on ``device``), a torch dtype, or None
    (the checkpoint's own). ``~`` and ``$VARS`` in the path are expanded. ``use_safetensors``: refuse pickle
    weights (None: ``PREFALIGN_SAFETENSORS_ONLY``). Loading problems are one-line ``UserError``s.
    """
    from prefalign.model import load_any

    given = str(path)
    path = Path(expand_path(given))
    if not path.is_dir():
        raise UserError(f"model {path}", "is not a folder" + missing_note(given, str(path)),
                        "pass a model folder saved with save_pretrained")
    if isinstance(dtype, str):
        dtype = DTYPES[resolve_dtype(dtype, device)[0]]
    return load_any(str(path), dtype, use_safetensors=use_safetensors).to(device)


def _load_tokenizer(path):
    """The folder's tokenizer, or for an adapter folder without one its base model's."""
    from prefalign.model import adapter_base, is_adapter, load_tokenizer

    path = str(path)
    if is_adapter(path) and not (Path(path) / "tokenizer_config.json").exists():
        path = adapter_base(path)
    return load_tokenizer(path)


def _method(method: str):
    if method not in METHODS:
        raise UserError("decode", f"unknown method '{method}'", f"valid: {', '.join(METHODS)}")
    return METHODS[method]


def _coerce(method: str, key: str, value, default):
    try:
        if isinstance(value, str) and (default is None or isinstance(default, list)) and "," in value:
            return [v.strip() for v in value.split(",")]  # lists from the CLI: "0.1,0.2"
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
            return type(default)(value)
    except (TypeError, ValueError) as e:
        raise UserError(f"decode {method}", f"hparam {key}={value!r} is not a {type(default).__name__}",
                        "fix its value") from e
    return value


def _check(method: str, opts: GenOptions, cfg) -> None:
    problems = opts.problems(greedy_ok=True)
    for name in ("n", "k"):
        if getattr(cfg, name, 1) < 1:
            problems.append(f"{name} must be >= 1")
    if method in ("best_of_n", "daemon") and cfg.n > 1 and opts.temperature == 0:
        problems.append(f"{method} draws n samples; temperature 0 would make them identical")
    if not 0 < getattr(cfg, "mask_top_p", 1.0) <= 1:
        problems.append("mask_top_p must be in (0, 1]")
    if problems:
        raise UserError(f"decode {method}", "; ".join(problems), "fix the arguments")
