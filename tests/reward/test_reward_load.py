"""load_reward: the three spec kinds, batching, and one-line errors."""

from __future__ import annotations

import sys

import pytest
import torch

from prefalign.errors import UserError
from prefalign.reward import CallableReward, RewardFn, load_reward

STUB = '''
CALLS = []

def length(prompts, completions):
    CALLS.append(len(completions))
    return [float(len(c)) for c in completions]

def wrong_count(prompts, completions):
    return [1.0]

def not_finite(prompts, completions):
    return [float("nan")] * len(completions)

NOT_CALLABLE = 3
'''


@pytest.fixture
def stub_module(tmp_path, monkeypatch):
    (tmp_path / "stub_rewards_mod.py").write_text(STUB)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "stub_rewards_mod"
    sys.modules.pop("stub_rewards_mod", None)


def test_module_function_spec_batches_and_returns_float_tensor(stub_module):
    reward = load_reward(f"{stub_module}:length", batch_size=2)
    out = reward(["p"] * 5, ["a", "bb", "ccc", "", "eeeee"])
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0, 3.0, 0.0, 5.0]))
    assert out.dtype == torch.float32 and out.shape == (5,)
    assert sys.modules[stub_module].CALLS == [2, 2, 1]  # chunks of batch_size


def test_module_is_imported_only_when_named(stub_module):
    assert stub_module not in sys.modules
    load_reward(f"{stub_module}:length")
    assert stub_module in sys.modules


def test_callable_and_rewardfn_pass_through():
    reward = load_reward(lambda p, c: torch.arange(len(c)))
    assert isinstance(reward, CallableReward)
    torch.testing.assert_close(reward(["x", "y"], ["a", "b"]), torch.tensor([0.0, 1.0]))
    assert load_reward(reward) is reward
    assert reward([], []).shape == (0,)


@pytest.mark.parametrize("attr, message", [
    ("wrong_count", "returned 1 scores for 2"),
    ("not_finite", "non-finite"),
])
def test_bad_callable_outputs_are_user_errors(stub_module, attr, message):
    with pytest.raises(UserError, match=message):
        load_reward(f"{stub_module}:{attr}")(["p", "q"], ["a", "b"])


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:f", "cannot import module"),
    ("{mod}:missing", "has no attribute"),
    ("{mod}:NOT_CALLABLE", "not callable"),
    ("/no/such/folder", "is not 'vader'"),
    ("", "expected a reward spec"),
])
def test_bad_specs_are_one_line_user_errors(stub_module, spec, message):
    with pytest.raises(UserError, match=message) as e:
        load_reward(spec.format(mod=stub_module))
    assert "\n" not in str(e.value)


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "model.bin"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        load_reward(str(f))


def _has_vader() -> bool:
    try:
        import vaderSentiment  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_vader(), reason="vaderSentiment not installed")
def test_vader_scores_sentiment_of_completion():
    reward = load_reward("vader")
    out = reward(["Say something."] * 3, ["What a wonderful, happy day!", "This is terrible and sad.", "A table."])
    assert out.shape == (3,) and out[0] > 0.5 and out[1] < -0.5 and abs(out[2]) < 1e-6
    assert bool(((out >= -1) & (out <= 1)).all())


def test_vader_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    with pytest.raises(UserError, match="pip install vaderSentiment"):
        load_reward("vader")


def test_rewardfn_is_the_contract():
    class Const(RewardFn):
        def _score(self, prompts, completions):
            return [0.5] * len(prompts)

    with pytest.raises(ValueError, match="2 prompts but 1"):
        Const()(["a", "b"], ["c"])
    assert load_reward(Const()).__class__ is Const
