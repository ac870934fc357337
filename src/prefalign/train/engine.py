"""THE training loop: one engine runs every training method (preference objectives, SFT, and what comes next).

A *method* (``train/method.py``) supplies what differs — its models, parameter groups, the micro-batches of step s
and their loss, evaluation, running state, what to save. The engine does everything else, the same way for all:

- data order: step s takes stream positions [s·G, (s+1)·G) of seeded per-epoch permutations (G = the global batch,
  batch_size × gradient_accumulation_steps × processes), so resuming at step s needs only s;
- each micro-batch's loss is weighted by its share of the global batch (× processes, since DDP and FSDP average
  gradients over processes), so the gradient is the global-batch mean whatever the split;
- gradient sync through PyTorch's engines (``train/distributed.py``: DDP, or FSDP2 sharding parameters, gradients
  and optimizer state), clipping, NaN policy, AdamW and the schedule, SIGINT/SIGTERM, atomic checkpoints with exact
  ``--resume``, progress bar, JSONL/TensorBoard metrics, health checks, eval cadence, the final save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from prefalign.errors import UserError
from prefalign.model import dtype_line
from prefalign.train import checkpoint as ckpt
from prefalign.train import distributed as dist
from prefalign.train.config import TrainConfig, check, save, to_dict
from prefalign.train.faults import maybe_fault, nan_at
from prefalign.train.health import HealthMonitor
from prefalign.train.logger import MetricsLogger
from prefalign.train.setup import FINISHED_MARKER, OutputLock, check_output_dir, fresh_output_dir


def stream_indices(step: int, global_batch: int, n: int, seed: int, shuffle: bool = True) -> list[int]:
    """Example indices for optimizer step ``step`` (see module docstring)."""
    out, pos = [], step * global_batch
    while len(out) < global_batch:
        epoch, offset = divmod(pos, n)
        gen = torch.Generator().manual_seed(seed + epoch)
        perm = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
        take = perm[offset : offset + global_batch - len(out)]
        out += take
        pos += len(take)
    return out


class Engine:
    """Builds the method's models, wraps them for the process group, and runs ``train()``."""

    def __init__(self, cfg: TrainConfig, method, accelerator: Accelerator | None = None, log=print):
        self.method, self.log = method, log
        # cpu=True on a machine without CUDA: accelerate then forms a gloo group when launched with several processes.
        self.acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        # ``dtype: auto`` resolved once for this device, first thing said; the resolved value is what the run uses,
        # saves in config.yaml and compares on --resume.
        dtype, line = dtype_line(cfg.dtype, self.acc.device)
        if self.acc.is_main_process:
            log(line)
        self.cfg = cfg = dataclasses.replace(cfg, dtype=dtype) if dtype != cfg.dtype else cfg
        method.cfg = cfg
        check(cfg)  # ranges and conflicts (already checked for a config read by the CLI; here for API callers)
        if self.acc.is_main_process:  # another run in output_dir: said first, before any data or model is read
            OutputLock(Path(cfg.output_dir)).probe()
        self.out = check_output_dir(cfg)
        method.setup(self)  # data first (every bad row before any model), then the model(s)
        self.global_batch = cfg.batch_size * cfg.gradient_accumulation_steps * self.acc.num_processes
        per_epoch = math.ceil(method.num_examples / self.global_batch)
        # A method may take several optimizer steps per batch (online RL's μ updates per rollout).
        per_batch = getattr(method, "updates_per_batch", 1)
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_epochs * per_epoch)
                                                                         * per_batch)
        self.sharding = dist.sharding_mode(cfg, self.acc)
        if self.acc.is_main_process:
            self.log(dist.describe(self.sharding, self.acc, cfg))
        # The trainable modules as one module whose forward is the log-prob computation (DDP and FSDP hook forward).
        self.scorer = dist.wrap(method.model, method.extra_module, self.sharding, cfg, self.acc.device)
        groups = method.param_groups()
        opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
        from transformers import get_scheduler

        self.warmup = cfg.warmup_steps or int(cfg.warmup_ratio * self.total_steps)
        self.sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=self.warmup,
                                   num_training_steps=self.total_steps)  # stepped once per optimizer step
        self.opt = opt

    # --- what methods call -------------------------------------------------------------------------------------
    def score(self, batch, **kw):
        """The policy's ``SeqLogps`` of ``batch`` through the wrapped module (so DDP/FSDP see the forward)."""
        with dist.autocast(self.cfg, self.sharding, self.acc.device):
            return self.scorer(batch, **kw)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for g in self.opt.param_groups for p in g["params"]]

    # --- the loop ----------------------------------------------------------------------------------------------
    def train(self) -> Path:
        with self._locked_output():
            return self._train()

    @contextlib.contextmanager
    def _locked_output(self):
        """The output folder locked for the whole run (main process), then checked again under the lock (another
        run may have finished there meanwhile) and cleared of half-written checkpoints (``step-N.tmp``)."""
        lock, error = None, None
        if self.acc.is_main_process:
            lock = OutputLock(self.out)
            try:
                lock.acquire()
                check_output_dir(self.cfg, inputs=False)
                ckpt.remove_partial(self.out / "checkpoints")
            except UserError as e:
                lock.release()
                error = (e.where, e.what, e.todo)
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            error = broadcast_object_list([error])[0]
        if error:
            raise UserError(*error)
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def _train(self) -> Path:
        cfg, acc = self.cfg, self.acc
        start = self._resume() if cfg.resume else 0
        if acc.is_main_process:
            what = "writing run_config.json"
            try:
                fresh_output_dir(self.out, cfg)
                what = "writing config.yaml"
                save(cfg, self.out / "config.yaml")
                what = "writing preprocess_report.json"
                self.method.save_inputs(self.out)
            except Exception as e:  # noqa: BLE001 — see _checkpoint
                if not write_failed(e):
                    raise
                if cfg.resume:  # the checkpoints and the files written before are untouched (atomic writes)
                    raise self._write_error(what, e) from None
                from prefalign.train.setup import clear_output_dir

                error = self._write_error(what, e, "free disk space and run the same command again (the output "
                                          "folder was left empty: there is nothing to resume)")
                clear_output_dir(self.out)  # a folder whose first files did not fit is no run: left empty
                raise error from None
        acc.wait_for_everyone()
        # A metrics write that fails (a full disk) stops the run like a checkpoint write: one line, no torn line.
        logger = MetricsLogger(self.out, cfg.report_to, to_dict(cfg), acc.is_main_process, resume_step=start,
                               on_error=self._write_error)
        health = HealthMonitor(self.warmup, warn=self.log)
        bar = tqdm(total=self.total_steps, initial=start, desc="train", disable=not (cfg.progress and
                   acc.is_main_process), dynamic_ncols=True)
        if cfg.memory_probe and start < self.total_steps:
            self._probe()
        stop = _StopRequest()
        try:
            for step in range(start, self.total_steps):
                if stop.signal:
                    self._checkpoint(step)
                    raise Interrupted(step, stop.signal, self.out)
                metrics = self._step(step, health)
                bar.update(1)
                if metrics is not None:
                    bar.set_postfix({k: f"{metrics[k]:.4f}" if k == "loss" else f"{metrics[k]:.2f}"
                                     for k in ("loss", *self.method.progress_keys) if k in metrics})
                    if (step + 1) % cfg.logging_steps == 0 or step == 0:
                        logger.log(step + 1, metrics)
                if cfg.eval_steps and (step + 1) % cfg.eval_steps == 0 and self.method.has_eval:
                    logger.log(step + 1, self._evaluate())
                if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < self.total_steps:
                    self._checkpoint(step + 1)
        finally:
            bar.close()
            stop.restore()
        final = {"eval": self._evaluate()} if self.method.has_eval else {}
        if final:
            logger.log(self.total_steps, final["eval"])
        logger.close()
        self._save_final(final, health)
        return self.out

    def _step(self, step: int, health: HealthMonitor) -> dict | None:
        cfg, acc, method = self.cfg, self.acc, self.method
        t0 = time.perf_counter()
        idx = stream_indices(step, self.global_batch, method.num_examples, cfg.seed, cfg.shuffle)
        micro = method.micro_batches(step, idx, acc.process_index, acc.num_processes)
        sums: dict[str, float] = {}
        shares: dict[str, float] = {}  # per metric: the share of rows it was computed on (a side may have none)
        rows: list[int] = []
        self.scorer.train()
        for k, mb in enumerate(micro):
            last = k == len(micro) - 1
            with dist.sync_context(self.scorer, self.sharding, last):
                loss, metrics = method.loss(mb, step)
                if nan_at(step + 1):
                    loss = loss * float("nan")
                # mb.weight: the micro-batch's share of the global batch, × processes (gradients are averaged).
                (loss * mb.weight * acc.num_processes).backward()
            rows += mb.rows
            for key, v in {"loss": loss.item(), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + v * mb.share
                shares[key] = shares.get(key, 0.0) + mb.share
        maybe_fault("accumulated", step)
        grad_norm = dist.clip_grad_norm(self.trainable(), cfg.max_grad_norm)
        if not health.finite(sums["loss"], grad_norm):
            what = "loss" if not health.finite(sums["loss"]) else "gradient norm"
            if health.nan(step + 1, rows, what, cfg.nan_policy):
                self.opt.zero_grad(set_to_none=True)
                return None
        self.opt.step()
        if hasattr(method, "after_step"):  # a method's own update after the optimizer's (ONPO's secondary iterate)
            method.after_step(step)
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        maybe_fault("after_step", step + 1)
        metrics = _mean_across(acc, sums, shares)
        metrics.update(grad_norm=grad_norm, lr=self.sched.get_last_lr()[0], step_time=time.perf_counter() - t0)
        health.observe(step + 1, metrics["loss"], metrics.get("logps/chosen"))
        return metrics

    def _probe(self) -> None:
        """One forward + backward on the longest micro-batch (an out-of-memory shows at once); changes nothing."""
        from prefalign.train import memory

        if self.acc.is_main_process:
            self.log(memory.estimate(self.method.model, self.method, self.cfg))
        msg = memory.probe(self)
        if self.acc.is_main_process:
            self.log(msg)

    @torch.no_grad()
    def _evaluate(self) -> dict:
        self.scorer.eval()
        out = self.method.evaluate()
        self.scorer.train()
        return {f"eval/{k}": v for k, v in out.items()}

    # --- checkpoints and the final save ------------------------------------------------------------------------
    def _named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.method.named_trainable())

    def _checkpoint(self, step: int) -> None:
        # Every process takes part in gathering sharded tensors; the main process writes full (unsharded) tensors,
        # so a checkpoint reads back under any sharding and any number of processes.
        params = dist.full_tensors(self._named_trainable())
        optim = dist.full_optimizer_state(self.opt)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            maybe_fault("before_checkpoint", step)
            try:
                ckpt.save_checkpoint(self.out / "checkpoints", params, optim, self.sched.state_dict(),
                                     {"step": step, "objective": self.method.state()}, self.cfg.save_total_limit,
                                     tensors=self._method_tensors())
            except Exception as e:  # noqa: BLE001 — a full disk surfaces as OSError, RuntimeError or SafetensorError
                if not write_failed(e):
                    raise
                raise self._write_error(f"writing the step-{step} checkpoint", e) from None
            maybe_fault("after_checkpoint", step)
        self.acc.wait_for_everyone()

    def _method_tensors(self) -> dict:
        """Tensor state a method keeps between steps (online RL's rollout buffer), checkpointed exactly."""
        fn = getattr(self.method, "state_tensors", None)
        return fn() if fn is not None else {}

    def _write_error(self, what: str, e: Exception, todo: str | None = None) -> UserError:
        """One line: what failed and why (``disk full: N KiB free`` when it is), which checkpoint is intact, how
        to continue (``todo`` instead when given)."""
        from prefalign.train.setup import write_reason

        done = ckpt.list_checkpoints(self.out / "checkpoints")
        kept = f"the checkpoint {done[-1].name} is intact" if done else "no checkpoint was written yet"
        return UserError(str(self.out), f"{what} failed ({write_reason(e, self.out)})",
                         todo or f"free disk space and rerun with --resume; {kept}")

    def _resume(self) -> int:
        done = ckpt.list_checkpoints(self.out / "checkpoints")
        if not done:
            self.log("no checkpoint was written before the run stopped: --resume starts from step 0")
            return 0
        state = ckpt.load_checkpoint(done[-1], self._named_trainable(), self.opt, self.sched)
        dist.reshard_optimizer_state(self.opt)
        self.method.load_state(state.get("objective", {}))  # BCO's running δ
        if hasattr(self.method, "load_state_tensors"):
            self.method.load_state_tensors(ckpt.load_tensors(done[-1]))
        self.log(f"resuming from {done[-1]} (step {state['step']})")
        return state["step"]

    def _save_final(self, final: dict, health: HealthMonitor) -> None:
        model = dist.full_model(self.method, self.sharding)  # collective under FSDP; the model itself otherwise
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            summary = {"steps": self.total_steps, "processes": self.acc.num_processes, "sharding": self.sharding,
                       "method": self.method.name,
                       **self.method.summary(), "nan_skipped": health.skipped, "warnings": sorted(health.warned),
                       **final}
            tmp = self.out / (FINISHED_MARKER + ".tmp")
            try:
                self.method.save_final(model, self.out)
                tmp.write_text(json.dumps(summary, indent=1))
                os.replace(tmp, self.out / FINISHED_MARKER)
            except Exception as e:  # noqa: BLE001 — see _checkpoint
                if not write_failed(e):
                    raise
                for partial in (tmp, self.out / ".final.tmp", self.out / ".merged.tmp"):
                    shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
                raise self._write_error("writing the final model", e) from None
        self.acc.wait_for_everyone()


def write_failed(e: BaseException) -> bool:
    """Whether an exception from a write is the disk's doing (``prefalign.train.setup.write_failed``)."""
    from prefalign.train import setup

    return setup.write_failed(e)


class Interrupted(Exception):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was written."""

    def __init__(self, step: int, sig: int, out: Path):
        self.step, self.sig = step, sig
        super().__init__(f"interrupted by signal {sig} after step {step}; checkpoint written to "
                         f"{out / 'checkpoints' / f'step-{step}'}. Resume with the same command plus --resume")


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop reads between steps (a second SIGINT stops at once)."""

    def __init__(self):
        self.signal = 0
        self.previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): keep default handling
                pass

    def _handle(self, sig, frame):
        if self.signal and sig == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = sig

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _mean_across(acc: Accelerator, sums: dict[str, float], shares: dict[str, float]) -> dict[str, float]:
    """Each metric's mean over the micro-batches (then processes) that reported it: a metric of a side with no rows
    in some micro-batch (KTO's logps/rejected without undesirable rows) is averaged over the others, and left out
    when none had it. One collective per step whatever the keys (processes may report different ones)."""
    full = shares["loss"]  # every micro-batch reports the loss
    local = {k: v if shares[k] == full else v / shares[k] for k, v in sums.items()}
    if acc.num_processes == 1:
        return local
    from accelerate.utils import gather_object

    total: dict[str, list[float]] = {}
    for part in gather_object([local]):
        for k, v in part.items():
            t = total.setdefault(k, [0.0, 0])
            t[0], t[1] = t[0] + v, t[1] + 1
    return {k: v / n for k, (v, n) in total.items()}
