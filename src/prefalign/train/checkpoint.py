"""Checkpoints written atomically (temp folder, then rename) and resumed exactly.

A checkpoint folder ``checkpoints/step-N`` holds the trainable parameters (safetensors), optimizer and scheduler
state (``torch.save``, read back with ``weights_only=True``), RNG states and ``state.json``. It is written under
``step-N.tmp`` and renamed when complete, so a run killed mid-write never leaves a folder that looks finished. A
write stopped by an exception (a full disk, a second Ctrl-C during the interrupt checkpoint) removes its ``.tmp``;
one left by ``kill -9`` is removed when the run resumes (``remove_partial``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prefalign.errors import UserError
from prefalign.train.faults import maybe_fault

FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")


def save_checkpoint(folder: Path, params: dict[str, torch.Tensor], optimizer: dict, scheduler: dict, state: dict,
                    keep: int, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write full CPU tensors (the engine gathers sharded ones first): trainable parameters by name, the optimizer's
    and scheduler's state dicts, the RNG and ``state``; ``tensors``: a method's tensor state (``method.safetensors``,
    e.g. online RL's rollout buffer)."""
    final = folder / f"step-{state['step']}"
    tmp = folder / f"step-{state['step']}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write(tmp, params, optimizer, scheduler, state)
        if tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / METHOD_TENSORS))
    except BaseException:  # OSError, KeyboardInterrupt (a second SIGINT), …: never leave a half-written folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, params: dict, optimizer: dict, scheduler: dict, state: dict) -> None:
    save_file(params, str(tmp / "trainable.safetensors"))
    maybe_fault("mid_checkpoint", state["step"])
    torch.save(optimizer, tmp / "optimizer.pt")
    torch.save(scheduler, tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    _fsync_dir(tmp)


METHOD_TENSORS = "method.safetensors"


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's method tensors ({} when it has none)."""
    f = path / METHOD_TENSORS
    if not f.is_file():
        return {}
    try:
        return load_file(str(f))
    except Exception as e:  # noqa: BLE001 — a damaged file: the same advice as for the rest of the checkpoint
        raise UserError(str(path), f"checkpoint is corrupted ({str(e).splitlines()[0][:120]})",
                        "delete this checkpoint folder to resume from the previous one") from None


def remove_partial(folder: Path) -> list[Path]:
    """Remove half-written ``step-N.tmp`` folders (a run killed while writing one); returns what was removed."""
    gone = [p for p in folder.glob("step-*.tmp")] if folder.is_dir() else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (``*.tmp`` folders are never returned)."""
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def load_checkpoint(path: Path, named_params, optimizer, scheduler) -> dict:
    """Restore parameters (``named_params``: (name, parameter) pairs; a sharded one takes its shard), optimizer,
    scheduler and RNG; returns ``state``."""
    from prefalign.train.distributed import load_full

    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise UserError(str(path), f"checkpoint is incomplete (missing {', '.join(missing)})",
                        "delete this checkpoint folder to resume from the previous one")
    try:
        params = load_file(str(path / "trainable.safetensors"))
        named = dict(named_params)
        for n, t in params.items():
            load_full(named[n], t)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
        return json.loads((path / "state.json").read_text())
    except Exception as e:  # safetensors, pickle-free torch.load and key errors all mean a damaged checkpoint
        raise UserError(str(path), f"checkpoint is corrupted ({str(e).splitlines()[0][:120]})",
                        "delete this checkpoint folder to resume from the previous one") from None


def _fsync_dir(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
