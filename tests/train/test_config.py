"""Config parsing: YAML file + flags, typed, unknown keys refused."""

import pytest

from prefalign.errors import UserError
from prefalign.train.config import from_dict, load_yaml, resolve


def test_exponent_without_dot_is_a_float_in_flags_and_yaml(tmp_path):
    # YAML 1.1 reads `1e-6` as a string; a float field must still accept it.
    cfg = resolve(None, ["--learning_rate", "1e-2", "--beta=5e-1"])
    assert cfg.learning_rate == 0.01 and cfg.beta == 0.5
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-6\nmax_length: 512\n")
    cfg = from_dict(load_yaml(str(path)), str(path))
    assert cfg.learning_rate == 1e-6 and isinstance(cfg.learning_rate, float)


def test_flag_overrides_file_and_bad_values_are_one_line_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("beta: 0.3\nlearning_rate: 1.0e-5\n")
    assert resolve(str(path), ["--beta", "0.2"]).beta == 0.2
    with pytest.raises(UserError, match="'learning_rate' must be float"):
        resolve(None, ["--learning_rate", "fast"])
    with pytest.raises(UserError, match="did you mean 'beta'"):
        from_dict({"betta": 0.1})
    with pytest.raises(UserError, match="'batch_size' must be int"):
        resolve(None, ["--batch_size", "2.5"])
