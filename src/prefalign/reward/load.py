"""``load_reward(spec)``: one string names any scorer, so configs and the CLI can carry it.

- ``"vader"``: VADER compound sentiment of the completion, in [-1, 1] (needs ``pip install vaderSentiment``).
- ``"module:function"``: a Python callable ``f(prompts, completions) -> list[float]``, imported only when named.
  Importing a module runs its code, by design: name only modules you trust. The module is looked up on
  ``sys.path`` as Python has it; the working directory is *not* added implicitly (the ``prefalign`` console script
  does not have it; ``python -m prefalign`` does) — put the module's folder on ``PYTHONPATH`` or install it.
- a folder path: a sequence-classification reward model (``num_labels=1``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path

from prefalign.errors import UserError
from prefalign.reward.base import CallableReward, RewardFn, VaderReward

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # package.module:function (or :Class.method)


def load_reward(spec: str | Callable | RewardFn, device: str = "cpu", batch_size: int = 16,
                use_safetensors: bool | None = None) -> RewardFn:
    """A ``RewardFn`` for ``spec``; a callable or an existing ``RewardFn`` is wrapped or returned as is.
    ``use_safetensors``: a reward-model folder with pickle weights only is refused (None: the
    ``PREFALIGN_SAFETENSORS_ONLY`` environment variable)."""
    if isinstance(spec, RewardFn):
        return spec
    if callable(spec):
        return CallableReward(spec, batch_size=batch_size)
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise UserError("reward", f"expected a reward spec string, got {spec!r}",
                        "use 'vader', 'module:function' or a reward-model folder")
    spec = str(spec).strip()
    if spec.lower() == "vader":
        return VaderReward()
    if Path(spec).is_dir():
        from prefalign.reward.model import ModelReward  # transformers is imported only for model rewards

        return ModelReward(spec, device=device, batch_size=batch_size, use_safetensors=use_safetensors)
    if _CALLABLE.match(spec):
        return CallableReward(import_callable(spec), name=spec, batch_size=batch_size)
    if Path(spec).exists():
        raise UserError(f"reward {spec}", "is a file, not a reward-model folder",
                        "pass the folder that holds config.json")
    raise UserError(f"reward {spec}", "is not 'vader', a 'module:function' callable or an existing folder",
                    "check the spelling or the path")


def import_callable(spec: str, where: str | None = None) -> Callable:
    """The callable named by ``"package.module:function"`` (UserError if it cannot be found)."""
    where = where or f"reward {spec}"
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(where, f"cannot import module '{module_name}' ({e})",
                        "make it importable: install it, or put its folder on PYTHONPATH (PYTHONPATH=. for the "
                        "working directory, which is not searched implicitly)") from None
    except Exception as e:  # noqa: BLE001 — the module's own code failed while importing (SyntaxError, …)
        raise UserError(where, f"importing module '{module_name}' raised {type(e).__name__}: "
                        f"{(str(e).strip().splitlines() or [''])[0][:200]}", "fix the module") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(where, f"module '{module_name}' has no attribute '{attr}'",
                            "check the function name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(where, f"'{attr}' is not callable", "name a function f(prompts, completions)")
    return obj

