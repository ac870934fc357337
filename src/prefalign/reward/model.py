"""A reward-model folder: ``AutoModelForSequenceClassification`` with one output (``num_labels=1``), or K outputs
(a multi-head reward model) of which one is chosen with ``head=k``.

The sequence scored is the prompt and completion rendered as one user turn and one assistant turn with the
tokenizer's chat template when it has one (how chat reward models are trained), by the training path's renderer
(``data.render.Renderer``, in token space), else ``prompt + completion`` tokenized with the tokenizer's own special
tokens. The score is read where the model pools it (the last non-pad token), the same place it was trained on.
``reward_ids`` is that rendering, and ``prefalign reward train`` (``data/kinds/reward_pairs.py``, ``scored.py``)
renders its training rows with it, so a model trained there is used here on exactly the sequences it was trained on.

A folder written by ``prefalign reward train`` is an ordinary sequence-classification folder (with LoRA: the merged
model; the adapter itself is in its ``adapter/`` sub-folder). An adapter folder (``adapter_config.json`` of task
``SEQ_CLS``, the score head saved with it) is loaded onto its base model here too.
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


def reward_ids(renderer: Renderer, where: str, prompt, completion, max_length: int | None = None) -> list[int]:
    """The token ids a reward model scores for (prompt, completion):

    - conversations (``prompt`` and ``completion`` lists of messages, TRL's conversational rows): the whole
      conversation through the chat template, no generation prompt;
    - strings with a chat template: one user turn (the prompt) and one assistant turn (the completion);
    - strings without one: ``prompt + completion`` tokenized with the tokenizer's own special tokens.

    ``max_length`` keeps the last tokens (where the score is read): the template path cuts ids, the plain path
    lets the tokenizer truncate (on its ``truncation_side``, special tokens kept), as ``ModelReward`` always did.
    """
    if isinstance(prompt, list) or isinstance(completion, list):
        ids = renderer.conversation(where, list(prompt) + list(completion))
    elif renderer.has_template:
        ids = renderer.conversation(where, pair_messages(prompt, completion))
    else:
        return _ids(renderer.tok(prompt + completion, truncation=max_length is not None, max_length=max_length))
    return ids[-max_length:] if max_length is not None else ids


def fit_sequence(ids: list[int], pad_id: int | None, max_length: int | None, truncation: str):
    """(ids, truncated) of one scored sequence, or the reason it is dropped.

    Trailing pad ids are removed first: a sequence-classification model reads its score at the last token that
    is *not* ``pad_token_id`` (Hugging Face's rule), so with pad = EOS a trailing EOS is never the scored token;
    removing it makes "the last token" and "where the model pools" the same position in training and in use
    (the hidden states before it do not depend on it). Then ``keep_start`` keeps the first ``max_length`` tokens,
    ``keep_end`` the last ones (the end, where the score is read, survives)."""
    ids = list(ids)
    while ids and pad_id is not None and ids[-1] == pad_id:
        ids.pop()
    if not ids:
        return "sequence is only padding tokens"
    if max_length is None or len(ids) <= max_length:
        return ids, False
    return (ids[:max_length] if truncation == "keep_start" else ids[-max_length:]), True


def step_ids(renderer: Renderer, where: str, prompt, steps: list[str], separator: str = "\n"):
    """(ids, ends) of a process-reward row: the prompt as a generation prompt (a user turn with the chat
    template, else the plain text) followed by each step's ``step + separator`` tokens; ``ends[j]`` is the index of
    step j's last token (its separator), where its score is read (TRL's PRM layout)."""
    if isinstance(prompt, str) and renderer.has_template:
        prompt = [{"role": "user", "content": prompt}]
    ids = renderer.prompt(where, prompt)
    ends = []
    for step in steps:
        ids = ids + _ids(renderer.tok(step + separator, add_special_tokens=False))
        ends.append(len(ids) - 1)
    return ids, ends


class ModelReward(RewardFn):
    """Scores pairs with a sequence-classification reward model loaded from ``path`` (``head``: which output of a
    multi-head model)."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 16, max_length: int | None = None,
                 dtype: torch.dtype | None = None, use_safetensors: bool | None = None, head: int | None = None):
        super().__init__(batch_size)
        from prefalign.reward.scoring import load_reward_model

        path = Path(path)
        self.name = str(path)
        self.model, self.tokenizer = load_reward_model(path, dtype, use_safetensors)
        k = self.model.config.num_labels
        if head is None and k != 1:
            raise UserError(f"reward {path}", f"the model has num_labels={k}",
                            "a reward model must output one score (num_labels=1); for a multi-head model pick "
                            "one output with ModelReward(path, head=i)")
        if head is not None and not 0 <= head < k:
            raise UserError(f"reward {path}", f"head {head} does not exist (the model has {k} outputs)",
                            f"pick a head in 0..{k - 1}")
        self.head = head or 0
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # keep the end of the completion, where the score is read
        self.renderer = Renderer(self.tokenizer)
        self.max_length = max_length
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def _score(self, prompts, completions):
        # A plain reward model reads its text as its tokenizer encodes it (BOS/EOS as it adds them); truncated on
        # the left, special tokens kept.
        seqs = [reward_ids(self.renderer, f"reward {self.name}", p, c, self.max_length)
                for p, c in zip(prompts, completions)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right-padded
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits  # [B, K]
        return logits[:, self.head].float()
