"""``load_reward(spec)``: one string names any scorer, so configs and the CLI can carry it.

Single rewards:

- ``"vader"``: VADER compound sentiment of the completion, in [-1, 1] (needs ``pip install vaderSentiment``).
- ``"math"``, ``"math:1e-4"`` (relative tolerance), ``"exact"``: checked against the row's ``answer`` column;
  ``"regex:PATTERN"``, ``"format:think"``, ``"format:answer"``, ``"length:400"`` (see ``reward.verifiable``).
- ``"module:function"``: a Python callable ``f(prompts, completions, **columns) -> list[float | None]``, imported
  only when named. Importing a module runs its code, by design: name only modules you trust. The module is looked
  up on ``sys.path`` as Python has it; the working directory is *not* added implicitly (the ``prefalign`` console
  script does not have it; ``python -m prefalign`` does) — put the module's folder on ``PYTHONPATH`` or install it.
- a folder path: a sequence-classification reward model (``num_labels=1``). Built-in names win over a folder of
  the same name (write ``./math`` for the folder).

Weighted sums and transforms (``reward.transforms``), nestable::

    spec := term ("+" term)*
    term := [NUMBER "*"] atom
    atom := "(" spec ")"
          | normalize(spec [, mean=M, std=S])
          | lsc(spec [, ref=FILE | ref_column=NAME] [, stat=mean|median|Q])
          | infalign(spec, ref=FILE | ref_column=NAME [, phi=exp|power|negexp|identity], t=T)
          | calibrate(spec [, ref=FILE | ref_column=NAME])          (infalign with phi=identity)
          | a single reward, or text in quotes ('...' or "...") read as a folder path or callable only

for example ``0.8*math + 0.2*format:think``, ``math + -0.001*length:400`` (subtract with a negative weight),
``0.5*(math + exact)``, ``normalize(runs/rm)`` (reads ``runs/rm/reward_stats.json``), ``normalize(vader, mean=0.1,
std=0.5)``, ``lsc(rm_a, ref=ref.jsonl) + lsc(rm_b, ref=ref.jsonl)``, ``infalign(rm, ref=ref.jsonl, t=4)``.
``+ * ( ) , =`` and quotes are grammar: quote a regex pattern or a path that holds any of them
(``regex:'^\\d+$'``). Without ``ref``, ``lsc`` reads r_ref(x) from the column ``ref_reward`` and ``infalign`` /
``calibrate`` read the list of reference rewards from ``ref_rewards``; ``infalign``'s phi is ``exp`` unless given.
From Python or YAML a list also makes a weighted sum:
``["math", ("format:think", 0.2), {"reward": "length:400", "weight": -0.01, "name": "len"}]``.
"""

from __future__ import annotations

import importlib
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from prefalign.errors import UserError
from prefalign.reward.base import CallableReward, RewardFn, VaderReward

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # package.module:function (or :Class.method)
_PREFIXES = ("regex:", "format:", "length:", "math:")  # reserved: never read as module:function
_NAMES = ("vader", "math", "exact")
_OPTIONS = {"normalize": ("mean", "std"), "lsc": ("ref", "ref_column", "stat"),
            "infalign": ("ref", "ref_column", "phi", "t"), "calibrate": ("ref", "ref_column")}
_UNKNOWN = ("is not 'vader', a verifiable reward (math, exact, regex:..., format:think, length:N), a transform "
            "(normalize, lsc, infalign, calibrate), a 'module:function' callable or an existing folder")


def load_reward(spec, device: str = "cpu", batch_size: int = 16, use_safetensors: bool | None = None,
                dtype=None) -> RewardFn:
    """A ``RewardFn`` for ``spec`` (see the module docstring); a callable or an existing ``RewardFn`` is wrapped
    or returned as is, a list is a weighted sum. ``use_safetensors``: a reward-model folder with pickle weights
    only is refused (None: the ``PREFALIGN_SAFETENSORS_ONLY`` environment variable); ``dtype``: its weights' dtype."""
    return _Parser(device, batch_size, use_safetensors, dtype).load(spec)


class _Parser:
    def __init__(self, device, batch_size, use_safetensors, dtype):
        self.opts = {"device": device, "batch_size": batch_size, "use_safetensors": use_safetensors, "dtype": dtype}
        self.refs: dict[str, object] = {}  # a reference-samples file is read once per spec

    def load(self, spec) -> RewardFn:
        if isinstance(spec, RewardFn):
            return spec
        if callable(spec):
            return CallableReward(spec, batch_size=self.opts["batch_size"])
        if isinstance(spec, (list, tuple)):
            return self.listed(spec)
        if not isinstance(spec, (str, Path)) or not str(spec).strip():
            raise UserError("reward", f"expected a reward spec string, got {spec!r}",
                            "use 'vader', 'math', 'module:function', a reward-model folder or a weighted sum")
        self.spec = str(spec).strip()
        text = self.spec
        if text.lower() not in _NAMES and Path(text).is_dir():  # a folder whose name holds grammar characters
            return self.model(text)
        if _CALLABLE.match(text) and not text.lower().startswith(_PREFIXES):
            return CallableReward(import_callable(text), name=text, batch_size=self.opts["batch_size"])
        return self.parse(text)

    def fail(self, what: str, todo: str = "check the spec") -> UserError:
        return UserError(f"reward {self.spec}", what, todo)

    # ---- a string --------------------------------------------------------------------------------------------
    def parse(self, text: str) -> RewardFn:
        terms = [t.strip() for t in _split(text, "+", self)]
        if any(not t for t in terms):
            raise self.fail("has an empty term ('+' with nothing on one side)",
                            "write A + B; quote a regex pattern that holds '+': regex:'\\d+'")
        parsed = [self.term(t) for t in terms]
        if len(parsed) == 1 and parsed[0][1] is None:
            return parsed[0][0]
        return _combined([(r, 1.0 if w is None else w) for r, w, _ in parsed], [n for _, _, n in parsed], text)

    def term(self, text: str):
        parts = _split(text, "*", self, maxsplit=1)
        if len(parts) == 1:
            return self.atom(text), None, text
        w, atom = parts[0].strip(), parts[1].strip()
        weight = self.number(w, "", f"write WEIGHT*REWARD with a finite number (0.5*math), in '{text}'; quote a "
                             "regex pattern that holds '*'")
        if not atom:
            raise self.fail(f"'{text}' has a weight but no reward", "write WEIGHT*REWARD")
        return self.atom(atom), weight, atom

    def atom(self, text: str) -> RewardFn:
        if len(text) >= 2 and text[0] in "'\"" and text[-1] == text[0]:
            return self.named(_path(text[1:-1]), literal=True)
        if text.startswith("(") and text.endswith(")") and _closing(text, 0) == len(text) - 1:
            return self.parse(text[1:-1])
        m = re.match(r"([A-Za-z_]\w*)\s*\(", text)
        if m and text.endswith(")") and _closing(text, m.end() - 1) == len(text) - 1:
            return self.transform(m.group(1), text[m.end() : -1], text)
        return self.named(text)

    def named(self, text: str, literal: bool = False) -> RewardFn:
        from prefalign.reward import verifiable as v

        low = text.lower()
        if not literal:
            if low in ("vader", "math", "exact"):
                return {"vader": VaderReward, "math": v.MathReward, "exact": v.ExactReward}[low]()
            if low.startswith("regex:"):
                return v.RegexReward(_unquote(text[6:].strip()))
            if low.startswith("format:"):
                return v.FormatReward(text[7:].strip())
            if low.startswith(("length:", "math:")):
                arg = text.split(":", 1)[1].strip()
                try:
                    return v.LengthReward(int(arg)) if low.startswith("length:") else v.MathReward(float(arg))
                except ValueError:
                    raise self.fail(f"'{arg}' in '{text}' is not a number", "e.g. length:400 or math:1e-4") from None
        path = _path(text)
        if Path(path).is_dir():
            return self.model(path)
        if _CALLABLE.match(text):
            return CallableReward(import_callable(text), name=text, batch_size=self.opts["batch_size"])
        if Path(path).exists():
            raise UserError(f"reward {text}", "is a file, not a reward-model folder",
                            "pass the folder that holds config.json")
        raise UserError(f"reward {text}", _UNKNOWN, "check the spelling or the path")

    def model(self, path: str) -> RewardFn:
        from prefalign.reward.model import ModelReward  # transformers is imported only for model rewards

        return ModelReward(path, **self.opts)

    def transform(self, name: str, inner: str, text: str) -> RewardFn:
        from prefalign.reward import transforms as t

        kind = name.lower()
        if kind not in _OPTIONS:
            raise self.fail(f"unknown transform '{name}(...)'", f"use one of: {', '.join(_OPTIONS)}")
        args = [a.strip() for a in _split(inner, ",", self)]
        specs, opts = [], {}
        for a in args:
            key = re.match(r"([A-Za-z_]\w*)\s*=(.*)$", a, re.DOTALL)
            if key is None:
                if opts:
                    raise self.fail(f"{name}(...) has a reward after its options", f"write {name}(REWARD, key=value)")
                specs.append(a)
            elif key.group(1) not in _OPTIONS[kind]:
                raise self.fail(f"unknown option '{key.group(1)}' for {name}",
                                f"options: {', '.join(_OPTIONS[kind])}")
            else:
                opts[key.group(1)] = _unquote(key.group(2).strip())
        if len(specs) != 1 or not specs[0]:
            raise self.fail(f"{name}(...) takes one reward, got {len(specs)}", f"write {name}(REWARD, key=value)")
        for k in ("mean", "std", "t", "stat"):  # options are checked before the reward (maybe a model) loads
            if k in opts and not (k == "stat" and opts[k] in ("mean", "median")):
                opts[k] = self.number(opts[k], f"{name}(...) option {k}")
        if "ref" in opts:
            path = _path(opts["ref"])
            if path not in self.refs:
                self.refs[path] = t.ReferenceSamples(path)
            opts["ref"] = self.refs[path]
        folder = _path(_unquote(specs[0]))
        if kind == "normalize" and not {"mean", "std"} <= set(opts) and folder.lower() not in _NAMES \
                and Path(folder).is_dir():
            opts = {**dict(zip(("mean", "std"), t.folder_stats(folder))), **opts}
        base = self.parse(specs[0])
        if kind == "normalize":
            return t.NormalizedReward(base, name=text, **opts)
        if kind == "lsc":
            return t.LSCReward(base, name=text, **opts)
        return t.CalibratedReward(base, name=text, **{"phi": "identity" if kind == "calibrate" else "exp", **opts})

    def number(self, s: str, what: str, todo: str = "give a number") -> float:
        try:
            x = float(s)
        except ValueError:
            x = math.nan
        if not math.isfinite(x):
            raise self.fail(f"{what} '{s}' is not a finite number" if what else f"bad weight '{s}'", todo)
        return x

    # ---- a list (Python / YAML) ------------------------------------------------------------------------------
    def listed(self, items) -> RewardFn:
        terms, names = [], []
        for i, item in enumerate(items):
            where = f"reward list item {i + 1}"
            if isinstance(item, dict) and ("reward" not in item or set(item) - {"reward", "weight", "name"}):
                raise UserError(where, f"has keys {sorted(item)}", "give {reward: SPEC, weight: W, name: N}")
            if isinstance(item, dict):
                spec, weight, name = item["reward"], item.get("weight", 1.0), item.get("name")
            else:
                spec, weight, name = (*item, None) if isinstance(item, tuple) and len(item) == 2 else (item, 1.0, None)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise UserError(where, f"bad weight {weight!r}", "give a finite number")
            terms.append((self.load(spec), float(weight)))
            names.append(str(name) if name is not None else terms[-1][0].name)
        return _combined(terms, names, None)


def _combined(terms, names, text):
    from prefalign.reward.transforms import CombinedReward

    return CombinedReward(terms, names=names, name=text)


def _split(text: str, sep: str, parser: _Parser, maxsplit: int = -1) -> list[str]:
    """``text`` split at ``sep`` outside quotes and parentheses; a ``UserError`` if those are unbalanced."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise parser.fail(f"unbalanced parentheses: ')' without '(' in '{text}'",
                                  "balance them, or quote a regex pattern that holds parentheses")
        elif ch == sep and depth == 0 and maxsplit != len(parts):
            parts.append(text[start:i])
            start = i + 1
    if quote:
        raise parser.fail(f"unterminated quote {quote} in '{text}'", "close the quote")
    if depth:
        raise parser.fail(f"unbalanced parentheses: '(' without ')' in '{text}'",
                          "balance them, or quote a regex pattern that holds parentheses")
    return parts + [text[start:]]


def _closing(text: str, i: int) -> int:
    """The index of the ')' that closes the '(' at ``i`` (quotes skipped), or -1."""
    depth, quote = 0, None
    for j in range(i, len(text)):
        ch = text[j]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "()":
            depth += 1 if ch == "(" else -1
            if depth == 0:
                return j
    return -1


def _path(s: str) -> str:
    return os.path.expanduser(os.path.expandvars(s))  # ~ and $VARS, as model.expand_path does for path flags


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] in "'\"" and s[-1] == s[0] else s


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
