"""Reward-model training through the one engine (method: reward): every registered loss trains on its rows and saves a
folder that loads; the LoRA score head survives save → load; the loss is exact across micro-batch splits and
layouts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prefalign.model import quiet_third_party
from prefalign.reward import ModelReward
from prefalign.reward.scoring import load_reward_model, score_sequences
from prefalign.train.config import TrainConfig
from prefalign.train.loop import build


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared CPU, two OpenMP threads on tiny matrices wait on each other (×20 slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

ITEMS = ["cat", "dog", "tree", "car", "book", "rain", "sun", "cake"]


def _rows(kind: str, n: int = 8) -> list[dict]:
    out = []
    for i in range(n):
        item, good, bad = ITEMS[i % len(ITEMS)], "good and nice", "bad and sad"
        prompt = f"Write one sentence about a {item}."
        if kind == "scored":
            out.append({"prompt": prompt, "completion": f"The {item} is {good if i % 2 else bad}.",
                        "score": float(i % 2), "scores": None})
        elif kind == "steps":
            out.append({"prompt": f"What is {i} + 1?", "steps": [f"{i} + 1", f"= {i + 1}" if i % 2 else "= 0"],
                        "labels": [True, bool(i % 2)]})
        else:
            out.append({"prompt": prompt, "chosen": f" The {item} is {good}.", "rejected": f" The {item} is {bad}.",
                        "margin": 0.1 * (i % 3), "source": "ab"[i % 2], "user_id": f"u{i % 3}",
                        "targets": [1.0, None if i % 4 == 0 else float(i % 2)]})
    return out


def _write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    return str(p)


def _run(model_dir, data, out, on_save=None, **kw):
    base = dict(model=str(model_dir), data=data, output_dir=str(out), method="reward", objective="bt",
                dtype="fp32", learning_rate=1e-3, batch_size=4, max_steps=2, report_to=[], progress=False, seed=0,
                lr_scheduler="constant", memory_probe=False)
    engine = build(TrainConfig(**{**base, **kw}), log=lambda m: None)
    if on_save is not None:  # look at the live model just before the folder is written
        save = engine.method.save_final
        engine.method.save_final = lambda model, o: (on_save(engine.method, model), save(model, o))
    engine.train()
    return out, engine


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


LOSSES = [
    ("bt", {"center_rewards_coefficient": 0.01}, "pairs", 1),
    ("mse", {}, "scored", 1),
    ("multihead", {"kind": "bt"}, "pairs", 2),  # K = 2 from the rows' per-head targets (null: unlabelled)
    ("more", {}, "pairs", 1),
    ("pal", {"num_prototypes": 2, "dim": 4}, "pairs", 1),  # num_users filled in from the data
    ("prm", {}, "steps", 1),
]


@pytest.mark.parametrize("name, args, rows, heads", LOSSES, ids=[x[0] for x in LOSSES])
def test_every_loss_trains_and_saves_a_loadable_folder(tiny_model_dir, tmp_path, name, args, rows, heads):
    from transformers import AutoModelForSequenceClassification

    data = _write(tmp_path, "d.jsonl", _rows(rows))
    out, engine = _run(tiny_model_dir, data, tmp_path / "out", objective=name, objective_args=args,
                       eval_fraction=0.25)
    m = [r for r in _metrics(out) if "loss" in r]  # the training steps' lines (the eval line has eval/ keys)
    assert [r["step"] for r in m] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in m)
    done = json.loads((out / "run_complete.json").read_text())
    assert done["method"] == "reward" and done["loss"] == name and "eval/loss" in done["eval"]
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == heads and model.config.pad_token_id == engine.method.tokenizer.pad_token_id
    stats = json.loads((out / "reward_stats.json").read_text())
    assert {"mean", "std", "temperature"} <= stats.keys() and stats["temperature"] == 1.0
    assert len(stats["head_mean"]) == heads
    meta = json.loads((out / "reward_model.json").read_text())
    assert meta["loss"] == name and meta["rows"] == rows and meta["num_heads"] == heads
    if name == "pal":
        assert meta["users"] == ["u0", "u1", "u2"] and engine.method.loss_fn.num_users == 3
        saved = load_file(str(out / "objective.safetensors"))
        assert saved["user_logits"].shape == (3, 2)
        torch.testing.assert_close(saved["prototypes"], engine.method.extra_module.prototypes.detach())
    if name == "more":
        assert meta["sources"] == ["a", "b"] and any(k.startswith("lambda/") for k in m[-1])
    if name == "prm":
        assert "step_accuracy" in m[-1]


def test_lora_score_head_survives_save_and_reload(tiny_model_dir, tmp_path):
    """The trained head (modules_to_save) is in the adapter and in the merged folder: the live model's scores come
    back from PEFT on a freshly initialised base, from AutoModelForSequenceClassification on the merged folder and
    from prefalign's reward loader (both folders) — and differ from a fresh head's."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    data = _write(tmp_path, "d.jsonl", _rows("pairs"))
    live = {}

    def capture(method, model):
        ex = method.examples
        live["seqs"] = [e.prompt_ids + e.chosen_ids for e in ex] + [e.prompt_ids + e.rejected_ids for e in ex]
        live["pad"] = method.tokenizer.pad_token_id
        live["scores"] = score_sequences(model, live["seqs"], live["pad"]).scores
        live["prompts"] = [r["prompt"] for r in _rows("pairs")]

    out, _ = _run(tiny_model_dir, data, tmp_path / "out", on_save=capture, lora=True, lora_r=4,
                  learning_rate=5e-3, max_steps=3)
    seqs, pad, ref = live["seqs"], live["pad"], live["scores"]
    torch.manual_seed(123)  # a different head initialisation than training's
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1, pad_token_id=pad)
    fresh = score_sequences(base, seqs, pad).scores
    assert (fresh - ref).abs().max() > 1e-2  # the trained head is not the initial one
    with quiet_third_party():  # PEFT reads a deprecated transformers property itself
        peft = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    for got in (score_sequences(peft, seqs, pad).scores, score_sequences(merged, seqs, pad).scores,
                score_sequences(load_reward_model(out / "adapter")[0], seqs, pad).scores):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    rows = _rows("pairs")
    for folder in (out, out / "adapter"):  # what `prefalign label --reward FOLDER` uses
        use = ModelReward(folder)
        got = torch.cat([use(live["prompts"], [r["chosen"] for r in rows]),
                         use(live["prompts"], [r["rejected"] for r in rows])])
        torch.testing.assert_close(got, ref[:, 0], atol=1e-6, rtol=1e-6)
    assert json.loads((out / "reward_model.json").read_text())["adapter"] == "adapter"


def _weights(out):
    return load_file(str(out / "model.safetensors"))


def test_loss_is_exact_across_micro_batch_splits_and_layouts(tiny_model_dir, tmp_path):
    """Global batch 4 as 4×1 (shared_prefix), 1×4 accumulated (separate) and 2×2 accumulated (packed): the same
    weights after two AdamW steps (BT with TRL's centering term and a margin column)."""
    data = _write(tmp_path, "d.jsonl", _rows("pairs", n=8))
    kw = dict(objective_args={"center_rewards_coefficient": 0.01}, adam_epsilon=1e-4, learning_rate=1e-3)
    ref, _ = _run(tiny_model_dir, data, tmp_path / "b4", batch_size=4, **kw)
    a = _weights(ref)
    for name, extra in (("b1", dict(batch_size=1, gradient_accumulation_steps=4, layout="separate")),
                        ("b2", dict(batch_size=2, gradient_accumulation_steps=2, pack=True))):
        b = _weights(_run(tiny_model_dir, data, tmp_path / name, **extra, **kw)[0])
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=f"{name}: {k}")
    la, lb = _metrics(ref), _metrics(tmp_path / "b1")  # no eval rows: every line is a training step
    assert [round(m["loss"], 5) for m in la] == [round(m["loss"], 5) for m in lb]
