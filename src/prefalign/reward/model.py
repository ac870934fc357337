"""A reward model folder: ``AutoModelForSequenceClassification`` with one output (``num_labels=1``).

The text scored is the prompt and completion rendered as one user turn and one assistant turn with the
tokenizer's chat template when it has one (how chat reward models are trained), else ``prompt + completion``.
The score is read where the model pools it (the last non-pad token), the same place it was trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prefalign.errors import UserError
from prefalign.reward.base import RewardFn


def render_pair(tokenizer, prompt: str, completion: str) -> tuple[str, bool]:
    """The text of one (prompt, completion) pair, and whether it came from a chat template.

    A chat template adds its own special tokens (BOS, turn markers), so the caller must not add them again.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        return tokenizer.apply_chat_template(messages, tokenize=False), True
    return prompt + completion, False


class ModelReward(RewardFn):
    """Scores pairs with a sequence-classification reward model loaded from ``path``."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 16, max_length: int | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(batch_size)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        self.name = str(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as e:
            raise UserError(f"reward {path}", f"cannot load a sequence-classification model ({e})".replace("\n", " "),
                            "pass a folder saved with save_pretrained (config.json, weights, tokenizer)") from e
        if self.model.config.num_labels != 1:
            raise UserError(f"reward {path}", f"the model has num_labels={self.model.config.num_labels}",
                            "a reward model must output one score (num_labels=1)")
        if self.tokenizer.pad_token is None:  # batching needs a pad id; eos is the usual stand-in
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # the model pools at the last token that is not pad
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # keep the end of the completion, where the score is read
        self.max_length = max_length
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def _score(self, prompts, completions):
        rendered = [render_pair(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        texts = [t for t, _ in rendered]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not rendered[0][1],
                             truncation=self.max_length is not None, max_length=self.max_length)
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        logits = self.model(**enc).logits  # [B, 1]
        return logits[:, 0].float()
