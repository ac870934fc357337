"""Tiny models and tokenizers built on the spot, for tests, examples and benchmarks (no downloads).

``tiny_tokenizer()`` trains a small byte-level BPE on a fixed corpus and sets a ChatML chat template;
``tiny_model(tokenizer)`` builds a randomly initialised Llama; ``save_tiny(folder)`` writes both as a model
folder that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write one sentence about a cat. A cat is a small, happy animal that loves warm sunshine.",
    "What is the capital of France? Paris is the capital of France.",
    "I love this wonderful day! It is great, good and nice. This is bad, sad and terrible.",
    "Tell me a joke. Why did the chicken cross the road? To get to the other side.",
    "user assistant system hello world yes no maybe 0 1 2 3 4 5 6 7 8 9 10",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,!?;:'\"()[]{}-_/\\@#$%^&*+=<>|~`",
]


def tiny_tokenizer(vocab_size: int = 300, chat_template: str | None = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer (GPT-2 style) with ChatML special tokens; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
        pad_token="<|pad|>",
        bos_token=None,
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def tiny_model(tokenizer=None, vocab_size: int | None = None, hidden_size: int = 32, layers: int = 2,
               heads: int = 4, seed: int = 0, tie: bool = False):
    """A small random Llama; fp32; deterministic for a given seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = vocab_size or len(tokenizer)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
        eos_token_id=getattr(tokenizer, "eos_token_id", None),
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.generation_config.eos_token_id = cfg.eos_token_id
    return model


def save_tiny(folder: str | Path, seed: int = 0, chat_template: str | None = CHATML_TEMPLATE, **model_kw) -> Path:
    """Write a tiny model + tokenizer folder; returns its path."""
    folder = Path(folder)
    tok = tiny_tokenizer(chat_template=chat_template)
    model = tiny_model(tok, seed=seed, **model_kw)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
