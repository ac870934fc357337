"""The extension seam: a new row kind, a new per-token feature (its reducer) and a new objective that reads both,
all defined in THIS file, train end to end through `prefalign train`. If this ever needs an edit under src/, the
seam is broken."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefalign import objectives
from prefalign.cli import main
from prefalign.data import kinds
from prefalign.data.kinds import Encoded, RowKind, extras_of
from prefalign.logps import Chunk, register_feature
from prefalign.objectives.base import Needs, Objective, ObjectiveOutput, PairLogps

from .helpers import read_metrics


@register_feature("seam_entropy")
def _entropy(c: Chunk) -> torch.Tensor:
    """Per-token entropy H_t = −Σ_v π(v) log π(v) of the policy, [C], from the chunk's logits (with gradient)."""
    logp = c.logits - c.lse[:, None]  # [C, V]
    return -(logp.exp() * logp).sum(-1)


@kinds.register
class QuestionAnswers(RowKind):
    """Rows ``{"question", "good", "bad"}``: a pair under other names, batched like one."""

    name = "seam_qa"
    standard_keys = ("question", "good", "bad")

    def check(self, where, row):
        problems = [("missing field", f"{where}: field '{k}': missing") for k in self.standard_keys
                    if not isinstance(row.get(k), str) or not row[k].strip()]
        return {k: row.get(k) for k in self.standard_keys}, problems

    def encode(self, split, where, row, max_length, truncation, **options):
        from prefalign.data.types import PairExample

        prompt, (good, bad) = split(where, row["question"], {"good": row["good"], "bad": row["bad"]})
        ex = PairExample(row["_row"], prompt, good, bad, extras_of(row, self.standard_keys))
        return Encoded(ex, [len(prompt)], [len(good), len(bad)], [len(prompt) + len(good), len(prompt) + len(bad)])

    def collate(self, examples, pad_id, layout, pack, **options):
        from prefalign.data.batch import collate_pairs

        return collate_pairs(examples, pad_id, layout, pack)

    def view(self, policy, ref, batch):
        from prefalign.train.views import to_pair_logps

        return to_pair_logps(policy, ref, batch)


@objectives.register
@dataclass
class EntropyDPO(Objective):
    """DPO minus α × the mean per-token entropy of the chosen completions (a toy that needs a new feature)."""

    name = "seam_entropy_dpo"
    summary = "test-only: DPO with an entropy bonus"
    row_kind = "seam_qa"
    beta: float = 0.1
    alpha: float = 0.01

    def needs(self) -> Needs:
        return Needs(reference=True, policy_features=("seam_entropy",))

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        margin = (lp.policy_chosen - lp.ref_chosen) - (lp.policy_rejected - lp.ref_rejected)  # [B]
        ent = lp.features["chosen_seam_entropy"]  # [B, T], 0 past each completion's end
        mean_ent = (ent * lp.chosen_mask).sum(-1) / lp.chosen_mask.sum(-1).clamp(min=1)  # [B]
        per = -F.logsigmoid(self.beta * margin) - self.alpha * mean_ent
        return ObjectiveOutput(per.mean(), per, {"seam/entropy": mean_ent.mean().item()})


def test_new_kind_feature_and_objective_train_through_the_cli(tiny_model_dir, tmp_path):
    rows = [{"question": f"Tell me about thing {i}.", "good": f" Thing {i} is nice.", "bad": f" Thing {i} is bad."}
            for i in range(8)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ndata: {data}\nobjective: seam_entropy_dpo\noutput_dir: {tmp_path/'o'}\n"
                   "max_steps: 3\nbatch_size: 4\nlearning_rate: 1.0e-3\nreport_to: []\nprogress: false\n"
                   "objective_args: {alpha: 0.05}\n")
    assert main(["train", "--config", str(cfg)]) == 0
    metrics = read_metrics(tmp_path / "o")
    assert len([m for m in metrics if "loss" in m]) == 3
    # Step 1: policy = reference, so the DPO part is ln 2 and the loss is ln 2 − α·H̄ exactly.
    first = metrics[0]
    assert first["seam/entropy"] > 0
    assert math.isclose(first["loss"], math.log(2) - 0.05 * first["seam/entropy"], abs_tol=1e-5)
    assert (tmp_path / "o" / "run_complete.json").is_file()


def test_the_seams_are_registries():
    assert "seam_qa" in kinds.names() and "seam_entropy_dpo" in objectives.names()
