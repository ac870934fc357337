"""The final model: written to a temp folder, then moved into the output folder file by file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def save_final(model, tokenizer, out: Path, merge_lora: bool) -> None:
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)  # LoRA: the adapter only
    tokenizer.save_pretrained(tmp)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    if merge_lora and hasattr(model, "merge_and_unload"):
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        mtmp = out / ".merged.tmp"
        shutil.rmtree(mtmp, ignore_errors=True)
        merged.save_pretrained(mtmp, safe_serialization=True)
        tokenizer.save_pretrained(mtmp)
        shutil.rmtree(out / "merged", ignore_errors=True)
        os.replace(mtmp, out / "merged")
