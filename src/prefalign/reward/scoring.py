"""Reward models in token space: build one from any causal LM folder, batch its rows, and read its scores.

**The model.** ``build_reward_model(folder, K)`` is ``AutoModelForSequenceClassification.from_pretrained(folder,
num_labels=K)``: the causal LM's body plus a new linear score head ``score`` [H → K] (Hugging Face initialises it
N(0, initializer_range²)); a folder that already is a reward model keeps its head. ``pad_token_id`` is written to
the config the head reads (``config.get_text_config()``): Hugging Face pools at the last token that is not the pad
token, and without it pools at the last position whatever it is (TRL #937, #7318: ~60% accuracy).

**The score.** ``reward_forward`` runs the model's body once per batch and reads the final hidden state at each
scored position, h [P, H], then applies the head: r = score(h) [P, K]. Computing the pooled state here (rather than
calling the model's ``forward``, which applies the head at every position and then pools) gives the features h to
losses that read them (MORE's head gradients, PAL's ideal points) and lets one row hold several scored sequences:

- ``separate`` (TRL's layout): every scored sequence is its own right-padded row;
- ``shared_prefix``: a pair's chosen and rejected sequences share their longest common token prefix (the rendered
  prompt, and more), which runs once; each completion sees the prefix and itself (a 4D mask, positions continuing
  after the prefix) and its score is read at its own last token. Exactly the same scores as ``separate``
  (``tests/reward/test_rm_pooling.py``), fewer tokens;
- ``pack``: every segment of the micro-batch in one row with a block mask (no padding).

The scored position of a sequence is its last token; the rows' sequences never end in the pad id
(``reward.model.fit_sequence``), so it is exactly where ``AutoModelForSequenceClassification.forward`` pools for
the same sequence right-padded — training, ``ModelReward`` (``prefalign label --reward``) and a plain Hugging Face
load of the saved folder all read the same number. Padding on the left works too when positions are given from
the mask (``score_sequences``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefalign.data.batch import SeqBatch, _build, _pack
from prefalign.errors import UserError

HEAD_NAMES = ("score", "classifier", "v_head", "value_head")  # what transformers' sequence-classification heads are called
META_FILE = "reward_model.json"
ADAPTER_DIR = "adapter"


# ---- the model --------------------------------------------------------------------------------------------------
def head_name(model) -> str:
    """The attribute name of the model's linear score head (``score`` for every causal-LM architecture in
    transformers); under PEFT the wrapper around it keeps the name."""
    base = unwrap(model)
    for name in HEAD_NAMES:
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return name
    raise UserError("model", f"{type(base).__name__} has no score head named {', '.join(HEAD_NAMES)}",
                    "use a causal LM whose architecture has a sequence-classification class in transformers")


def unwrap(model):
    """DDP / PEFT wrappers off: the transformers sequence-classification model (LoRA layers stay in place)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _body(model):
    base = unwrap(model)
    return getattr(base, base.base_model_prefix)


def set_pad_token(model, pad_id: int) -> None:
    """``pad_token_id`` on the model's config and on the text config its head reads (multimodal configs)."""
    model.config.pad_token_id = pad_id
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    text.pad_token_id = pad_id


@contextlib.contextmanager
def _quiet_transformers():
    """Keep transformers' loading report (``score.weight`` MISSING, ``lm_head.weight`` UNEXPECTED) off the
    console: turning a causal LM into a reward model is meant to drop the LM head and add a score head; what
    happened is said in one line by the caller."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_reward_model(path: str, num_labels: int, dtype="fp32", trust_remote_code: bool = False,
                       pad_token_id: int | None = None, use_safetensors: bool | None = None, device: str = "cpu"):
    """(model, note): a sequence-classification model with ``num_labels`` outputs from a causal LM folder (a new
    head) or a reward-model folder (its head); ``note`` says which, for the log."""
    from transformers import AutoModelForSequenceClassification

    from prefalign.model import DTYPES, _check_exists, check_weights, resolve_dtype, safetensors_only

    path = _check_exists(path)
    if isinstance(dtype, str):
        dtype = DTYPES[resolve_dtype(dtype, device)[0]]
    strict = safetensors_only(use_safetensors)
    check_weights(path, strict)
    try:
        with _quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, dtype=dtype, trust_remote_code=trust_remote_code,
                use_safetensors=True if strict else None, output_loading_info=True)
    except Exception as e:  # noqa: BLE001 — an architecture without a classification class, a head of other size
        text = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(path, f"cannot load as a reward model with {num_labels} output(s) ({text})",
                        "point model at a causal LM folder whose architecture transformers has a "
                        "ForSequenceClassification class for, or at a reward model with that many heads") from None
    if pad_token_id is not None:
        set_pad_token(model, pad_token_id)
    name = head_name(model)
    head = getattr(model, name)
    new = any(k.split(".")[0] == name for k in info.get("missing_keys", ()))
    where = "new, initialised N(0, initializer_range²)" if new else "loaded from the folder"
    shape = f"{getattr(head, 'in_features', '?')} → {getattr(head, 'out_features', num_labels)}"
    return model, f"reward model: {type(model).__name__}, score head '{name}' [{shape}] {where}"


def add_reward_lora(model, r: int, alpha: int, dropout: float, target_modules):
    """LoRA on the body; the score head is trained in full and saved with the adapter (``modules_to_save``),
    so a reloaded adapter has the trained head, not a re-initialised one (OpenRLHF #682/#873, trl #1379)."""
    from peft import LoraConfig, get_peft_model

    from prefalign.model import quiet_third_party

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     task_type="SEQ_CLS", modules_to_save=[head_name(model)])
    with quiet_third_party():
        return get_peft_model(model, cfg)


def load_reward_model(path: str | Path, dtype: torch.dtype | str | None = None, use_safetensors: bool | None = None):
    """(model in eval mode, tokenizer) from a reward-model folder: a sequence-classification folder (what
    ``prefalign reward train`` writes, or any Hugging Face reward model), or a ``SEQ_CLS`` LoRA adapter folder
    (loaded on its base with its saved score head). Every failure is one line naming the folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from prefalign.model import (
        DTYPES,
        adapter_base,
        check_weights,
        is_adapter,
        quiet_third_party,
        read_adapter_config,
        safetensors_only,
    )

    path = Path(path)
    where = f"reward {path}"
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    strict = safetensors_only(use_safetensors)
    try:
        check_weights(str(path), strict)
    except UserError as e:
        raise UserError(where, e.what, e.todo) from None
    try:
        if is_adapter(path):
            from peft import PeftModel

            acfg = read_adapter_config(path)
            if acfg.get("task_type") != "SEQ_CLS":
                raise UserError(where, f"is a LoRA adapter of task {acfg.get('task_type')!r}, not a reward model",
                                "pass a reward model (a sequence-classification folder or a SEQ_CLS adapter)")
            base = adapter_base(path)
            tok_dir = path if (path / "tokenizer_config.json").exists() else Path(base)
            tokenizer = AutoTokenizer.from_pretrained(tok_dir)
            with _quiet_transformers():
                model = AutoModelForSequenceClassification.from_pretrained(
                    base, num_labels=_adapter_num_labels(path), dtype=dtype, use_safetensors=True if strict else None)
            with quiet_third_party():
                model = PeftModel.from_pretrained(model, str(path))
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype,
                                                                       use_safetensors=True if strict else None)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 — OSError, ValueError, a truncated file's SafetensorError, …
        text = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(where, f"cannot load a sequence-classification model ({text})",
                        "pass a folder saved with save_pretrained (config.json, weights, tokenizer)") from None
    if tokenizer.pad_token is None:  # batching needs a pad id; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    if unwrap(model).config.pad_token_id is None:  # the model pools at the last token that is not pad
        set_pad_token(unwrap(model), tokenizer.pad_token_id)
    return model.eval(), tokenizer


def _adapter_num_labels(path: Path) -> int:
    """The score head's output count, from the adapter's saved head weight (modules_to_save)."""
    from safetensors import safe_open

    f = path / "adapter_model.safetensors"
    if f.is_file():
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                if key.split(".")[-2] in HEAD_NAMES and key.endswith("weight"):
                    return int(st.get_slice(key).get_shape()[0])
    meta = read_meta(path.parent) if (path.parent / META_FILE).is_file() else {}
    return int(meta.get("num_heads", 1))


def read_meta(folder: str | Path) -> dict:
    """``reward_model.json`` of a folder ``prefalign reward train`` wrote ({} when there is none)."""
    f = Path(folder) / META_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UserError(str(f), f"not valid JSON ({str(e).splitlines()[0][:120]})",
                        "restore the file as prefalign reward train wrote it, or delete it") from None
    return data if isinstance(data, dict) else {}


# ---- batches ----------------------------------------------------------------------------------------------------
@dataclass
class RewardBatch(SeqBatch):
    """B rows laid out by the shared segment builder, and P scored positions: (``pool_row``, ``pool_pos``) of
    scored position p, which belongs to sequence ``pool_seq[p]``. Pair rows: sequence i < B is the chosen of row
    i, B + i its rejected (P = 2B); scored rows: sequence i is row i (P = B); step rows: one sequence per row,
    P = every step's end, in row then step order."""

    pool_row: torch.Tensor | None = None  # [P]
    pool_pos: torch.Tensor | None = None  # [P]
    pool_seq: torch.Tensor | None = None  # [P]
    num_rows: int = 0
    rows_kind: str = "pairs"  # pairs | scored | steps

    @property
    def num_pairs(self) -> int:  # what pair-oriented code reads as "rows of the batch"
        return self.num_rows

    def to(self, device) -> RewardBatch:
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return RewardBatch(move(self.input_ids), move(self.attention_mask), move(self.position_ids),
                           self.scoring.to(device) if self.scoring is not None else None, move(self.real), self.rows,
                           {k: move(v) for k, v in self.extras.items()}, pool_row=move(self.pool_row),
                           pool_pos=move(self.pool_pos), pool_seq=move(self.pool_seq), num_rows=self.num_rows,
                           rows_kind=self.rows_kind)


def layout_sequences(rows: list[list[tuple[list[int], int, int]]], pools: dict[int, list[int]], num_seqs: int,
                     pad_id: int, mask_4d: bool, pack: bool, num_rows: int, rows_kind: str,
                     extras: dict | None = None, source_rows: list[int] | None = None) -> RewardBatch:
    """Segments (ids, parent, seq) per row → a ``RewardBatch``; ``pools[seq]``: offsets within sequence seq's
    completion segment whose hidden states are scored."""
    if pack:
        rows = _pack(rows)
    ids, mask, pos, scoring, real = _build(rows, num_seqs, pad_id, mask_4d or pack, None)
    found = []  # (seq, k, row, position)
    for r, segs in enumerate(rows):
        start = 0
        for seg, _, seq in segs:
            if seq >= 0:
                found += [(seq, k, r, start + off) for k, off in enumerate(pools[seq])]
            start += len(seg)
    found.sort()
    t = torch.tensor([f[2:] for f in found], dtype=torch.long).reshape(-1, 2)  # [P, 2] (row, position)
    return RewardBatch(ids, mask, pos, scoring, real, source_rows or [], extras or {},
                       pool_row=t[:, 0].contiguous(), pool_pos=t[:, 1].contiguous(),
                       pool_seq=torch.tensor([f[0] for f in found], dtype=torch.long), num_rows=num_rows,
                       rows_kind=rows_kind)


def collate_pair_sequences(examples, pad_id: int, layout: str = "separate", pack: bool = False, extras=None):
    """Pair examples (``prompt_ids`` = the shared prefix of the two scored sequences) → a ``RewardBatch``."""
    b = len(examples)
    if layout == "separate":
        rows = [[(e.prompt_ids, -1, -1), (e.chosen_ids, 0, i)] for i, e in enumerate(examples)]
        rows += [[(e.prompt_ids, -1, -1), (e.rejected_ids, 0, b + i)] for i, e in enumerate(examples)]
    elif layout == "shared_prefix":
        rows = [[(e.prompt_ids, -1, -1), (e.chosen_ids, 0, i), (e.rejected_ids, 0, b + i)]
                for i, e in enumerate(examples)]
    else:
        raise ValueError(f"layout must be separate or shared_prefix, got '{layout}'")
    pools = {i: [len(e.chosen_ids) - 1] for i, e in enumerate(examples)}
    pools.update({b + i: [len(e.rejected_ids) - 1] for i, e in enumerate(examples)})
    return layout_sequences(rows, pools, 2 * b, pad_id, layout != "separate", pack, b, "pairs", extras,
                            [e.row for e in examples])


def collate_single_sequences(examples, pad_id: int, pack: bool = False, extras=None, rows_kind: str = "scored"):
    """Examples of one scored sequence each (``ids``; ``ends``: positions scored, default the last) → a batch."""
    rows = [[([], -1, -1), (e.ids, 0, i)] for i, e in enumerate(examples)]
    pools = {i: list(getattr(e, "ends", None) or [len(e.ids) - 1]) for i, e in enumerate(examples)}
    return layout_sequences(rows, pools, len(examples), pad_id, False, pack, len(examples), rows_kind, extras,
                            [e.row for e in examples])


# ---- scores -----------------------------------------------------------------------------------------------------
@dataclass
class Pooled:
    scores: torch.Tensor  # [P, K] the head's outputs at the scored positions
    features: torch.Tensor | None = None  # [P, H] the hidden states the head read
    extra: dict = field(default_factory=dict)


def reward_forward(model, batch: RewardBatch, features: bool = False) -> Pooled:
    """Scores (and, with ``features``, the pooled hidden states) at the batch's scored positions: one pass of the
    body, the head applied to the P pooled states only. This is the reward method's forward (``Scorer``)."""
    from prefalign.logps import _mask_for

    body = _body(model)
    head = getattr(unwrap(model), head_name(model))
    out = body(input_ids=batch.input_ids, attention_mask=_mask_for(body, batch.attention_mask),
               position_ids=batch.position_ids, use_cache=False)
    h = out.last_hidden_state[batch.pool_row, batch.pool_pos]  # [P, H]
    return Pooled(head(h), h if features else None)


@torch.no_grad()
def score_sequences(model, seqs: list[list[int]], pad_id: int, batch_size: int = 16, padding_side: str = "right",
                    features: bool = False) -> Pooled:
    """Scores [N, K] of token sequences, batched and padded on either side (positions counted from each
    sequence's first token, so left and right padding give the same scores)."""
    scores, feats = [], []
    device = next(model.parameters()).device
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s : s + batch_size]
        width = max(len(q) for q in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, q in enumerate(chunk):
            sl = slice(0, len(q)) if padding_side == "right" else slice(width - len(q), width)
            ids[i, sl] = torch.tensor(q, dtype=torch.long)
            mask[i, sl] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        last = torch.tensor([len(q) - 1 if padding_side == "right" else width - 1 for q in chunk])
        batch = RewardBatch(ids, mask, pos, None, mask, pool_row=torch.arange(len(chunk)), pool_pos=last,
                            pool_seq=torch.arange(len(chunk)), num_rows=len(chunk))
        out = reward_forward(model, batch.to(device), features)
        scores.append(out.scores.float().cpu())
        if features:
            feats.append(out.features.float().cpu())
    return Pooled(torch.cat(scores), torch.cat(feats) if features else None)


@torch.no_grad()
def score_steps(model, tokenizer, prompt, steps: list[str], separator: str = "\n") -> torch.Tensor:
    """A process reward model's scores [n_steps, K] of one solution: the row rendered as training renders step rows
    (``reward.model.step_ids``), each step scored at its separator."""
    from types import SimpleNamespace

    from prefalign.data.render import Renderer
    from prefalign.reward.model import step_ids

    ids, ends = step_ids(Renderer(tokenizer), "steps", prompt, steps, separator)
    b = collate_single_sequences([SimpleNamespace(row=0, ids=ids, ends=ends)], tokenizer.pad_token_id,
                                 rows_kind="steps")
    return reward_forward(model, b.to(next(model.parameters()).device)).scores.float().cpu()
