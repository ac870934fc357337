"""Loading a causal LM + tokenizer from a local folder (or a hub name when online), with optional LoRA."""

from __future__ import annotations

from pathlib import Path

import torch

from prefalign.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _check_exists(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise UserError(path, f"cannot load a tokenizer ({_first_line(e)})",
                        "point --model (or --tokenizer) at a folder with tokenizer files") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # TRL does the same; padding is masked out anyway
    return tok


def load_model(path: str, dtype: str = "fp32", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    _check_exists(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    except Exception as e:
        raise UserError(path, f"cannot load a causal LM ({_first_line(e)})",
                        "point --model at a folder saved with save_pretrained") from None
    return model


def add_lora(model, r: int, alpha: int, dropout: float, target_modules):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def disable_dropout(model) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _check_exists(path: str) -> None:
    p = Path(path)
    looks_local = path.startswith((".", "/", "~")) or p.exists() or path.count("/") != 1
    if not path:
        raise UserError("config", "no model given", "set model: <folder> or pass --model <folder>")
    if looks_local and not p.is_dir():
        raise UserError(path, "model folder does not exist", "check the path given to --model")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def enable_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (non-reentrant: works with frozen inputs such as LoRA's)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
