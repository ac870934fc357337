"""Turning a config into the pieces the loop needs: the objective, the output folder, the reference kind."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from prefalign import objectives
from prefalign.errors import UserError
from prefalign.train.config import RUN_CONTROL_FIELDS, TrainConfig, to_dict

FINISHED_MARKER = "run_complete.json"


def build_objective(cfg: TrainConfig):
    """The (possibly combined) objective; ``beta`` and ``objective_args`` go to every objective that has them."""
    names = [cfg.objective] if isinstance(cfg.objective, str) else list(cfg.objective)
    if not names:
        raise UserError("config", "'objective' is empty", "name at least one objective, e.g. dpo")
    flat = {k: v for k, v in cfg.objective_args.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in cfg.objective_args.items() if isinstance(v, dict)}
    used: set[str] = set()
    parts = []
    for name in names:
        try:
            known = objectives.hparam_names(name)
            hp = {"beta": cfg.beta} if "beta" in known else {}
            hp.update({k: v for k, v in flat.items() if k in known})
            hp.update(nested.get(name, {}))
            used.update(k for k in flat if k in known)
            parts.append(objectives.get(name, **hp))
        except ValueError as e:
            raise UserError("config", str(e), "fix 'objective' / 'objective_args'") from None
    for key in set(flat) - used:
        raise UserError("config", f"objective_args '{key}' is not a hyperparameter of {', '.join(names)}",
                        "remove it or check the spelling (`prefalign objectives` lists them)")
    for key in set(nested) - set(names):
        raise UserError("config", f"objective_args names '{key}', which is not in objective {names}",
                        "remove it or add the objective")
    weights = cfg.objective_weights
    if weights is not None and len(weights) != len(names):
        raise UserError("config", f"{len(names)} objectives but {len(weights)} objective_weights",
                        "give one weight per objective")
    return objectives.combine(parts, [float(w) for w in weights] if weights else None)


def row_options(objective) -> dict:
    """How ``load_rows`` reads rows for ``objective``: its declared numeric fields, and whether it accepts
    cross-prompt pairs (if not, the refusal names the objectives that do)."""
    opts = {"kind": objective.row_kind, "extra_fields": objective.extra_fields,
            "cross_prompt": bool(getattr(objective, "cross_prompt", False))}
    if not opts["cross_prompt"]:
        accept = [n for n in objectives.names() if getattr(objectives.get_class(n), "cross_prompt", False)]
        opts["cross_prompt_hint"] = (f"objective '{objective.name}' reads same-prompt pairs only; cross-prompt pairs "
                                     f"are accepted by: {', '.join(accept) or 'none'}")
    return opts


def reference_kind(cfg: TrainConfig, objective) -> str:
    if not objective.needs_reference:
        return "none"
    kind = cfg.reference
    if kind == "auto":
        return "adapter" if cfg.lora else "copy"
    if kind == "none":
        raise UserError("config", f"objective '{objective.name}' needs a reference but reference is 'none'",
                        "use reference: copy, precompute or adapter")
    if kind == "adapter" and not cfg.lora:
        raise UserError("config", "reference 'adapter' needs LoRA", "set lora: true or use reference: copy")
    if kind == "precompute" and objective.needs_ref_token_logps:
        raise UserError("config", f"objective '{objective.name}' needs per-token reference log-probs, which "
                        "reference: precompute does not store", "use reference: copy or adapter")
    return kind


def result_fingerprint(cfg: TrainConfig) -> dict:
    """Config fields that change the result; a resumed run must match them."""
    return {k: v for k, v in to_dict(cfg).items() if k not in RUN_CONTROL_FIELDS}


def check_output_dir(cfg: TrainConfig) -> Path:
    """Refuse to clobber a finished run; on --resume require the same config. Creates nothing."""
    out = Path(cfg.output_dir)
    if cfg.resume:
        saved = out / "run_config.json"
        if not saved.is_file():
            raise UserError(str(out), "nothing to resume (no run_config.json)", "run without --resume first")
        before = json.loads(saved.read_text())
        now = result_fingerprint(cfg)
        diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if diff:
            raise UserError(str(out), f"--resume with a different config (differs in: {', '.join(diff)})",
                            "resume with the same config, or start a new output_dir")
        return out
    if (out / FINISHED_MARKER).exists() and not cfg.overwrite:
        raise UserError(str(out), "output folder already holds a finished run",
                        "choose another output_dir or pass --overwrite")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise UserError(str(out), "output folder is not empty", "pass --resume to continue it, or --overwrite")
    return out


def fresh_output_dir(out: Path, cfg: TrainConfig) -> None:
    if not cfg.resume and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.json").write_text(json.dumps(result_fingerprint(cfg), indent=1))


def replace_config(cfg: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(cfg, **changes)
