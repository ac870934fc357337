"""An evaluation folder: ``metrics.json``, ``report.md`` (summary table + samples side by side), ``frontier.png``.

The metrics dict is what ``evaluate.run.evaluate`` (or the demo) returns: ``reference``, ``runs`` (one per
policy), ``best_of_n`` and ``eval`` (settings). Every number in the report is read from it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _pm(mean, se, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def summary_rows(metrics: dict) -> list[list[str]]:
    """Header + one row per policy: the reference, best-of-n from the reference, then each trained run."""
    ref = metrics["reference"]
    rows = [["policy", "reward (mean ± SE)", "gain vs ref (± SE, z)", "win rate vs ref", "KL(π‖π_ref) nats",
             "length (tokens)"]]
    rows.append([f"reference ({ref['samples_per_prompt']} samples/prompt)", _pm(ref["reward_mean"], ref["reward_se"]),
                 "—", f"{ref['win_rate']:.2f}", "0", f"{ref['length']:.1f}"])
    for b in metrics.get("best_of_n", []):
        if b["n"] == 1:
            continue
        rows.append([f"best-of-{b['n']} (reference)", _pm(b["reward_mean"], b["reward_se"]), "—", "—",
                     f"{b['kl']:.3f} (analytic)", "—"])
    for run in metrics["runs"]:
        z = run.get("reward_gain_z")
        gain = f"{run['reward_gain']:+.3f} ± {run['reward_gain_se']:.3f}" + (f" ({z:.1f})" if z is not None else "")
        rows.append([run["name"], _pm(run["reward_mean"], run["reward_se"]), gain,
                     f"{run['win_rate']:.2f} ± {run['win_rate_se']:.2f}", _pm(run["kl"], run["kl_se"]),
                     f"{run['length']:.1f}"])
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]])


def plot_frontier(metrics: dict, path: str | Path, title: str = "Reward vs KL") -> Path:
    """Mean reward against KL(π‖π_ref) (± 1 SE): best-of-n from the reference, trained runs, decoding methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    bon = metrics.get("best_of_n", [])
    if bon:
        ax.errorbar([b["kl"] for b in bon], [b["reward_mean"] for b in bon], yerr=[b["reward_se"] for b in bon],
                    marker="o", color="tab:gray", capsize=3, label="best-of-n from reference (KL = log n − (n−1)/n)")
        for b in bon:
            ax.annotate(f"n={b['n']}", (b["kl"], b["reward_mean"]), textcoords="offset points", xytext=(4, -12),
                        fontsize=8, color="tab:gray")
    groups: dict[str, list[dict]] = {}  # trained runs on one line, each decoding method on its own
    for r in metrics["runs"]:
        groups.setdefault(r.get("method", "trained policy"), []).append(r)
    colors = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"])
    for label, runs in groups.items():
        color = next(colors, "tab:olive")
        runs = sorted(runs, key=lambda r: r["kl"])
        ax.errorbar([r["kl"] for r in runs], [r["reward_mean"] for r in runs],
                    xerr=[r["kl_se"] for r in runs], yerr=[r["reward_se"] for r in runs],
                    marker="s" if label == "trained policy" else "^", linestyle="-" if len(runs) > 1 else "none",
                    color=color, capsize=3, label=label if label == "trained policy" else f"decoding: {label}")
        for r in runs:
            ax.annotate(r.get("label", r["name"]), (r["kl"], r["reward_mean"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8, color=color)
    ref = metrics["reference"]
    ax.scatter([0], [ref["reward_mean"]], marker="*", s=120, color="black", zorder=5, label="reference")
    ax.set_xlabel("KL(π ‖ π_ref)  [nats per completion]")
    ax.set_ylabel(f"mean reward ({metrics['eval'].get('reward', 'reward')})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split()) or "(empty)"


def render_markdown(metrics: dict, title: str, intro: list[str] | None = None) -> str:
    ev = metrics["eval"]
    lines = [f"# {title}", ""]
    lines += intro or []
    lines += [f"Held-out prompts: {ev['prompts']}; reward: `{ev['reward']}`; sampling: temperature {ev['temperature']}, "
              f"top-p {ev['top_p']}, up to {ev['max_new_tokens']} new tokens, seed {ev['seed']}. Means are over "
              "prompts, ± one standard error over prompts; the gain is paired by prompt (z = gain / SE); win rate "
              "counts ties as half; KL(π‖π_ref) is the mean of log π(y) − log π_ref(y) over the policy's own "
              "samples (for a decoding method, π is the method's own per-token sampling distribution); best-of-n is estimated without bias from the reference samples, at its analytic KL.", "",
              "## Results", "", markdown_table(summary_rows(metrics)), "", "## Reward vs KL", "",
              "![reward vs KL](frontier.png)", ""]
    for run in metrics["runs"]:
        if not run.get("examples"):
            continue
        lines += [f"## Samples: reference vs {run['name']}", ""]
        for ex in run["examples"]:
            lines += [f"**{_cell(ex['prompt'])}**", "", "| model | reward | completion |", "|---|---|---|",
                      f"| reference | {ex['reference_reward']:+.3f} | {_cell(ex['reference'])} |",
                      f"| {run['name']} | {ex['policy_reward']:+.3f} | {_cell(ex['policy'])} |", ""]
    return "\n".join(lines)


def write_report(folder: str | Path, metrics: dict, title: str = "prefalign evaluate",
                 intro: list[str] | None = None) -> Path:
    """Write ``metrics.json``, ``report.md`` and ``frontier.png`` into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, ensure_ascii=False))
    os.replace(tmp, folder / "metrics.json")
    plot_frontier(metrics, folder / "frontier.png", title=title)
    (folder / "report.md").write_text(render_markdown(metrics, title, intro), encoding="utf-8")
    return folder
