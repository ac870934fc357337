"""Every config field documents itself (help, group, choices in its metadata); `prefalign train --help` shows them."""

from __future__ import annotations

import dataclasses

import pytest

from prefalign.cli import main
from prefalign.errors import UserError
from prefalign.train.config import (
    _CHOICES,
    GROUPS,
    RUN_CONTROL_FIELDS,
    TrainConfig,
    describe_fields,
    from_dict,
    help_text,
)
from prefalign.train.setup import result_fingerprint

FIELDS = dataclasses.fields(TrainConfig)
CHOICE_FIELDS = [f.name for f in FIELDS if "choices" in f.metadata]


def _train_help(capsys, monkeypatch, columns: int) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _entries(text: str) -> dict[str, tuple[str, str]]:
    """{field: (its group header, its entry's text joined into one line)} from the help's field section."""
    out: dict[str, tuple[str, str]] = {}
    header, current = None, None
    for line in text[text.index("config fields"):].splitlines()[1:]:
        if line and not line.startswith(" "):
            header, current = line, None
        elif line.startswith("  --"):
            current = line.split()[0][2:]
            out[current] = (header, line)
        elif line.strip() and current:
            out[current] = (header, out[current][1] + " " + line.strip())
    return out


def test_every_field_has_a_one_line_help_and_a_known_group():
    for f in FIELDS:
        help_, group = f.metadata.get("help"), f.metadata.get("group")
        assert isinstance(help_, str) and help_.strip() and "\n" not in help_, f.name
        assert group in GROUPS, f.name
    assert {f.metadata["group"] for f in FIELDS} == set(GROUPS)  # no empty group header


def test_choices_live_in_the_metadata():
    assert _CHOICES == {f.name: f.metadata["choices"] for f in FIELDS if "choices" in f.metadata}
    assert set(CHOICE_FIELDS) >= {"dtype", "truncation", "reference", "lr_scheduler", "nan_policy", "layout",
                                  "method", "sharding", "mixed_precision"}
    for name in CHOICE_FIELDS:
        assert getattr(TrainConfig(), name) in _CHOICES[name], name


def test_new_fields_defaults_and_groups():
    cfg = TrainConfig()
    assert (cfg.method, cfg.completion_only_loss, cfg.sharding, cfg.mixed_precision) == ("auto", True, "none", "no")
    meta = {f.name: f.metadata for f in FIELDS}
    assert meta["method"]["choices"] == ("auto", "preference", "sft", "reward", "online")
    assert meta["method"]["group"] == "objective"
    assert meta["completion_only_loss"]["group"] == "sft"
    assert meta["sharding"]["choices"] == ("none", "ddp", "fsdp") and meta["sharding"]["group"] == "distributed"
    assert meta["mixed_precision"]["choices"] == ("no", "bf16") and meta["mixed_precision"]["group"] == "distributed"
    for value in ("preference", "sft"):
        assert from_dict({"method": value}).method == value
    assert from_dict({"sharding": "fsdp", "mixed_precision": "bf16", "completion_only_loss": False}).sharding == "fsdp"


def test_sharding_is_run_control_so_a_run_may_resume_under_another():
    assert "sharding" in RUN_CONTROL_FIELDS
    assert result_fingerprint(TrainConfig(sharding="fsdp")) == result_fingerprint(TrainConfig(sharding="ddp"))
    assert result_fingerprint(TrainConfig(mixed_precision="bf16")) != result_fingerprint(TrainConfig())


@pytest.mark.parametrize("columns", [80, 120])
def test_train_help_lists_every_field_with_type_and_default_under_its_group(capsys, monkeypatch, columns):
    text = _train_help(capsys, monkeypatch, columns)
    assert "--config" in text and "--skip-invalid" in text  # the argparse options are still there
    entries = _entries(text)
    order = list(GROUPS)  # every field once, under its group's header, groups in --help order
    assert list(entries) == [f.name for f in sorted(FIELDS, key=lambda f: order.index(f.metadata["group"]))]
    for d in describe_fields():
        header, entry = entries[d["name"]]
        assert header == f"{GROUPS[d['group']]}:", d["name"]
        assert entry.startswith(f"  --{d['name']} {d['type']}"), entry
        assert entry.endswith(f"(default: {d['default']})"), entry
        assert " ".join(d["help"].split()) in " ".join(entry.split()), d["name"]
    # defaults spelled as in YAML
    assert entries["beta"][1].endswith("(default: 0.1)")
    assert entries["model"][1].endswith('(default: "")')
    assert entries["tokenizer"][1].startswith("  --tokenizer str|null") and entries["tokenizer"][1].endswith(
        "(default: null)")
    assert entries["report_to"][1].endswith("(default: [tensorboard])")
    assert entries["shuffle"][1].endswith("(default: true)")
    assert entries["sharding"][1].startswith("  --sharding {none,ddp,fsdp}")
    # groups in order, each header once; fits the terminal
    headers = [ln for ln in text[text.index("config fields"):].splitlines()[1:] if ln and not ln.startswith(" ")]
    assert headers == [f"{title}:" for title in GROUPS.values()]
    assert max(len(ln) for ln in text.splitlines()) <= columns


def test_help_column_is_aligned():
    col = 34
    for ln in help_text(100, help_column=col).splitlines():
        if not ln.startswith("  "):
            continue  # group header or blank
        head = ln[:col]
        if ln.startswith("  --") and len(head.split()) == 2 and ln[col - 2:col] == "  ":  # name, type, then help
            assert ln[col] != " ", ln
        elif not ln.startswith("  --"):  # help continued: at the help column
            assert head.strip() == "" and ln[col] != " ", ln
        else:  # name and type too long: the help starts on the next line
            assert len(ln.split()) == 2, ln


@pytest.mark.parametrize("name", CHOICE_FIELDS)
def test_a_bad_choice_is_a_one_line_error(capsys, name):
    assert main(["train", f"--{name}", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    assert f"'{name}' must be one of {', '.join(_CHOICES[name])}, got 'bogus'" in err[0]
    with pytest.raises(UserError, match=f"'{name}' must be one of"):
        from_dict({name: "bogus"})
