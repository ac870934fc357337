"""Turning a config into the pieces the loop needs: the objective, the output folder, the reference kind."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

from prefalign import objectives
from prefalign.errors import UserError
from prefalign.train.config import RUN_CONTROL_FIELDS, TrainConfig, to_dict

FINISHED_MARKER = "run_complete.json"
LOCK_NAME = ".prefalign.lock"  # in output_dir while a run holds it (flock: freed by the kernel when a run dies)
INPUTS_KEY = "_inputs"  # run_config.json: fingerprints of the input files, compared on --resume


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
    for part in parts:
        problem = getattr(part, "batch_size_problem", lambda bs: None)(cfg.batch_size)
        if problem:
            what, todo = problem
            raise UserError("config", what, todo)
    kinds = {p.name: p.row_kind for p in parts}
    if len(set(kinds.values())) > 1:
        raise UserError("config", "objectives read different kinds of rows ("
                        + ", ".join(f"{n}: {k}" for n, k in kinds.items()) + "); one run reads one kind",
                        "combine objectives of the same row kind (`prefalign objectives` lists them)")
    try:
        return objectives.combine(parts, [float(w) for w in weights] if weights else None)
    except ValueError as e:
        raise UserError("config", str(e), "fix 'objective' / 'objective_weights'") from None


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
    if kind == "precompute" and objective.needs().live_reference:
        raise UserError("config", f"objective '{objective.name}' needs per-token reference log-probs, which "
                        "reference: precompute does not store", "use reference: copy or adapter")
    return kind


def result_fingerprint(cfg: TrainConfig) -> dict:
    """Config fields that change the result; a resumed run must match them."""
    return {k: v for k, v in to_dict(cfg).items() if k not in RUN_CONTROL_FIELDS}


# --- inputs: where they are, and their fingerprints ----------------------------------------------------------
def _strings(value, key: str = ""):
    """(dotted key, string) of every string inside objective_args (lists and nested mappings)."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)


def input_paths(cfg: TrainConfig, cache: bool = True) -> dict[str, Path]:
    """The run's inputs that exist on this machine, {label: resolved path}: model, tokenizer, data, eval_data,
    reference_cache_dir (``cache``) and every path named in objective_args (PoFT's aligned models, …)."""
    from prefalign.model import expand_path

    out: dict[str, Path] = {}

    def add(label: str, value) -> None:
        if isinstance(value, str) and value:
            p = Path(expand_path(value))
            if p.exists() and label not in out:
                out[label] = p.resolve()

    for name in ("model", "tokenizer", "data", "eval_data") + (("reference_cache_dir",) if cache else ()):
        add(name, getattr(cfg, name))
    for key, value in _strings(cfg.objective_args):
        if os.sep in value or value.startswith("."):  # path-like strings only (not kl_estimate: batch)
            add(f"objective_args {key}", value)
    return out


FULL_HASH_BYTES = 512 << 20  # files up to this size are hashed whole; bigger ones: head, tail and 64 samples
_WINDOW = 1 << 20


def file_digest(path: Path) -> str:
    """BLAKE2b of the file's bytes; above FULL_HASH_BYTES, of its first and last MiB (a safetensors header and
    more) and 64 evenly spaced MiB windows — cheap, and any real change of weights touches them."""
    h = hashlib.blake2b(digest_size=16)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(_WINDOW), b""):
                h.update(chunk)
        else:
            for k in range(66):
                f.seek(min(size - _WINDOW, k * (size - _WINDOW) // 65))
                h.update(f.read(_WINDOW))
    return h.hexdigest()


def _files(p: Path, recursive: bool) -> list[Path]:
    """The regular files of an input (a named pipe or device gives none: reading it would consume it)."""
    if p.is_file():
        return [p]
    if not p.is_dir():
        return []
    found = p.rglob("*") if recursive else p.iterdir()
    return sorted(f for f in found if f.is_file() and not any(part.startswith(".") for part in
                                                                f.relative_to(p).parts))


# A model or tokenizer folder's files that matter: weights, config, tokenizer, chat template, remote code.
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".jinja", ".py", ".tiktoken")


def input_fingerprints(cfg: TrainConfig) -> dict:
    """{label: {"path": …, "files": {file: [size, mtime_ns, digest]}}} of the local inputs (a model or tokenizer
    folder: its top-level MODEL_SUFFIXES files; data: the file, or every file of a folder). Digests are filled in
    by ``_digests`` (at the run's start) or computed on demand (on --resume, for a file whose mtime changed)."""
    out = {}
    for label, p in input_paths(cfg, cache=False).items():
        recursive = label in ("data", "eval_data")
        files = {}
        for f in _files(p, recursive):
            if not recursive and p.is_dir() and f.suffix not in MODEL_SUFFIXES:
                continue  # a README edited meanwhile changes nothing
            st = f.stat()
            files[str(f.relative_to(p)) if p.is_dir() else f.name] = [st.st_size, st.st_mtime_ns, None]
        out[label] = {"path": str(p), "files": files}
    return out


def _digests(fp: dict) -> dict:
    """Fill in the digests of ``input_fingerprints``' files."""
    for entry in fp.values():
        base = Path(entry["path"])
        for name, rec in entry["files"].items():
            rec[2] = file_digest(base / name if base.is_dir() else base)
    return fp


_WHAT_CHANGED = {"model": "the model's weights or files", "data": "the training data's content",
                 "eval_data": "the eval data's content", "tokenizer": "the tokenizer's files"}


def _changed_inputs(before: dict, cfg: TrainConfig) -> str | None:
    """What changed in the inputs since ``before`` (stored at the run's start), or None. A file whose size and
    mtime are unchanged is taken as unchanged; otherwise its digest decides (a copied folder resumes fine)."""
    now = input_fingerprints(cfg)
    for label in sorted(set(before) | set(now)):
        old, new = before.get(label, {}).get("files"), now.get(label, {}).get("files")
        if old is None or new is None:
            if new is None and old is not None:
                return f"{label} {before[label]['path']} is missing now"
            continue  # not a local input at the start (e.g. a hub name): nothing to compare
        differ = sorted(set(old) ^ set(new))
        base = Path(now[label]["path"])
        for name in sorted(set(old) & set(new)):
            (size, mtime, digest), (size2, mtime2, _) = old[name], new[name]
            if size != size2 or (mtime != mtime2 and digest != file_digest(base / name if base.is_dir() else base)):
                differ.append(name)
        if differ:
            shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
            return f"{_WHAT_CHANGED.get(label, label)} changed since the checkpoints were written ({shown})"
    return None


# --- the output folder ----------------------------------------------------------------------------------------
def _check_output_path(out: Path) -> None:
    """output_dir must be (or become) a writable folder: not a file, not under a file, not read-only."""
    path = Path(os.path.abspath(out))
    if path.exists() and not path.is_dir():
        raise UserError(str(out), "output_dir is a file, not a folder", "choose a folder path for output_dir")
    anc = path
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(str(out), f"output_dir lies under {anc}, which is a file", "choose another output_dir")
    try:
        read_only = bool(os.statvfs(anc).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only or not os.access(anc, os.W_OK | os.X_OK):
        why = "is on a read-only filesystem" if read_only else "is not writable"
        raise UserError(str(out), f"cannot write the output folder: {anc} {why}", "choose a writable output_dir")


def _check_apart_from_inputs(cfg: TrainConfig, out: Path) -> None:
    """output_dir must not be, contain or lie inside an input: --overwrite (or a checkpoint) would destroy it."""
    o = Path(os.path.abspath(out)).resolve()
    for label, p in input_paths(cfg).items():
        how = ("is" if o == p else "contains" if p.is_relative_to(o) else "lies inside" if o.is_relative_to(p)
               else None)
        if how:
            raise UserError(str(out), f"output_dir {how} the {label} ({p})",
                            "choose an output_dir apart from the inputs (it is cleared by --overwrite and "
                            "written during training)")
    if cfg.reference_cache_dir:
        cache = Path(os.path.abspath(cfg.reference_cache_dir))
        if cache.exists() and not cache.is_dir():
            raise UserError(cfg.reference_cache_dir, "reference_cache_dir is a file, not a folder",
                            "choose a folder path for reference_cache_dir")


def _contents(out: Path) -> list[Path]:
    """What is in the output folder besides a lock file."""
    return [p for p in out.iterdir() if p.name != LOCK_NAME] if out.is_dir() else []


def read_run_config(out: Path) -> dict:
    """The saved run config (``run_config.json``; when it is missing, the result fields of ``config.yaml``)."""
    saved = out / "run_config.json"
    if saved.is_file():
        try:
            before = json.loads(saved.read_text(encoding="utf-8"))
            if not isinstance(before, dict):
                raise ValueError("not a mapping")
            return before
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(str(saved), f"run_config.json is damaged ({str(e).splitlines()[0][:80]})",
                            "delete it and --resume again: the config is then checked against config.yaml "
                            "(or start over with --overwrite)") from None
    if (out / "config.yaml").is_file():
        from prefalign.train.config import from_dict, load_yaml

        where = str(out / "config.yaml")
        values = {k: v for k, v in load_yaml(where).items() if k not in ("resume", "overwrite")}
        return result_fingerprint(from_dict(values, where))
    raise UserError(str(out), "nothing to resume: no checkpoint and no run_config.json here", "run without "
                    "--resume first")


def check_output_dir(cfg: TrainConfig, inputs: bool = True) -> Path:
    """Refuse an output_dir that is an input, a file or read-only; refuse to clobber a run; on --resume require
    the same config and unchanged inputs (``inputs``: compare their fingerprints). Creates nothing."""
    out = Path(cfg.output_dir)
    _check_output_path(out)
    _check_apart_from_inputs(cfg, out)
    if cfg.resume:
        if (out / FINISHED_MARKER).exists():
            raise UserError(str(out), "this run is finished (run_complete.json); --resume has nothing to do and "
                            "leaves it as it is", "use its outputs, or drop --resume and pass --overwrite to "
                            "train it again")
        if not out.is_dir():
            raise UserError(str(out), "nothing to resume (no such folder)", "run without --resume first")
        before = read_run_config(out)
        stored = before.pop(INPUTS_KEY, None)
        now = result_fingerprint(cfg)
        diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if diff:
            raise UserError(str(out), f"--resume with a different config (differs in: {', '.join(diff)})",
                            "resume with the same config, or start a new output_dir")
        if not (out / "checkpoints").is_dir():
            raise UserError(str(out), "the run's checkpoints/ folder is missing (deleted or moved?), so --resume "
                            "would start over", "put checkpoints/ back, or train again with --overwrite")
        changed = _changed_inputs(stored, cfg) if inputs and isinstance(stored, dict) else None
        if changed:
            raise UserError(str(out), f"--resume refused: {changed}", "resume with the inputs the run started "
                            "with, or train again with --overwrite")
        return out
    if (out / FINISHED_MARKER).exists() and not cfg.overwrite:
        raise UserError(str(out), "output folder already holds a finished run",
                        "choose another output_dir or pass --overwrite")
    if _contents(out) and not cfg.overwrite:
        raise UserError(str(out), "output folder is not empty", "pass --resume to continue it, or --overwrite")
    return out


def fresh_output_dir(out: Path, cfg: TrainConfig) -> None:
    """A new run: the folder emptied (the lock file kept), ``checkpoints/`` made and ``run_config.json`` written
    with the inputs' fingerprints. A resumed run keeps both (``run_config.json`` rebuilt only when missing)."""
    if not cfg.resume:
        clear_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    saved = out / "run_config.json"
    if cfg.resume and saved.is_file():
        return
    record = {**result_fingerprint(cfg), INPUTS_KEY: _digests(input_fingerprints(cfg))}
    write_atomic(saved, json.dumps(record, indent=1))


def clear_output_dir(out: Path) -> None:
    """Remove everything in the output folder but the lock file (a new run; or one whose first files did not fit
    on the disk: such a folder is no run, and is left empty, as a fresh run can start in it again)."""
    for p in _contents(out):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """``text`` to ``path`` through ``.<name>.tmp`` and a rename: a reader (or a full disk) never leaves half a
    file, and the temp file is removed when the write fails."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- writes that fail: a full disk, a read-only or failing filesystem ---------------------------------------
def write_failed(e: BaseException) -> bool:
    """Whether an exception from a write is the disk's doing (full, read-only, I/O error): OSError itself, or the
    RuntimeError / SafetensorError that torch.save and safetensors wrap ENOSPC in."""
    if isinstance(e, OSError):
        return True
    msg = str(e).lower()
    # torch.save's zip writer reports a short write as "unexpected pos A vs B" (inline_container.cc).
    return any(k in msg for k in ("no space left", "file write failed", "storagefull", "errno 28", "i/o error",
                                  "read-only file system", "ioerror", "unexpected pos", "inline_container"))


def write_reason(e: BaseException, where: Path | str) -> str:
    """Why a write failed, in a few words: the system's reason (``No space left on device``; the first line of
    torch's or safetensors' message otherwise), led by ``disk full: N KiB free`` when the filesystem of ``where``
    (or of its nearest existing parent) has under 16 MiB left, which torch's own message does not say."""
    msg = str(e)
    why = getattr(e, "strerror", None) or ("No space left on device" if "no space left" in msg.lower() else
                                           (msg.splitlines() or [type(e).__name__])[0][:120])
    anc = Path(os.path.abspath(where))
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    try:
        free = shutil.disk_usage(anc).free
    except OSError:
        return why
    return f"disk full: {free // 1024} KiB free; {why}" if free < 16 * 2**20 else why


# --- one run per output folder --------------------------------------------------------------------------------
class OutputLock:
    """An exclusive ``flock`` on ``<output_dir>/.prefalign.lock`` for the whole run, holding the owner's PID.

    The kernel frees a flock when its process dies (``kill -9`` included), so a stale lock file is simply taken
    over. The file is removed on release; a run that locked a file since removed tries again."""

    def __init__(self, out: Path):
        self.out, self.path, self.fd = out, out / LOCK_NAME, None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        os.close(fd)
                        raise
                    pid = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise UserError(str(self.out), f"another prefalign run (PID {pid}) is using this output "
                                    "folder", "wait for it to end, or choose another output_dir") from None
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)  # the file was removed by its previous owner between open and flock
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError as e:
                # A full disk: the flock holds all the same (a second run names no PID), and the run's first
                # real write says that the disk is full and what is intact.
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    os.close(fd)
                    raise
            self.fd = fd
        except OSError as e:
            raise UserError(str(self.out), f"cannot create the output folder's lock file ({e.strerror or e})",
                            "choose a writable output_dir") from None

    def probe(self) -> None:
        """Fail early (before data and models are read) when another run holds the lock; takes nothing."""
        try:
            import fcntl

            fd = os.open(self.path, os.O_RDONLY)
        except (ImportError, OSError):  # no lock file: nobody holds it
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pid = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            raise UserError(str(self.out), f"another prefalign run (PID {pid}) is using this output folder",
                            "wait for it to end, or choose another output_dir") from None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def replace_config(cfg: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(cfg, **changes)
