"""Reward-model training as a method of the engine (``method: reward``; ``prefalign reward train``).

``objective`` names a registered reward loss (``prefalign.reward.losses``: bt, mse, multihead, more, pal, prm),
``objective_args`` its hyperparameters. The loss says which rows it reads (``rows``: pairs, scored or steps — the
row kinds ``reward_pairs``, ``scored``, ``steps``) and what it needs (pooled features, row extras, the number of
heads); the method provides exactly that:

    rows ──kind──▶ token sequences ──layout──▶ batch ──Scorer(reward_forward)──▶ scores [P, K], features [P, H]
         ──▶ RewardScores(chosen, rejected, extras, features) ──loss──▶ (loss = mean over the micro-batch's rows)

Each micro-batch's loss is a row mean weighted by its share of the global batch's rows (``Method.split``), so the
gradient is the global-batch mean whatever the split into micro-batches and processes, for every loss that is a row
mean (all but MORE, whose min-norm weights are solved per micro-batch by design). The model is built from the
causal LM folder ``model`` (``reward.scoring.build_reward_model``); with ``lora`` the body gets an adapter and the
score head is trained whole and saved with it. Training, checkpoints, ``--resume``, DDP/FSDP and the NaN policy
are the engine's, unchanged; ``reward_forward`` is the module's forward through ``Scorer``.

The output folder (``save_final``) always loads with ``AutoModelForSequenceClassification.from_pretrained`` and with
``prefalign label --reward``: the model (merged when LoRA was used), the tokenizer, ``reward_stats.json`` (reward
mean and std over the training rows' scores, temperature 1 until ``prefalign reward eval --save-temperature``),
``reward_model.json`` (the loss, its rows, heads, sources/users), ``adapter/`` with LoRA, ``objective.safetensors``
when the loss owns parameters (PAL).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch

from prefalign.data import kinds
from prefalign.data.kinds import reward_pairs, scored, steps  # noqa: F401  (register the reward row kinds)
from prefalign.errors import UserError
from prefalign.train.method import Method, MicroBatch, check_lora_targets, register

ROW_KINDS = {"pairs": "reward_pairs", "scored": "scored", "steps": "steps"}
ROW_FORMATS = {"pairs": "prompt, chosen, rejected", "scored": "prompt, completion, score (or scores)",
               "steps": "prompt, steps, labels"}
PROGRESS = {"pairs": ("accuracy",), "scored": ("mse",), "steps": ("step_accuracy",)}
STATS_ROWS = 4096  # reward_stats.json: the mean/std over (a seeded sample of at most) this many training rows
# Losses whose reward is not the score head's output (PAL: distances to a user's ideal point, in its own module):
# the head-based extras (per-source accuracy, ECE of σ(r_c − r_r)) would describe an untrained head, so are left out.
HEADLESS = {"pal"}


def build_loss(cfg):
    """(the loss, its name, its hyperparameters, whether ``num_users`` is left for the data to fill in)."""
    from prefalign.reward import losses

    if not isinstance(cfg.objective, str):
        raise UserError("config", f"method 'reward' trains one loss, got the list {cfg.objective}",
                        f"set objective to one of: {', '.join(losses.names())}")
    name = cfg.objective
    if name not in losses.names():
        raise UserError("config", f"objective '{name}' is not a reward-model loss",
                        f"use one of: {', '.join(losses.names())} (the default of `prefalign reward train` is bt)")
    if cfg.objective_weights is not None:
        raise UserError("config", "objective_weights is set, but method 'reward' trains one loss",
                        "drop objective_weights")
    args = dict(cfg.objective_args)
    nested = {k: args.pop(k) for k in list(args) if isinstance(args[k], dict) and k in losses.names()}
    for k in nested:
        if k != name:
            raise UserError("config", f"objective_args names '{k}', which is not the objective '{name}'",
                            "remove it or set objective to it")
    hp = {**args, **nested.get(name, {})}
    deferred = "num_users" in losses.hparam_names(name) and "num_users" not in hp
    try:
        loss = losses.get(name, **({**hp, "num_users": 1} if deferred else hp))
    except ValueError as e:
        raise UserError("config", str(e), "fix 'objective_args'") from None
    return loss, name, hp, deferred


def _sniff(path: str) -> str | None:
    """The reward row kind the data file's first row looks like (pairs, scored, steps), or None."""
    from prefalign.data.io import read_table

    try:
        rows, _ = read_table(path)
    except UserError:
        return None  # the loader reports the file's problem
    if not rows:
        return None
    row = rows[0][1]
    if "steps" in row:
        return "steps"
    if "completion" in row and ("score" in row or "scores" in row):
        return "scored"
    if "chosen" in row or "completions" in row or "chosen_prompt" in row:
        return "pairs"
    return None


@register
class Reward(Method):
    name = "reward"
    progress_keys = ("accuracy",)

    def __init__(self, cfg):
        self.cfg = cfg
        self.loss_fn, self.loss_name, self.hparams, self._deferred_users = build_loss(cfg)
        self.rows = self.loss_fn.rows
        self.kind = kinds.get(ROW_KINDS[self.rows])
        self.needs = self.loss_fn.needs()
        self.progress_keys = PROGRESS[self.rows]
        if cfg.reference not in ("auto", "none"):
            raise UserError("config", f"reference is '{cfg.reference}', but a reward model has no reference",
                            "drop reference (or set it to auto)")
        self.num_heads, self.sources, self.users, self.stats = 1, [], [], None

    # --- setup -------------------------------------------------------------------------------------------------
    def setup(self, engine) -> None:
        self.engine, cfg = engine, self.cfg
        looks = _sniff(cfg.data)
        if looks and looks != self.rows:
            raise UserError(cfg.data, f"rows look like {looks} rows ({ROW_FORMATS[looks]}), but objective "
                            f"'{self.loss_name}' reads {self.rows} rows ({ROW_FORMATS[self.rows]})",
                            f"give {self.rows} rows, or a loss for {looks} rows (`prefalign reward losses`)")
        self.load_examples(self.kind.name, {})
        self._check_columns()
        self._index_names()
        if cfg.merge_lora and engine.acc.is_main_process:
            engine.log("merge_lora: a reward model is always saved merged (loadable as it is); the adapter goes "
                       "to adapter/")
        self.model = self.build_reward(log=engine.log if engine.acc.is_main_process else None)
        module = self.loss_fn.module(self._hidden_size(self.model))
        self.extra_module = module.to(engine.acc.device) if module is not None else None

    def _hidden_size(self, model) -> int:
        from prefalign.reward.scoring import unwrap

        config = unwrap(model).config
        return (config.get_text_config() if hasattr(config, "get_text_config") else config).hidden_size

    def build_reward(self, log=None, device=None):
        """The reward model as configured: dtype, dropout off, checkpointing, LoRA (head trained and saved)."""
        from prefalign.model import disable_dropout, enable_checkpointing
        from prefalign.reward.scoring import add_reward_lora, build_reward_model, reward_forward
        from prefalign.train.distributed import FORWARD_ATTR

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model, note = build_reward_model(cfg.model, self.num_heads, cfg.dtype, cfg.trust_remote_code,
                                         self.tokenizer.pad_token_id)
        if log:
            log(note)
        if cfg.disable_dropout:
            disable_dropout(model)
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)
        if cfg.lora:
            check_lora_targets(model, cfg.lora_target_modules)
            try:
                model = add_reward_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
            except ValueError as e:  # PEFT: a target it cannot wrap
                raise UserError("config", f"lora_target_modules: {str(e).splitlines()[0][:200]}",
                                "name linear layers of the model, or use all-linear") from None
        model.config.use_cache = False
        setattr(model, FORWARD_ATTR, reward_forward)  # the Scorer's forward: pooled scores, not log-probs
        return model.to(device or self.engine.acc.device)

    def _all(self) -> list:
        return self.examples + self.eval_examples

    def _used(self, name: str) -> bool:
        return name in self.needs.extras or name in self.needs.optional

    def _check_columns(self) -> None:
        """Columns the loss reads, present on every row (one line per row, as the loader's problems), and the
        number of heads: the loss's, or the data's per-head targets'."""
        cfg, problems, bad = self.cfg, [], set()
        data = self.examples + self.eval_examples
        train_ids = {id(ex) for ex in self.examples}
        where = lambda ex: f"{cfg.data if id(ex) in train_ids else cfg.eval_data or cfg.data}:row {ex.row}"  # noqa
        need = set(self.needs.extras)

        def require(attr: str, field: str, why: str, rows=data):
            for ex in rows:
                if getattr(ex, attr, None) is None:
                    problems.append(f"{where(ex)}: field '{field}': missing ({why})")
                    bad.add(id(ex))

        loss = f"loss '{self.loss_name}' reads it"
        if "source" in need:
            require("source", "source", loss)
        if "user" in need:
            require("user", "user_id", loss)
        if self.rows == "pairs":
            if self._used("margin") and any(ex.margin is not None for ex in data):
                require("margin", "margin", "other rows have one")
            if "margin" in need:
                require("margin", "margin", loss)
            if self._used("targets") and (any(ex.targets is not None for ex in data) or "targets" in need):
                require("targets", "targets", "other rows have one" if "targets" not in need else loss)
        use = self.rows == "scored" or self._used("targets")  # per-head values that set K (else ignored)
        widths = {len(ex.targets) for ex in data if use and getattr(ex, "targets", None) is not None}
        want = self.needs.num_heads
        k = want if want is not None else (max(widths) if widths else 1)
        for ex in data if use else ():
            t = getattr(ex, "targets", None)
            if t is not None and len(t) != k and id(ex) not in bad:
                field = "targets" if self.rows == "pairs" else ("scores" if len(t) > 1 or k > 1 else "score")
                problems.append(f"{where(ex)}: field '{field}': {len(t)} value(s), but the model has {k} head(s)"
                                + (" (objective_args num_heads)" if want is not None else " (other rows)"))
                bad.add(id(ex))
        self.num_heads = k
        if problems and not cfg.skip_invalid:
            n = len(bad)
            more = f" ({len(problems)} problems, the first 20 listed)" if len(problems) > 20 else ""
            raise UserError(cfg.data, f"{n} invalid row{'s' if n != 1 else ''} for objective "
                            f"'{self.loss_name}'{more}", "fix them or pass --skip-invalid", details=problems[:20])
        if bad:
            self.examples = [ex for ex in self.examples if id(ex) not in bad]
            self.eval_examples = [ex for ex in self.eval_examples if id(ex) not in bad]
            if not self.examples:
                raise UserError(cfg.data, f"no rows left for objective '{self.loss_name}'", problems[0])
            self.engine.log(f"skipped {len(bad)} row(s) missing what objective '{self.loss_name}' reads")

    def _index_names(self) -> None:
        """Sources and users as integer ids (sorted names, over train and eval rows); PAL's num_users."""
        data = self._all()
        self.sources = sorted({ex.source for ex in data if ex.source is not None})
        self.users = sorted({ex.user for ex in data if ex.user is not None})
        s_id, u_id = {s: i for i, s in enumerate(self.sources)}, {u: i for i, u in enumerate(self.users)}
        for ex in data:
            ex.source_id = s_id.get(ex.source, -1)
            ex.user_id = u_id.get(ex.user, -1)
        if "num_users" in getattr(self.loss_fn, "__dataclass_fields__", {}):
            from prefalign.reward import losses

            given = self.hparams.get("num_users")
            if given is not None and given < len(self.users):
                raise UserError("config", f"objective_args num_users is {given}, but the rows name "
                                f"{len(self.users)} users", f"set num_users to at least {len(self.users)}, or drop it "
                                "(the number of users in the data is used)")
            if self._deferred_users:
                self.loss_fn = losses.get(self.loss_name, **{**self.hparams, "num_users": max(1, len(self.users))})

    # --- batches -------------------------------------------------------------------------------------------------
    def batch(self, idx: list[int], examples):
        exs = [examples[i] for i in idx]
        b = self.kind.collate(exs, self.tokenizer.pad_token_id, self.cfg.layout, self.cfg.pack)
        b.extras = self._extras(exs, b)
        return b.to(self.engine.acc.device)

    def _extras(self, exs: list, batch) -> dict[str, torch.Tensor]:
        """The row values the loss declares (required or optional), for the rows of a batch."""
        out = {}
        if self._used("margin") and self.rows == "pairs" and exs[0].margin is not None:
            out["margin"] = torch.tensor([ex.margin for ex in exs], dtype=torch.float32)
        if self._used("source"):
            out["source"] = torch.tensor([ex.source_id for ex in exs], dtype=torch.long)
        if self._used("user"):
            out["user"] = torch.tensor([ex.user_id for ex in exs], dtype=torch.long)
        if self._used("targets") and getattr(exs[0], "targets", None) is not None:
            out["targets"] = torch.tensor([ex.targets for ex in exs], dtype=torch.float32)  # [B, K]
        if self.rows == "steps":
            out["step_labels"] = torch.tensor([y for ex in exs for y in ex.labels], dtype=torch.float32)  # [S]
            out["step_row"] = batch.pool_seq.clone()  # [S]
        return out

    def micro_batches(self, step, idx, rank, world):
        return [MicroBatch(self.batch(c, self.examples), [self.examples[i].row for i in c], w, s)
                for c, w, s in self.split(idx, rank, world)]

    def longest_micro_batch(self) -> MicroBatch:
        order = sorted(range(len(self.examples)), key=lambda i: -self.kind.size(self.examples[i]))
        return MicroBatch(self.batch(order[: self.cfg.batch_size], self.examples))

    # --- scores and the loss -------------------------------------------------------------------------------------
    def scores(self, batch, forward=None):
        """``RewardScores`` of a batch: the Scorer's pooled scores (and features) arranged by row."""
        out = (forward or self.engine.score)(batch, features=self.needs.features)
        return arrange(out, batch, self.rows)

    def loss(self, mb: MicroBatch, step: int):
        return self.loss_fn(self.scores(mb.data))

    @torch.no_grad()
    def evaluate(self) -> dict:
        return evaluate_examples(self, self.eval_examples)

    def state(self) -> dict:
        get = getattr(self.loss_fn, "state", None)
        return get() if callable(get) else {}

    def load_state(self, state: dict) -> None:
        put = getattr(self.loss_fn, "load_state", None)
        if callable(put) and state:
            put(state)

    def summary(self) -> dict:
        return {"loss": self.loss_name, "rows": self.rows, "num_heads": self.num_heads,
                "sources": len(self.sources), "users": len(self.users)}

    # --- the output folder ---------------------------------------------------------------------------------------
    def rebuild_model(self) -> torch.nn.Module:
        return self.build_reward(device="cpu")

    def save_final(self, model, out: Path) -> None:
        save_reward_folder(self, model, Path(out))


def arrange(out, batch, rows: str):
    """``Pooled`` outputs of a batch → ``RewardScores``: pairs (chosen = sequences 0..B−1, rejected B..2B−1),
    scored (one per row), steps (per-step scores in extras; chosen = each row's last step)."""
    from prefalign.reward.losses import RewardScores

    sc, ft, B = out.scores, out.features, batch.num_rows
    extras = dict(batch.extras)
    if rows == "pairs":
        return RewardScores(sc[:B], sc[B : 2 * B], extras, None if ft is None else ft[:B],
                            None if ft is None else ft[B : 2 * B])
    if rows == "scored":
        return RewardScores(sc[:B], None, extras, ft)
    counts = torch.bincount(batch.pool_seq, minlength=B)  # steps per row (≥ 1)
    last = counts.cumsum(0) - 1  # [B] index of each row's last step (steps are in row, step order)
    extras["step_scores"] = sc[:, 0]
    return RewardScores(sc[last], None, extras, None if ft is None else ft[last])


def evaluate_examples(method, examples, forward=None) -> dict:
    """The loss's metrics on ``examples`` (row-weighted over batches), with the reward mean/std over every score
    and, for pairs, per-source accuracy (ties count ½ there, RewardBench's rule) and the ECE of σ(r_c − r_r)."""
    n, sums, rows = len(examples), {}, {}
    all_scores, chosen, rejected, src = [], [], [], []
    bs = method.cfg.batch_size
    for s in range(0, n, bs):
        idx = list(range(s, min(n, s + bs)))
        rs = method.scores(method.batch(idx, examples), forward)
        loss, metrics = method.loss_fn(rs)
        for k, v in {"loss": loss.item(), **metrics}.items():
            sums[k] = sums.get(k, 0.0) + v * len(idx)
            rows[k] = rows.get(k, 0) + len(idx)
        if method.rows == "pairs":
            chosen.append(rs.chosen[:, 0].float().cpu())
            rejected.append(rs.rejected[:, 0].float().cpu())
            src += [examples[i].source for i in idx]
            all_scores += [rs.chosen.float().cpu(), rs.rejected.float().cpu()]
        elif method.rows == "steps":
            all_scores.append(rs.extras["step_scores"].float().cpu()[:, None])
        else:
            all_scores.append(rs.chosen.float().cpu())
    out = {k: v / rows[k] for k, v in sums.items()}
    both = torch.cat(all_scores)
    out["reward_mean"], out["reward_std"] = float(both.mean()), float(both.std(unbiased=False))
    if chosen and method.loss_name not in HEADLESS:
        d = torch.cat(chosen) - torch.cat(rejected)
        for name in sorted({x for x in src if x is not None}):
            m = torch.tensor([x == name for x in src])
            out[f"accuracy/{name}"] = float(((d[m] > 0).double() + 0.5 * (d[m] == 0).double()).mean())
        try:
            from prefalign.reward.calibration import pairwise_ece

            out["ece"] = float(pairwise_ece(d))
        except ImportError:  # pragma: no cover - the calibration module is optional here
            pass
    return out


@torch.no_grad()
def reward_stats(method, model) -> dict:
    """Mean and std (population) of the trained model's scores over the training rows (a seeded sample of at most
    ``STATS_ROWS``), all heads pooled, plus per-head values: what ``normalize(...)`` divides by."""
    from prefalign.reward.scoring import reward_forward
    from prefalign.train import distributed as dist

    eng, cfg = method.engine, method.cfg
    n = len(method.examples)
    idx = list(range(n))
    if n > STATS_ROWS:
        g = torch.Generator().manual_seed(cfg.seed)
        idx = sorted(torch.randperm(n, generator=g)[:STATS_ROWS].tolist())
    device = eng.acc.device
    if next(model.parameters()).device != device:
        model.to(device)
    was = model.training
    model.eval()
    mode = getattr(eng, "sharding", "none")
    fwd = lambda b, features=False: reward_forward(model, b, features)  # noqa: E731
    parts = []
    with dist.autocast(cfg, "none" if mode == "fsdp" else mode, device):
        for s in range(0, len(idx), cfg.batch_size):
            rs = method.scores(method.batch(idx[s : s + cfg.batch_size], method.examples), fwd)
            if method.rows == "pairs":
                parts += [rs.chosen.float().cpu(), rs.rejected.float().cpu()]
            elif method.rows == "steps":
                parts.append(rs.extras["step_scores"].float().cpu()[:, None])
            else:
                parts.append(rs.chosen.float().cpu())
    model.train(was)
    x = torch.cat(parts)  # [N, K]
    return {"mean": float(x.mean()), "std": float(x.std(unbiased=False)),
            "head_mean": x.mean(0).tolist(), "head_std": x.std(0, unbiased=False).tolist(),
            "n_scores": int(x.shape[0]), "rows": len(idx), "rows_of": "train"}


def save_reward_folder(method, model, out: Path) -> None:
    """Write the output folder (see the module docstring) through ``out/.final.tmp``: every file complete before
    it is moved in; ``run_complete.json`` (the engine's, written after this) marks the folder finished."""
    from prefalign.reward.calibration import save_calibration
    from prefalign.reward.scoring import ADAPTER_DIR, META_FILE, head_name

    cfg = method.cfg
    stats = reward_stats(method, model)
    method.stats = stats
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    head = head_name(model)
    is_peft = hasattr(model, "merge_and_unload")
    if is_peft:  # the adapter (LoRA weights + the trained score head), then the merged model
        model.save_pretrained(tmp / ADAPTER_DIR, safe_serialization=True)
        method.tokenizer.save_pretrained(tmp / ADAPTER_DIR)
        from prefalign.model import quiet_third_party

        with quiet_third_party():
            model = model.merge_and_unload()  # in place: this is the end of the run
    model.config.use_cache = True
    model.save_pretrained(tmp, safe_serialization=True)
    method.tokenizer.save_pretrained(tmp)
    extra = {k: v for k, v in stats.items() if k not in ("mean", "std")}
    std = stats["std"] if math.isfinite(stats["std"]) else 0.0
    save_calibration(tmp, 1.0, stats["mean"], std, extra)
    meta = {"format": "prefalign reward model", "loss": method.loss_name,
            "hparams": {k: v for k, v in method.loss_fn.hparams().items()}, "rows": method.rows,
            "num_heads": method.num_heads, "head": head, "pad_token_id": method.tokenizer.pad_token_id,
            "pooling": "final hidden state at the last token that is not pad_token_id",
            "rendering": ("chat template: a user turn and an assistant turn" if getattr(
                method.tokenizer, "chat_template", None) else "prompt + completion, the tokenizer's special tokens"),
            "step_separator": "\n" if method.rows == "steps" else None,
            "sources": method.sources, "users": method.users, "base_model": cfg.model,
            "adapter": ADAPTER_DIR if is_peft else None,
            "objective_module": "objective.safetensors" if method.extra_module is not None else None}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str) + "\n", encoding="utf-8")
    if method.extra_module is not None:
        from safetensors.torch import save_file

        state = {n: p.detach().cpu().contiguous() for n, p in method.extra_module.state_dict().items()}
        save_file(state, str(tmp / "objective.safetensors"))
    for f in sorted(tmp.iterdir()):
        dest = out / f.name
        if f.is_dir():
            shutil.rmtree(dest, ignore_errors=True)
        os.replace(f, dest)
    tmp.rmdir()
