"""The public surface of prefalign.decode and prefalign.reward is exactly what __all__ says."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from prefalign import decode, reward


@pytest.mark.parametrize("module", [decode, reward])
def test_all_lists_exactly_the_public_names(module):
    assert len(set(module.__all__)) == len(module.__all__)
    public = {n for n, v in vars(module).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public == set(module.__all__)


def test_entry_point_signatures():
    params = inspect.signature(reward.load_reward).parameters
    assert list(params)[:2] == ["spec", "device"] and params["device"].default == "cpu"
    params = inspect.signature(decode.run_decode).parameters
    assert list(params)[:4] == ["method", "model", "tokenizer", "prompts"]
    for name in ("reward", "ref_model", "hparams", "max_new_tokens", "temperature", "top_p", "seed", "stop"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_every_method_documents_its_hparams():
    for name, (cls, _needs_reward, summary) in decode.METHODS.items():
        assert summary
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
