"""``prefalign train --help``'s field listing, from the config fields' metadata (``train/fields.py``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

import yaml

from prefalign.train.fields import GROUPS


def _type_label(tp: Any, choices: tuple | None) -> str:
    if choices:
        return "{" + ",".join(choices) + "}"
    if typing.get_origin(tp) in (Union, types.UnionType):
        return "|".join(_type_label(a, None) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _yaml_value(value: Any) -> str:
    """A default as it would be written in the YAML file or after --field."""
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, float):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def describe_fields() -> list[dict]:
    """Every field as {name, group, type, default, help, choices, range}, in declaration order."""
    from prefalign.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        choices = f.metadata.get("choices")
        out.append({"name": f.name, "group": f.metadata["group"], "type": _type_label(hints[f.name], choices),
                    "default": _yaml_value(default), "help": f.metadata["help"], "choices": choices,
                    "range": f.metadata.get("range")})
    return out


def help_text(width: int = 100, help_column: int = 34) -> str:
    """The fields grouped under a header per group: ``--name TYPE  help (default: X)``, help wrapped at ``width``
    and aligned at ``help_column`` (on the next line when name and type are longer)."""
    import textwrap

    by_group: dict[str, list[dict]] = {g: [] for g in GROUPS}
    for d in describe_fields():
        by_group[d["group"]].append(d)
    wrap = textwrap.TextWrapper(width=max(width - help_column, 20), break_on_hyphens=False)
    lines: list[str] = []
    for group, items in by_group.items():
        if not items:
            continue
        lines += ["", f"{GROUPS[group]}:"]
        for d in items:
            head = f"  --{d['name']} {d['type']}"
            nbsp = "\N{NO-BREAK SPACE}"  # keeps "(default: X)" on one line
            default = f"(default: {d['default']})".replace(" ", nbsp)
            body = [b.replace(nbsp, " ") for b in wrap.wrap(f"{d['help']} {default}")]
            if len(head) + 2 > help_column:
                lines.append(head)
            else:
                lines.append(head.ljust(help_column) + body.pop(0))
            lines += [" " * help_column + b for b in body]
    return "\n".join(lines[1:])
