"""A reward model folder: ``AutoModelForSequenceClassification`` with one output (``num_labels=1``).

The sequence scored is the prompt and completion rendered as one user turn and one assistant turn with the
tokenizer's chat template when it has one (how chat reward models are trained), by the training path's renderer
(``data.render.Renderer``, in token space), else ``prompt + completion`` tokenized with the tokenizer's own special
tokens. The score is read where the model pools it (the last non-pad token), the same place it was trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prefalign.data.render import Renderer, _ids
from prefalign.errors import UserError
from prefalign.reward.base import RewardFn


def render_pair(tokenizer, prompt: str, completion: str) -> tuple[str, bool]:
    """The text of one (prompt, completion) pair, and whether it came from a chat template.

    A chat template adds its own special tokens (BOS, turn markers), so the caller must not add them again.
    """
    if getattr(tokenizer, "chat_template", None):
        return Renderer(tokenizer).conversation_text("reward", pair_messages(prompt, completion)), True
    return prompt + completion, False


def pair_messages(prompt: str, completion: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


class ModelReward(RewardFn):
    """Scores pairs with a sequence-classification reward model loaded from ``path``."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 16, max_length: int | None = None,
                 dtype: torch.dtype | None = None, use_safetensors: bool | None = None):
        super().__init__(batch_size)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from prefalign.model import check_weights, safetensors_only

        path = Path(path)
        self.name = str(path)
        strict = safetensors_only(use_safetensors)  # None: PREFALIGN_SAFETENSORS_ONLY
        try:
            check_weights(str(path), strict)
        except UserError as e:
            raise UserError(f"reward {path}", e.what, e.todo) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype,
                                                                            use_safetensors=True if strict else None)
        except Exception as e:  # noqa: BLE001 — OSError, ValueError, a truncated file's SafetensorError, …
            text = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"reward {path}", f"cannot load a sequence-classification model ({text})",
                            "pass a folder saved with save_pretrained (config.json, weights, tokenizer)") from None
        if self.model.config.num_labels != 1:
            raise UserError(f"reward {path}", f"the model has num_labels={self.model.config.num_labels}",
                            "a reward model must output one score (num_labels=1)")
        if self.tokenizer.pad_token is None:  # batching needs a pad id; eos is the usual stand-in
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # the model pools at the last token that is not pad
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # keep the end of the completion, where the score is read
        self.renderer = Renderer(self.tokenizer)
        self.max_length = max_length
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def _score(self, prompts, completions):
        if self.renderer.has_template:
            seqs = [self.renderer.conversation(f"reward {self.name}", pair_messages(p, c))
                    for p, c in zip(prompts, completions)]
            if self.max_length is not None:
                seqs = [s[-self.max_length:] for s in seqs]  # keep the end of the completion, where the score is read
        else:  # a plain reward model reads its text as its tokenizer encodes it (BOS/EOS as it adds them)
            seqs = [_ids(self.tokenizer(p + c, truncation=self.max_length is not None, max_length=self.max_length))
                    for p, c in zip(prompts, completions)]  # truncated on the left (truncation_side), specials kept
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right-padded
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits  # [B, 1]
        return logits[:, 0].float()
