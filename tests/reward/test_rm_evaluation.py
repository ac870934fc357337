"""Reward-model evaluation from scores: hand-computed metrics, and the report folder written atomically."""

from __future__ import annotations

import json
import math
import os

import matplotlib.figure
import pytest
import torch

from prefalign.reward.calibration import fit_temperature, pairwise_ece, pairwise_nll
from prefalign.reward.evaluation import evaluate_pairs, write_report

PNG = b"\x89PNG\r\n\x1a\n"
FILES = {"report.md", "metrics.json", "reliability.png", "distribution.png"}
sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


def test_evaluate_pairs_hand_numbers():
    chosen = [2.0, 1.0, 0.0, 3.0, 0.5]
    rejected = [1.0, 1.0, 1.0, 0.0, 0.5]
    sources = ["a", "a", "b", "b", "b"]  # margins 1, 0 | −1, 3, 0
    res = evaluate_pairs(chosen, rejected, sources, temperature=2.0)
    assert res["n_pairs"] == 5 and res["ties"] == 2
    assert res["accuracy"] == pytest.approx((1 + 0.5 + 0 + 1 + 0.5) / 5)  # ties count ½
    assert res["margin_mean"] == pytest.approx(0.6)
    assert res["per_source"] == {"a": {"n": 2, "accuracy": 0.75, "margin": 0.5},
                                 "b": {"n": 3, "accuracy": pytest.approx(0.5), "margin": pytest.approx(2 / 3)}}
    assert res["source_mean_accuracy"] == pytest.approx(0.625)
    # all 10 scores: mean 1, squared deviations sum 7.5 → population std √0.75
    assert res["reward_mean"] == pytest.approx(1.0) and res["reward_std"] == pytest.approx(math.sqrt(0.75))
    # NLL at T = 1: mean softplus(−Δ)
    nll = sum(math.log1p(math.exp(-m)) for m in (1, 0, -1, 3, 0)) / 5
    assert res["nll_before"] == pytest.approx(nll)
    # Symmetrised points: σ(±3) land alone in the end bins (error σ(−3) each), σ(±1) pair up with one label 1
    # and one 0 (error σ(1) − ½ each, 2 bins × 2 points), the four ½'s are exact: ECE = (2σ(−3) + 4(σ(1) − ½))/10.
    assert res["ece_before"] == pytest.approx((2 * sig(-3) + 4 * (sig(1) - 0.5)) / 10)
    assert res["ece_after"] == pytest.approx(pairwise_ece([1, 0, -1, 3, 0], temperature=2.0))
    assert res["nll_after"] == pytest.approx(pairwise_nll([1, 0, -1, 3, 0], temperature=2.0))
    assert res["calibration"]["after"]["temperature"] == 2.0 and not res["temperature_clamped"]
    assert sum(b["count"] for b in res["calibration"]["before"]["bins"]) == 10
    assert res["scores"]["margin"]["median"] == 0.0 and res["scores"]["chosen"]["max"] == 3.0
    json.dumps(res, allow_nan=False)  # plain JSON types only
    assert evaluate_pairs(chosen, rejected)["per_source"] == {}
    with pytest.raises(ValueError):
        evaluate_pairs([1.0, 2.0], [0.0])
    with pytest.raises(ValueError):
        evaluate_pairs([1.0], [0.0], sources=["a", "b"])


def _scored(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, generator=g, dtype=torch.float64)
    won = torch.bernoulli(torch.sigmoid(true), generator=g)
    margin = torch.where(won == 1, 3 * true, -3 * true)  # overconfident model
    rejected = torch.randn(n, generator=g, dtype=torch.float64)
    sources = [("chat", "code", "safety")[i % 3] for i in range(n)]
    return rejected + margin, rejected, sources


def test_write_report_files_tables_and_atomicity(tmp_path, monkeypatch):
    chosen, rejected, sources = _scored()
    t = fit_temperature(chosen[:150] - rejected[:150])
    res = evaluate_pairs(chosen[150:], rejected[150:], sources[150:], temperature=t)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst)))
    write_report(out, res, chosen[150:], rejected[150:], sources[150:], title="RM eval")
    monkeypatch.setattr(os, "replace", real_replace)

    # every file arrived by os.replace from a temp file beside it; nothing left over, nothing else touched
    assert {os.path.basename(d) for _, d in replaced} == FILES
    assert all(str(s).endswith(".tmp") and os.path.dirname(s) == os.path.dirname(d) for s, d in replaced)
    assert {p.name for p in out.iterdir()} == FILES | {"notes.txt"}
    assert (out / "notes.txt").read_text() == "keep me"
    for png in ("reliability.png", "distribution.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(res))
    md = (out / "report.md").read_text()
    print(f"T = {t:.3f}, ECE {res['ece_before']:.4f} → {res['ece_after']:.4f}, accuracy {res['accuracy']:.3f}")
    assert md.startswith("# RM eval")
    for text in ("## Overall", "| pairs", "## Per source", "| source", "| chat ", "| code ", "| safety ",
                 "(mean over sources)", "## Calibration", "before (raw scores)", "after temperature scaling",
                 f"{res['ece_before']:.4f}", f"{res['ece_after']:.4f}", "![reliability](reliability.png)",
                 "![distributions](distribution.png)", "## Score distributions"):
        assert text in md, text
    assert res["ece_after"] < res["ece_before"]

    # A crash half-way through a PNG leaves the previous one intact and no temp file.
    old = (out / "reliability.png").read_bytes()

    def broken(self, fname, **kw):
        open(fname, "wb").write(b"\x89PN")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(OSError):
        write_report(out, res, chosen[150:], rejected[150:], sources[150:])
    assert (out / "reliability.png").read_bytes() == old
    assert {p.name for p in out.iterdir()} == FILES | {"notes.txt"}


def test_write_report_rejects_scores_that_are_not_the_result(tmp_path):
    chosen, rejected, sources = _scored(30)
    res = evaluate_pairs(chosen, rejected, sources)
    with pytest.raises(ValueError):
        write_report(tmp_path, res, chosen[:10], rejected[:10])
    with pytest.raises(ValueError):
        write_report(tmp_path, res, chosen, rejected, ["other"] * 30)
    assert not list(tmp_path.iterdir())
