"""Where reference log-probs come from (config ``reference``):

- ``copy``: a frozen copy of the initial policy, run alongside it;
- ``adapter``: the policy's base model with its LoRA adapter disabled (no second model in memory);
- ``precompute``: log-probs of the initial policy computed once before training and cached on disk under a key
  derived from model weights + tokenizer + data + truncation settings; on a cache hit no reference is run at all;
- ``none``: reference-free objectives.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from prefalign.logps import Feature, head_of, sequence_logps

KINDS = ("copy", "precompute", "none", "adapter")


@dataclass
class RefLogps:
    """The reference's log-probs of a batch's sequences (the attributes of ``SeqLogps`` the views read)."""

    seq_logps: torch.Tensor  # [S] summed
    token_logps: torch.Tensor | None = None  # [S, T], when asked (a live reference only)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # [S, T, ...] per requested output


class Reference:
    """Gives reference log-probs for a batch (``RefLogps``); ``None`` for kind ``none``."""

    def __init__(self, kind: str, policy=None, chunk_size: int = 1024):
        if kind not in KINDS:
            raise ValueError(f"reference must be one of {KINDS}, got '{kind}'")
        self.kind, self.policy, self.chunk_size = kind, policy, chunk_size
        self.model = None
        self.cache: torch.Tensor | None = None  # [num_examples, 2] (chosen, rejected) for ``precompute``
        if kind == "copy":
            self.model = copy.deepcopy(policy).eval()
            self.model.requires_grad_(False)
        if kind == "adapter" and not hasattr(policy, "disable_adapter"):
            raise ValueError("reference 'adapter' needs a LoRA (PEFT) policy: set lora: true")

    @property
    def live(self) -> bool:
        """Whether a model runs (``copy``, ``adapter``): only then are per-token values and features available."""
        return self.kind in ("copy", "adapter")

    @torch.no_grad()
    def logps(self, batch, policy=None, token_level: bool = False,
              features: Iterable[str | Feature] = (), score=None, temperature: float = 1.0) -> RefLogps | None:
        """Reference log-probs of the batch's sequences (chosen rows then rejected rows): summed, per-token with
        ``token_level``, and the requested per-token ``features`` (registered reducers of logps.py, e.g.
        ``"states"``, ``"hidden"``). None for kind ``none``. ``score(batch, **kw)``: the policy's wrapped log-prob
        module (DDP/FSDP), which ``adapter`` runs with the adapter off — under FSDP only its forward gathers the
        shards. ``temperature``: log-probs of the tempered distribution (online RL scores samples at the sampling
        temperature, the policy's and the reference's alike)."""
        features = tuple(features)
        if self.kind == "none":
            return None
        if self.kind == "precompute":
            if token_level or features:
                raise ValueError("reference 'precompute' stores summed log-probs only; use reference: copy or adapter")
            if batch.ref_logps is None:
                raise RuntimeError("precomputed reference log-probs missing from the batch")
            return RefLogps(batch.ref_logps)
        with self._model(policy) as model:
            if score is not None and self.kind == "adapter":
                out = score(batch, chunk_size=self.chunk_size, features=features, temperature=temperature)
            else:
                out = sequence_logps(model, batch, self.chunk_size, features=features, temperature=temperature)
        return RefLogps(out.seq_logps, out.token_logps if token_level else None, out.features)

    def head(self, policy=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The reference's LM head (weight, bias), detached; ValueError if it is not a plain linear layer."""
        if not self.live:
            raise ValueError(f"reference '{self.kind}' has no LM head; use reference: copy or adapter")
        with self._model(policy) as model:
            w, b = head_of(model)
        return w.detach(), None if b is None else b.detach()

    @contextlib.contextmanager
    def _model(self, policy):
        if self.kind == "copy":
            yield self.model
            return
        model = policy if policy is not None else self.policy  # adapter: the same weights, LoRA delta off
        with getattr(model, "module", model).disable_adapter():
            yield model


def fingerprint(model, tokenizer, examples, settings: dict) -> str:
    """Cache key: hashes of every parameter tensor, the tokenizer vocabulary, every token id, the settings."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update((tokenizer.chat_template or "").encode() if isinstance(tokenizer.chat_template, (str, type(None)))
             else json.dumps(tokenizer.chat_template).encode())
    for e in examples:
        ids = [e.prompt_ids, e.chosen_ids, e.rejected_ids]
        if getattr(e, "rejected_prompt_ids", None) is not None:  # cross-prompt: x₂ too (same-prompt keys unchanged)
            ids.append(e.rejected_prompt_ids)
        h.update(json.dumps(ids).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"ref-logps-{key}.safetensors"


def load_cache(path: Path) -> torch.Tensor | None:
    """The cached values as stored (unchecked); None when there is no file. ``read_cache`` checks them."""
    if not path.exists():
        return None
    return load_file(str(path))["ref_logps"]  # [num_examples, 2]


def _digest(values: torch.Tensor) -> str:
    return hashlib.blake2b(values.contiguous().view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()


def read_cache(path: Path, key: str, rows: int) -> tuple[torch.Tensor | None, str | None]:
    """``(values, None)`` for a sound cache file of ``key`` with ``rows`` rows; ``(None, what is wrong)`` for a
    truncated or garbled file, another key's, the wrong shape or dtype, values that do not match their stored
    checksum, or a file written without these checks (an older prefalign)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            values = f.get_tensor("ref_logps") if "ref_logps" in f.keys() else None
    except Exception as e:  # noqa: BLE001 — safetensors reports a damaged file in several ways
        return None, f"not a readable safetensors file: {(str(e).splitlines() or [type(e).__name__])[0][:80]}"
    if values is None:
        return None, "it holds no ref_logps tensor"
    if tuple(values.shape) != (rows, 2) or values.dtype != torch.float32:
        return None, f"its values are {str(values.dtype)[6:]} {list(values.shape)}, expected float32 [{rows}, 2]"
    if "fingerprint" not in meta or "digest" not in meta:
        return None, "it was written without a fingerprint and checksum (by an older prefalign)"
    if meta["fingerprint"] != key:
        return None, f"it is the cache of another fingerprint ({meta['fingerprint'][:12]}…)"
    if _digest(values) != meta["digest"]:
        return None, "its values do not match their checksum"
    return values, None


def save_cache(path: Path, values: torch.Tensor, key: str | None = None) -> None:
    """Written to a temp file and renamed (a half-written cache is never read; a failed write leaves no temp
    file), with the fingerprint ``key`` (the name's, by default) and a checksum of the values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = values.float().contiguous()
    key = key or path.name.removeprefix("ref-logps-").removesuffix(".safetensors")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"ref_logps": values}, str(tmp), metadata={"fingerprint": key, "digest": _digest(values)})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
