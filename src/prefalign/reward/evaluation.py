"""Evaluate a reward model from its scores on held-out pairs: accuracy, calibration, per-source table, report.

Independent of how the scores were produced: ``chosen[i]`` and ``rejected[i]`` are the model's rewards for the
two answers of pair i, ``sources[i]`` (optional) its subset name. Accuracy is RewardBench-style — a pair counts 1
if r_c > r_r, 0.5 on a tie, 0 otherwise — and the per-source table gives n, accuracy and mean margin per subset
(plus the unweighted mean over sources, so a large subset does not hide a weak one). Calibration follows
``calibration.py``: P(chosen ≻ rejected) = σ(Δ/T) measured on both orderings of every pair, before (T = 1, the raw
scores) and after the given temperature.

    result = evaluate_pairs(chosen, rejected, sources, temperature=fit_temperature(val_margins))
    write_report("runs/rm/eval", result, chosen, rejected, sources)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from prefalign.reward.calibration import (
    T_MAX,
    T_MIN,
    as_vector,
    atomic_write,
    pairwise_ece,
    pairwise_nll,
    reliability_bins,
    symmetrise,
)


def _summary(x: torch.Tensor) -> dict:
    q = torch.quantile(x, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return {"mean": float(x.mean()), "std": float(x.std(unbiased=False)), "min": float(x.min()),
            "p10": q[0], "median": q[1], "p90": q[2], "max": float(x.max())}


def _accuracy(d: torch.Tensor) -> float:
    return float(((d > 0).double() + 0.5 * (d == 0).double()).mean())


def _bins(margins: torch.Tensor, temperature: float, n_bins: int) -> list[dict]:
    keys = ("lo", "hi", "confidence", "accuracy", "count")
    return [dict(zip(keys, b)) for b in reliability_bins(*symmetrise(margins, None, temperature), n_bins=n_bins)]


def evaluate_pairs(chosen, rejected, sources=None, temperature: float = 1.0, n_bins: int = 10) -> dict:
    """Metrics of one reward model on N scored pairs; every value is a plain JSON type.

    ``temperature`` is the T to report calibration "after" with (fitted on other pairs — fitting it on these
    would flatter the ECE); "before" is always T = 1. ``reward_mean``/``reward_std`` are over all 2N scores
    (population std), the statistics the reward-normalisation transform wants.
    """
    c, r = as_vector(chosen, "chosen"), as_vector(rejected, "rejected")
    if c.numel() != r.numel():
        raise ValueError(f"{c.numel()} chosen scores but {r.numel()} rejected")
    d = c - r
    both = torch.cat([c, r])
    per_source: dict[str, dict] = {}
    if sources is not None:
        sources = [str(s) for s in sources]
        if len(sources) != d.numel():
            raise ValueError(f"{len(sources)} sources for {d.numel()} pairs")
        for name in sorted(set(sources)):
            m = torch.tensor([s == name for s in sources])
            per_source[name] = {"n": int(m.sum()), "accuracy": _accuracy(d[m]), "margin": float(d[m].mean())}
    calib = {}
    for tag, t in (("before", 1.0), ("after", float(temperature))):
        calib[tag] = {"temperature": t, "ece": pairwise_ece(d, None, t, n_bins=n_bins),
                      "nll": pairwise_nll(d, None, t), "bins": _bins(d, t, n_bins)}
    return {
        "n_pairs": d.numel(), "n_bins": n_bins, "accuracy": _accuracy(d), "ties": int((d == 0).sum()),
        "margin_mean": float(d.mean()), "margin_std": float(d.std(unbiased=False)),
        "reward_mean": float(both.mean()), "reward_std": float(both.std(unbiased=False)),
        "temperature": float(temperature), "temperature_clamped": float(temperature) in (T_MIN, T_MAX),
        "ece_before": calib["before"]["ece"], "ece_after": calib["after"]["ece"],
        "nll_before": calib["before"]["nll"], "nll_after": calib["after"]["nll"],
        "calibration": calib, "per_source": per_source,
        "source_mean_accuracy": (sum(v["accuracy"] for v in per_source.values()) / len(per_source)
                                 if per_source else None),
        "scores": {"chosen": _summary(c), "rejected": _summary(r), "margin": _summary(d)},
    }


# ---- report -------------------------------------------------------------------------------------------------

def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    line = lambda row: "| " + " | ".join(x.ljust(w) for x, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(x) for x in rows[1:]])


def render_markdown(result: dict, title: str) -> str:
    before, after = result["calibration"]["before"], result["calibration"]["after"]
    t = result["temperature"]
    lines = [f"# {title}", "",
             f"{result['n_pairs']} held-out pairs. Accuracy counts r_chosen > r_rejected as 1 and a tie as ½. "
             "Calibration reads σ((r_c − r_r)/T) as P(chosen ≻ rejected) and is measured on both orderings of every "
             "pair (so it does not depend on which answer is listed first); ECE uses "
             f"{result['n_bins']} equal-width bins weighted by count, NLL is in nats per pair. Temperature scaling changes confidence, never accuracy.", "",
             "## Overall", "", _table([
                 ["pairs", "accuracy", "ties", "margin (mean ± std)", "reward mean", "reward std"],
                 [str(result["n_pairs"]), f"{result['accuracy']:.3f}", str(result["ties"]),
                  f"{result['margin_mean']:+.3f} ± {result['margin_std']:.3f}", f"{result['reward_mean']:+.3f}",
                  f"{result['reward_std']:.3f}"]]), ""]
    if result["per_source"]:
        rows = [["source", "n", "accuracy", "mean margin"]]
        rows += [[name, str(v["n"]), f"{v['accuracy']:.3f}", f"{v['margin']:+.3f}"]
                 for name, v in result["per_source"].items()]
        rows.append(["(mean over sources)", str(result["n_pairs"]), f"{result['source_mean_accuracy']:.3f}", "—"])
        lines += ["## Per source", "", _table(rows), ""]
    clamp = " (clamped to the fit range)" if result["temperature_clamped"] else ""
    lines += ["## Calibration", "", _table([
        ["", "temperature", "ECE", "NLL"],
        ["before (raw scores)", f"{before['temperature']:.4g}", f"{before['ece']:.4f}", f"{before['nll']:.4f}"],
        [f"after temperature scaling{clamp}", f"{after['temperature']:.4g}", f"{after['ece']:.4f}",
         f"{after['nll']:.4f}"]]), "", "![reliability](reliability.png)", ""]
    rows = [["bin", "count", "confidence (before)", "accuracy (before)", "confidence (after)", "accuracy (after)"]]
    after_bins = {(b["lo"], b["hi"]): b for b in after["bins"]}
    before_bins = {(b["lo"], b["hi"]): b for b in before["bins"]}
    cell = lambda x, k: f"{x[k]:.3f}" if x else "—"  # noqa: E731
    for key in sorted(set(before_bins) | set(after_bins)):
        b, a = before_bins.get(key), after_bins.get(key)
        rows.append([f"{key[0]:.2f}–{key[1]:.2f}", f"{b['count'] if b else 0} / {a['count'] if a else 0}",
                     cell(b, "confidence"), cell(b, "accuracy"), cell(a, "confidence"), cell(a, "accuracy")])
    lines += [f"Reliability bins over the {2 * result['n_pairs']} symmetrised points (count before / after T = {t:.4g}):",
              "", _table(rows), "", "## Score distributions", ""]
    s = result["scores"]
    rows = [["", "mean", "std", "min", "p10", "median", "p90", "max"]]
    rows += [[k] + [f"{s[k][f]:.3f}" if f == "std" else f"{s[k][f]:+.3f}" for f in rows[0][1:]]
             for k in ("chosen", "rejected", "margin")]
    lines += [_table(rows), "", "![distributions](distribution.png)", ""]
    return "\n".join(lines)


def _png(fig):
    def write(tmp: Path):
        fig.savefig(tmp, format="png")  # explicit: the temp name does not end in .png
    return write


def _plot_reliability(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=120, sharey=True)
    for ax, tag in zip(axes, ("before", "after")):
        cal = result["calibration"][tag]
        for b in cal["bins"]:
            ax.bar(b["lo"], b["accuracy"], width=b["hi"] - b["lo"], align="edge", color="tab:blue", alpha=0.7,
                   edgecolor="black", linewidth=0.6)
            ax.annotate(str(b["count"]), ((b["lo"] + b["hi"]) / 2, b["accuracy"]), textcoords="offset points",
                        xytext=(0, 2), ha="center", fontsize=7)
        ax.scatter([b["confidence"] for b in cal["bins"]], [b["accuracy"] for b in cal["bins"]], color="tab:red",
                   s=12, zorder=3, label="bin (mean confidence, accuracy)")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("predicted P(chosen ≻ rejected) = σ(Δ/T)")
        ax.set_title(f"{tag}: T = {cal['temperature']:.3g}, ECE = {cal['ece']:.3f}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of points whose label is 1 (bar; count on top)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    try:
        atomic_write(path, _png(fig))
    finally:
        plt.close(fig)


def _plot_distribution(chosen: torch.Tensor, rejected: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    both = torch.cat([chosen, rejected])
    n = max(10, min(50, int(math.sqrt(both.numel()))))
    lo, hi = float(both.min()), float(both.max())
    edges = torch.linspace(lo, hi if hi > lo else lo + 1, n + 1).tolist()  # shared bins so the two compare
    a.hist(chosen.tolist(), bins=edges, alpha=0.55, color="tab:green", label="chosen")
    a.hist(rejected.tolist(), bins=edges, alpha=0.55, color="tab:red", label="rejected")
    a.set_xlabel("reward")
    a.set_ylabel("count")
    a.set_title("scores")
    a.legend(fontsize=8)
    margins = (chosen - rejected).tolist()
    b.hist(margins, bins=n, color="tab:blue", alpha=0.7)
    b.axvline(0, color="black", linestyle="--", linewidth=1)
    b.set_xlabel("margin r_chosen − r_rejected (right of 0 = correct)")
    b.set_title("margins")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, _png(fig))
    finally:
        plt.close(fig)


def write_report(out_dir: str | Path, result: dict, chosen, rejected, sources=None,
                 title: str = "prefalign reward eval") -> Path:
    """Write report.md, metrics.json, reliability.png and distribution.png into ``out_dir``; returns the folder.

    ``result`` is ``evaluate_pairs(chosen, rejected, sources, ...)``; the scores are passed again for the
    histograms and are checked against it (same number of pairs, same sources) so the plots and the tables
    describe the same data. Each file is written to a temp file and os.replace'd in; nothing else in the folder
    is touched. report.md goes last, so it never refers to images that are not there yet.
    """
    c, r = as_vector(chosen, "chosen"), as_vector(rejected, "rejected")
    if c.numel() != result["n_pairs"] or r.numel() != result["n_pairs"]:
        raise ValueError(f"result is for {result['n_pairs']} pairs, scores are {c.numel()} and {r.numel()}")
    if sources is not None and sorted(set(map(str, sources))) != sorted(result["per_source"]):
        raise ValueError("sources do not match the per-source table in result")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot_reliability(result, out / "reliability.png")
    _plot_distribution(c, r, out / "distribution.png")
    text = json.dumps(result, indent=1, ensure_ascii=False, allow_nan=False)
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    md = render_markdown(result, title)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
    return out
