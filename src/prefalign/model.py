"""Loading a causal LM + tokenizer from a local folder (or a hub name when online), with optional LoRA; the
``auto`` dtype (``resolve_dtype``) and paths as users write them (``expand_path``).

Weights formats: a folder's ``*.safetensors`` are read without running code. A folder holding only pickle files
(``pytorch_model.bin``, ``adapter_model.bin``) is read by transformers / PEFT through
``torch.load(weights_only=True)`` — restricted unpickling (tensors and plain containers only), but unpickling
all the same. ``use_safetensors=True`` (``--safetensors-only`` on the commands, ``PREFALIGN_SAFETENSORS_ONLY=1`` in
the environment) refuses such folders in one line before anything is read (``check_weights``).

Every loading failure (a missing, empty or truncated folder, an ``adapter_config.json`` that is not JSON, weights
that do not fit the base) is a one-line ``UserError`` naming the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import warnings
from pathlib import Path

import torch

from prefalign.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("auto", "fp32", "bf16")  # what --dtype / dtype: accept

# /proc/cpuinfo flags that mean the CPU multiplies bf16 in hardware (x86: AVX512-BF16, AMX; Arm: FEAT_BF16)
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def expand_path(p: str | os.PathLike | None) -> str | None:
    """``~`` and ``$VARS`` / ``${VARS}`` expanded, as a shell would on the command line (None stays None).

    Used for every path flag and path field, so ``model: ~/.cache/prefalign/smollm2-135m-instruct`` in a YAML
    config means what it means on the command line. An unset variable is left as written (``$NOPE/x``).
    """
    if p is None:
        return None
    return os.path.expanduser(os.path.expandvars(os.fspath(p)))


def _cpuinfo_text() -> str | None:
    """The text of /proc/cpuinfo (None where there is none: macOS, Windows, sandboxes)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, Arm ``Features``); None if unreadable."""
    text = _cpuinfo_text()
    if text is None:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.lower().split())
    return None


def _cpu_bf16() -> tuple[bool, str]:
    """(native bf16 on this CPU?, why), from /proc/cpuinfo, else torch's reported CPU capability."""
    flags = cpu_flags()
    if flags is not None:
        found = [f for f in _CPU_BF16_FLAGS if f in flags]
        if found:
            return True, f"this CPU computes bf16 natively: {', '.join(found)}"
        return False, "this CPU has no native bf16: AVX512-BF16/AMX missing; bf16 would be emulated, several times slower"
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # an old torch without it
        capability = "unknown"
    if "BF16" in capability.upper() or "AMX" in capability.upper():
        return True, f"this CPU computes bf16 natively: torch reports {capability}"
    return False, (f"cannot tell whether this {platform.machine() or 'CPU'} computes bf16 natively (no /proc/cpuinfo; "
                   f"torch reports {capability}); fp32 is never emulated")


def resolve_dtype(name: str, device: str | torch.device | None = "cpu") -> tuple[str, str]:
    """(``"fp32"`` or ``"bf16"``, a short sentence saying why) for a ``dtype`` setting on ``device``.

    ``auto`` is bf16 where the device computes bf16 natively (CUDA with ``torch.cuda.is_bf16_supported()``;
    a CPU with AVX512-BF16 or AMX, read from /proc/cpuinfo) and fp32 elsewhere: emulated bf16 runs several
    times slower than fp32 (SmolLM2-135M decoding, 1 thread, AVX2-only EPYC: ×3.4). Explicit values pass through.
    """
    name = str(name).strip().lower()
    if name in DTYPES:
        return name, "set explicitly"
    if name != "auto":
        raise UserError("dtype", f"unknown dtype '{name}'", f"use one of {', '.join(DTYPE_CHOICES)}")
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            return "fp32", "auto: fp32 (CUDA was asked for but is not available)"
        gpu = torch.cuda.get_device_name(torch.device(device))
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: bf16 ({gpu} computes bf16 natively)"
        return "fp32", f"auto: fp32 ({gpu} has no native bf16)"
    if kind == "cpu":
        native, why = _cpu_bf16()
        return ("bf16", f"auto: bf16 ({why})") if native else ("fp32", f"auto: fp32 ({why})")
    return "fp32", f"auto: fp32 (no native-bf16 check for {kind} devices; fp32 is the safe choice)"


def dtype_line(name: str, device: str | torch.device | None = "cpu") -> tuple[str, str]:
    """(resolved dtype, the line a command prints first): ``dtype auto: fp32 (this CPU has no native bf16: ...)``
    or ``dtype bf16 (set explicitly)``."""
    dtype, why = resolve_dtype(name, device)
    return dtype, f"dtype {why}" if why.startswith("auto:") else f"dtype {dtype} ({why})"


@contextlib.contextmanager
def quiet_third_party():
    """Silence deprecation warnings that libraries raise about their *own* calls into each other (PEFT reading
    transformers' ``is_gradient_checkpointing``): a user did not cause them and cannot act on them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = _check_exists(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise UserError(path, f"cannot load a tokenizer ({_first_line(e)})",
                        "point --model (or --tokenizer) at a folder with tokenizer files") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # TRL does the same; padding is masked out anyway
    return tok


def load_model(path: str, dtype: str | torch.dtype | None = "fp32", trust_remote_code: bool = False,
               use_safetensors: bool | None = None, device: str = "cpu"):
    """A causal LM on the CPU in ``dtype`` (fp32, bf16, or auto: see ``resolve_dtype``; a torch dtype; None: the
    checkpoint's own). ``use_safetensors``: refuse pickle weights (None: ``PREFALIGN_SAFETENSORS_ONLY``)."""
    from transformers import AutoModelForCausalLM

    path = _check_exists(path)
    if isinstance(dtype, str):
        dtype = DTYPES[resolve_dtype(dtype, device)[0]]
    strict = safetensors_only(use_safetensors)
    check_weights(path, strict)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     use_safetensors=True if strict else None)
    except Exception as e:
        raise UserError(path, f"cannot load a causal LM ({_first_line(e)})",
                        "point --model at a folder saved with save_pretrained (config.json and complete weights)"
                        ) from None
    return model


# ---- weights formats and adapters -------------------------------------------------------------------------------
SAFETENSORS_ENV = "PREFALIGN_SAFETENSORS_ONLY"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def safetensors_only(flag: bool | None = None) -> bool:
    """``flag`` when given, else whether ``PREFALIGN_SAFETENSORS_ONLY`` is set to 1/true/yes/on."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(SAFETENSORS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_weights(path: str, use_safetensors: bool, prefix: str = "") -> None:
    """With ``use_safetensors``, refuse a local folder whose weights (``prefix*``) are only pickle files.
    (A hub name is left to transformers' own ``use_safetensors=True``.)"""
    p = Path(path)
    if not use_safetensors or not p.is_dir():
        return
    files = [f for f in p.iterdir() if f.is_file() and f.name.startswith(prefix)]
    if any(f.suffix == ".safetensors" for f in files):
        return
    pickles = sorted(f.name for f in files if f.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(path, f"holds pickle-format weights only ({', '.join(pickles[:3])}), and safetensors-only "
                        f"loading is on", "convert them to safetensors (load, then save_pretrained) or drop "
                        f"--safetensors-only / {SAFETENSORS_ENV}")


def read_adapter_config(path: str | os.PathLike) -> dict:
    """The adapter folder's ``adapter_config.json`` as a dict (a one-line UserError when it is not a JSON object)."""
    f = Path(path) / "adapter_config.json"
    todo = "restore the adapter folder as save_pretrained wrote it (or train it again)"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(str(f), f"cannot read ({e.strerror or e})", todo) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        from prefalign.data.io import json_problem

        raise UserError(str(f), f"not valid JSON ({json_problem(e)})", todo) from None
    if not isinstance(cfg, dict):
        raise UserError(str(f), "expected a JSON object", todo)
    return cfg


def is_adapter(path: str | os.PathLike | None) -> bool:
    return path is not None and (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str | os.PathLike) -> str:
    """The local base-model folder an adapter folder names (``base_model_name_or_path``, ``~``/``$VARS`` expanded)."""
    base = read_adapter_config(path).get("base_model_name_or_path")
    base = expand_path(base) if isinstance(base, str) else None
    if not base or not Path(base).is_dir():
        raise UserError(str(path), f"the adapter's base model '{base}' is not a local folder",
                        "check base_model_name_or_path in adapter_config.json")
    return base


def load_adapter(path: str | os.PathLike, dtype: str | torch.dtype | None = "fp32",
                 use_safetensors: bool | None = None, device: str = "cpu"):
    """A LoRA adapter folder on its base model (``adapter_base``), as a PEFT model in eval mode; every failure
    (no or truncated ``adapter_model.*``, weights that do not fit the base) one line naming the folder."""
    from peft import PeftModel

    path = str(path)
    base = adapter_base(path)
    strict = safetensors_only(use_safetensors)
    check_weights(path, strict, prefix="adapter_model")
    if not any(f.name.startswith("adapter_model.") for f in Path(path).iterdir()):
        raise UserError(path, "adapter folder has no adapter_model.safetensors",
                        "point --model at a complete adapter folder (as prefalign train writes it)")
    model = load_model(base, dtype, use_safetensors=strict, device=device)
    try:
        with quiet_third_party():
            return PeftModel.from_pretrained(model, path).eval()
    except Exception as e:  # a truncated file, shapes that do not fit the base, an unknown PEFT type
        raise UserError(path, f"cannot load the LoRA adapter ({_first_line(e)})",
                        "point --model at a complete adapter folder (as prefalign train writes it)") from None


def load_any(path: str, dtype: str | torch.dtype | None = "fp32", use_safetensors: bool | None = None,
             device: str = "cpu"):
    """A model folder (``load_model``) or a LoRA adapter folder on its base (``load_adapter``), in eval mode."""
    if is_adapter(expand_path(path)):
        return load_adapter(expand_path(path), dtype, use_safetensors, device)
    return load_model(path, dtype, use_safetensors=use_safetensors, device=device).eval()


def add_lora(model, r: int, alpha: int, dropout: float, target_modules):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     task_type="CAUSAL_LM")
    with quiet_third_party():
        return get_peft_model(model, cfg)


def disable_dropout(model) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _check_exists(path: str) -> str:
    """The expanded path (``expand_path``); UserError naming it when a local-looking folder is missing."""
    if not path:
        raise UserError("config", "no model given", "set model: <folder> or pass --model <folder>")
    given, path = str(path), expand_path(path)
    p = Path(path)
    looks_local = given.startswith((".", "/", "~", "$")) or p.exists() or path.count("/") != 1
    if looks_local and not p.is_dir():
        raise UserError(path, "model folder does not exist" + missing_note(given, path),
                        "check the path given to --model")
    return path


def missing_note(given: str, expanded: str) -> str:
    """`` (given as ~/x)`` when expansion changed the path, plus a hint at a variable left unset."""
    note = f" (given as {given})" if given != expanded else ""
    if "$" in expanded:
        note += "; an environment variable in it is not set"
    return note


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def enable_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (non-reentrant: works with frozen inputs such as LoRA's)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_reward_in(spec, dtype: str = "auto", device: str = "cpu", batch_size: int = 16,
                   use_safetensors: bool | None = None):
    """``reward.load_reward(spec)``, with a reward-model folder's weights in ``dtype`` (auto, fp32, bf16) and
    ``~`` / ``$VARS`` in a folder path expanded; other specs (vader, module:function, callables) as they are."""
    from prefalign.reward import load_reward

    if isinstance(spec, (str, os.PathLike)):
        path = expand_path(str(spec).strip())
        if Path(path).is_dir():
            from prefalign.reward.model import ModelReward

            return ModelReward(path, device=device, batch_size=batch_size,
                               dtype=DTYPES[resolve_dtype(dtype, device)[0]], use_safetensors=use_safetensors)
        spec = path
    return load_reward(spec, device=device, batch_size=batch_size)
