"""Every registered objective trains through `prefalign train`'s loop on a tiny model (CPU, fp32).

Per objective: the loss is finite at every step, it changes, and the objective's margin metric rises on a learnable
set (chosen = a positive sentence, rejected = a negative one; unpaired rows: the same sentences labelled
desirable / undesirable; sample rows (D2O): the negative sentence as ``rejected`` and two positive ones as
``samples``; revision rows (FIGA): the negative sentence as ``initial``, the positive one as ``revised``; judgment rows (CUT): the negative sentence as ``completion`` with a judgment
naming its negative words; ``cringe`` gets the rejected tokens' top-k log-probs from the loop;
``pref_prob`` rows for objectives that declare it). BoNBoN also trains from n-sample rows. Few steps, so this is a wiring test
(right rows, right container, right gradient sign), not a convergence test.
"""

from __future__ import annotations

import json
import math

import pytest
from tests.train.helpers import ITEMS, config, read_metrics, write_pairs

from prefalign import objectives as O
from prefalign.train.loop import train

# Hyperparameters that make a few steps of a tiny model move visibly (the defaults are tuned for real models);
# objectives not listed get beta = 0.5 when they have one.
OVERRIDES = {"simpo": {"beta": 2.0}, "bonbon": {"alpha": 0.5}}
# The metric that must rise (else rewards/margins); "-nll" means nll must fall.
METRIC = {"sft": "-nll", "poft": "-nll", "figa": "-figa/nll_added", "cut": "-cut/nll_judged"}


def _quiet(*a, **k):
    pass


def write_points(path, n: int = 8):
    rows = []
    for i in range(n):
        item = ITEMS[i % len(ITEMS)]
        prompt = f"Write one sentence about a {item} number {i}."
        good = i % 2 == 0
        completion = f" The {item} is good and nice." if good else f" The {item} is bad and sad."
        rows.append({"prompt": prompt, "completion": completion, "label": good})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_samples(path, n: int = 8):
    rows = []
    for i in range(n):
        item = ITEMS[i % len(ITEMS)]
        rows.append({"prompt": f"Write one sentence about a {item} number {i}.",
                     "rejected": f" The {item} is bad and sad.",
                     "samples": [f" The {item} is good and nice.", f" The {item} is nice and good."]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_revisions(path, n: int = 8):
    """FIGA rows: the revision replaces the negative words of the initial answer with positive ones."""
    rows = []
    for i in range(n):
        item = ITEMS[i % len(ITEMS)]
        rows.append({"prompt": f"Write one sentence about a {item} number {i}.",
                     "initial": f" The {item} is bad and sad.", "revised": f" The {item} is good and nice."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_judgments(path, n: int = 8):
    """CUT rows: a negative answer and a judgment that names what is wrong with it."""
    rows = []
    for i in range(n):
        item = ITEMS[i % len(ITEMS)]
        rows.append({"prompt": f"Write one sentence about a {item} number {i}.",
                     "completion": f" The {item} is bad and sad.",
                     "judgment": "The words bad and sad are wrong here."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_nsample(path, n: int = 8):
    """n-sample rows whose best (score 1) is positive and worst (−1) negative; every fourth row ties (dropped)."""
    rows = []
    for i in range(n):
        item = ITEMS[i % len(ITEMS)]
        comps = [f" The {item} is fine.", f" The {item} is good and nice.", f" The {item} is bad and sad."]
        rows.append({"prompt": f"Write one sentence about a {item} number {i}.", "completions": comps,
                     "scores": [0.0, 0.0, 0.0] if i % 4 == 3 else [0.2, 1.0, -1.0]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_data(path, obj):
    if obj.row_kind == "unpaired":
        return write_points(path)
    if obj.row_kind == "samples":
        return write_samples(path)
    if obj.row_kind == "revision":
        return write_revisions(path)
    if obj.row_kind == "judgment":
        return write_judgments(path)
    write_pairs(path, n=8)
    if obj.extra_fields:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for r in rows:
            r.update({f: 0.9 for f in obj.extra_fields})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", O.names())
def test_objective_trains(name, tiny_model_dir, tmp_path):
    obj = O.get(name)
    data = write_data(tmp_path / "rows.jsonl", obj)
    hp = dict(OVERRIDES.get(name, {"beta": 0.5} if "beta" in O.hparam_names(name) else {}))
    if "aligned_models" in O.hparam_names(name):  # PoFT: the initial model itself as the one frozen "aligned" model
        hp["aligned_models"] = [str(tiny_model_dir)]
    beta = hp.pop("beta", 0.1)
    cfg = config(tiny_model_dir, data, tmp_path / "out", max_steps=4, learning_rate=5e-3, batch_size=4,
                 logging_steps=1, memory_probe=False, beta=beta, objective=name,
                 objective_args={name: hp} if hp else {})
    out = train(cfg, log=_quiet)
    logs = [m for m in read_metrics(out) if "loss" in m]
    losses = [m["loss"] for m in logs]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses), losses
    assert max(losses) - min(losses) > 1e-4, losses
    key = METRIC.get(name, "rewards/margins")
    sign = -1 if key.startswith("-") else 1
    key = key.lstrip("-")
    first, last = logs[0][key], logs[-1][key]
    assert sign * (last - first) > 0, (key, [m.get(key) for m in logs])


def test_bonbon_trains_from_nsample_rows(tiny_model_dir, tmp_path):
    """n-sample rows → best-vs-worst pairs (ties dropped and reported) → BoNBoN's margin rises."""
    data = write_nsample(tmp_path / "rows.jsonl")
    cfg = config(tiny_model_dir, data, tmp_path / "out", max_steps=4, learning_rate=5e-3, batch_size=4,
                 logging_steps=1, memory_probe=False, objective="bonbon", objective_args={"bonbon": {"alpha": 0.5}})
    out = train(cfg, log=_quiet)
    report = json.loads((out / "preprocess_report.json").read_text())
    assert report["rows_read"] == 8 and report["ties"] == 2 and report["rows_kept"] == 6
    logs = [m for m in read_metrics(out) if "loss" in m]
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]


def test_poft_without_aligned_models_is_a_config_error(tiny_model_dir, tmp_path):
    from prefalign.errors import UserError

    data = write_pairs(tmp_path / "rows.jsonl", n=8)
    with pytest.raises(UserError, match="needs frozen aligned models"):
        train(config(tiny_model_dir, data, tmp_path / "out", objective="poft"), log=_quiet)


@pytest.mark.parametrize("name,writer", [("cut", write_judgments), ("figa", write_revisions), ("cringe", write_pairs)])
def test_new_row_kinds_with_shared_prefix_and_memory_probe(name, writer, tiny_model_dir, tmp_path):
    """Judgment and revision rows, and cringe's top-k log-probs, also go through the shared-prefix layout and the
    start-up memory estimate."""
    data = writer(tmp_path / "rows.jsonl")
    cfg = config(tiny_model_dir, data, tmp_path / "out", max_steps=2, learning_rate=5e-3, batch_size=4,
                 logging_steps=1, layout="shared_prefix", objective=name)
    logs = [m for m in read_metrics(train(cfg, log=_quiet)) if "loss" in m]
    assert len(logs) == 2 and all(math.isfinite(m["loss"]) for m in logs)
