"""JPO trains on cross-prompt pair rows through the one loop (every layout, precompute); DPO refuses the file."""

from __future__ import annotations

import json
import math

import pytest

from prefalign.errors import UserError
from prefalign.train.loop import train

from .helpers import config, read_metrics


def _quiet(*a, **k):
    pass


def _write_cross(path, n: int = 16):
    """Cross-prompt rows (a good answer to one item's prompt ≻ a bad answer to another's), mixed with same-prompt
    rows."""
    items = ["cat", "dog", "tree", "car", "book", "rain", "sun", "cake"]
    rows = []
    for i in range(n):
        a, b = items[i % len(items)], items[(i + 3) % len(items)]
        if i % 4 == 3:
            rows.append({"prompt": f"Tell me about a {a}.", "chosen": f" The {a} is good.", "rejected": " Bad."})
        else:
            rows.append({"chosen_prompt": f"Tell me about a {a}.", "chosen": f" The {a} is good and nice.",
                         "rejected_prompt": f"Describe the {b} number {i}.", "rejected": f" The {b} is sad."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("kw", [dict(layout="shared_prefix"), dict(layout="separate", pack=True),
                                dict(reference="precompute"), dict(lora=True, lora_r=4)])
def test_jpo_trains_on_cross_prompt_rows(tiny_model_dir, tmp_path, kw):
    data = _write_cross(tmp_path / "x.jsonl")
    out = train(config(tiny_model_dir, data, tmp_path / "out", objective="jpo", max_steps=3, learning_rate=1e-2,
                       reference_cache_dir=str(tmp_path / "cache"), **kw), log=_quiet)
    losses = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert losses[-1] != pytest.approx(losses[0], abs=1e-4)


def test_dpo_refuses_a_cross_prompt_file(tiny_model_dir, tmp_path):
    data = _write_cross(tmp_path / "x.jsonl")
    with pytest.raises(UserError) as e:
        train(config(tiny_model_dir, data, tmp_path / "out", objective="dpo"), log=_quiet)
    assert str(e.value).startswith(f"{data}:row 1: field 'chosen_prompt': a cross-prompt pair")
    assert "accepted by: jpo" in str(e.value) and "\n" not in str(e.value)


def test_precompute_fingerprint_keys_on_the_rejected_prompt(tiny_tok):
    """The reference cache is per example (row order); its key must change when only x₂ changes."""
    from prefalign.data.types import PairExample
    from prefalign.reference import fingerprint
    from prefalign.testing import tiny_model

    model = tiny_model(tiny_tok, seed=0)
    key = lambda x2: fingerprint(model, tiny_tok, [PairExample(1, [5, 6], [7], [8], rejected_prompt_ids=x2)], {})  # noqa: E731
    assert len({key(None), key([5, 6]), key([5, 9])}) == 3
