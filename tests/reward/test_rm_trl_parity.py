"""Parity with TRL 1.16's ``RewardTrainer`` loss: TRL's own ``compute_loss`` and our ``bt`` on identical scores.

How TRL is run: a real ``RewardTrainer`` (tiny fp64 ``LlamaForSequenceClassification``, num_labels = 1, 2-row
dataset, CPU, offline) is built once per module. ``compute_loss(model, inputs)`` runs ``model(**inputs)``, splits
``logits`` [2B, 1] into chosen (first half) and rejected (second half), and computes
−logσ(r_c − r_r − margin).mean() (+ ``center_rewards_coefficient``·mean((r_c + r_r)²)). Passing a ``FixedScores``
"model" that returns given logits runs all of that code on scores we choose; then the real tiny model checks the
batch layout end to end (loss and parameter gradients). fp64, to 1e-6 (in fact to rounding).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from prefalign.reward import losses as L

pytest.importorskip("trl")

f64 = torch.float64
TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    import datasets
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from prefalign.testing import tiny_tokenizer

    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)
    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, num_labels=1,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg).double()
    ds = datasets.Dataset.from_dict({"chosen": ["a b yes", "c d", "hello world"],
                                     "rejected": ["a b no", "c e f", "sad"]})
    args = RewardConfig(output_dir=str(tmp_path_factory.mktemp("rm")), report_to=[], bf16=False, use_cpu=True,
                        activation_checkpointing=False, save_strategy="no")  # (gradient_checkpointing: deprecated)
    return RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)


class FixedScores:
    """Stands in for the model in ``compute_loss``: returns the given [2B, 1] logits, whatever the inputs."""

    def __init__(self, logits):
        self.logits = logits

    def __call__(self, **inputs):
        return SimpleNamespace(logits=self.logits)


def trl_loss(tr, logits, margin=None, center=None):
    tr.args.center_rewards_coefficient = center
    B = logits.shape[0] // 2
    inputs = {"input_ids": torch.ones(2 * B, 3, dtype=torch.long), "attention_mask": torch.ones(2 * B, 3)}
    if margin is not None:
        inputs["margin"] = margin
    return tr.compute_loss(FixedScores(logits), inputs)


@pytest.mark.parametrize("center", [None, 0.01, 0.5])
@pytest.mark.parametrize("with_margin", [False, True])
def test_bt_equals_trl_reward_loss(trainer, with_margin, center):
    g = torch.Generator().manual_seed(3)
    for B in (1, 5):
        logits = (3 * torch.randn(2 * B, 1, generator=g, dtype=f64)).requires_grad_()
        margin = torch.rand(B, generator=g, dtype=f64) * 2 if with_margin else None
        theirs = trl_loss(trainer, logits, margin, center)
        (g_theirs,) = torch.autograd.grad(theirs, logits)

        ours_logits = logits.detach().clone().requires_grad_()
        rc, rr = ours_logits.chunk(2)  # TRL's layout: chosen rows first
        loss = L.get("bt", center_rewards_coefficient=center)
        value, metrics = loss(L.RewardScores(rc, rr, {"margin": margin} if with_margin else {}))
        (g_ours,) = torch.autograd.grad(value, ours_logits)
        assert value.dtype == f64
        assert_close(value, theirs, **TOL)
        assert_close(g_ours, g_theirs, **TOL)
        got = trainer._metrics["train"]  # TRL's logged metrics for this call
        assert metrics["accuracy"] == pytest.approx(got["accuracy"][-1])
        assert metrics["margin"] == pytest.approx(got["margin"][-1])
        assert metrics["reward_mean"] == pytest.approx(got["mean_reward"][-1])
        assert metrics["reward_min"] == pytest.approx(got["min_reward"][-1])
        assert metrics["reward_max"] == pytest.approx(got["max_reward"][-1])


def test_trl_without_margin_column_ignores_it_like_use_margin_false(trainer):
    """TRL subtracts a margin only when the batch has the column; ``use_margin=False`` is that with the column."""
    logits = torch.tensor([[1.5], [-0.5], [0.2], [0.7]], dtype=f64)
    rc, rr = logits.chunk(2)
    ours = L.get("bt", use_margin=False)(L.RewardScores(rc, rr, {"margin": torch.tensor([0.3, 0.9], dtype=f64)}))
    assert_close(ours[0], trl_loss(trainer, logits), **TOL)


def test_real_model_batch_layout_and_parameter_gradients(trainer):
    """TRL's collator batch through the tiny fp64 model: TRL's loss and ours on its scores, same value and grads."""
    model = trainer.model
    examples = [dict(trainer.train_dataset[i], margin=0.25 * i) for i in range(3)]
    inputs = trainer.data_collator(examples)  # input_ids [6, T]: chosen rows, then rejected rows; margin [3] fp32
    trainer.args.center_rewards_coefficient = 0.05
    model.zero_grad()
    theirs = trainer.compute_loss(model, dict(inputs))
    theirs.backward()
    g_theirs = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    scores = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits  # [6, 1]
    rc, rr = scores.chunk(2)
    ours, _ = L.get("bt", center_rewards_coefficient=0.05)(L.RewardScores(rc, rr, {"margin": inputs["margin"]}))
    ours.backward()
    assert_close(ours, theirs, **TOL)
    for n, p in model.named_parameters():
        assert_close(p.grad, g_theirs[n], **TOL, msg=n)
