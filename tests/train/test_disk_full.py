"""A full disk, for real: the output folder on a small tmpfs (root only; skipped otherwise). The step-4 checkpoint
does not fit: the run stops with one line naming the intact step-2 checkpoint, leaves no ``.tmp`` behind, and after
space is freed (the tmpfs grown) ``--resume`` finishes with the same weights as a run that never hit the wall."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from prefalign.train.config import save

from .helpers import config, write_pairs
from .test_resume_and_dist import _cli
from .tmpfs import mount as _mount
from .tmpfs import unmount


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_checkpoint_on_a_full_disk_then_resume(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "d.jsonl", n=16)
    disk = tmp_path / "disk"
    disk.mkdir()
    # One checkpoint of the tiny model is ~0.5 MB (weights + AdamW state): 900 kB holds the step-2 one, not step 4's.
    if not _mount(disk, "900k"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        kw = dict(max_steps=6, save_steps=2, batch_size=2, save_total_limit=2)
        save(config(tiny_model_dir, data, tmp_path / "straight", **kw), tmp_path / "straight.yaml")
        save(config(tiny_model_dir, data, disk / "run", **kw), tmp_path / "full.yaml")
        _cli(tmp_path / "straight.yaml")
        p = _cli(tmp_path / "full.yaml", check=False)
        assert p.returncode == 2, p.stderr[-2000:]
        err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and "Traceback" not in p.stderr
        assert "writing the step-4 checkpoint failed" in err[0] and "step-2 is intact" in err[0], err[0]
        assert "--resume" in err[0]
        ckpts = sorted(x.name for x in (disk / "run" / "checkpoints").iterdir())
        assert ckpts == ["step-2"]  # the half-written step-4.tmp was removed
        assert _mount(disk, "16m", remount=True)  # "free disk space"
        _cli(tmp_path / "full.yaml", "--resume")
        a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(disk / "run" / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    finally:
        unmount(disk)
