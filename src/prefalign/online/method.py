"""Online RL as a method of the engine (``method: online``): sample → score → update, on the engine's loop.

Each rollout r (optimizer steps r·μ … r·μ + μ − 1, μ = ``num_iterations``) takes the prompts of stream position r
(the engine's seeded order), and on each process:

1. samples G completions per prompt from the current policy, the prompt prefilled once per group
   (``online/rollout.py``), seeded by (seed, r, process) — so ``--resume`` re-draws exactly what a straight run drew;
2. scores the decoded completions with the configured rewards (``online/rewards.py``);
3. computes, without gradient, what the algorithm needs from the rollout: the sampling policy's per-token log-probs
   (μ > 1, or a KL term), the reference's, the value head's — through the training log-prob path, on the very ids
   that were sampled (never re-tokenised), at the sampling temperature;
4. asks the algorithm for advantages over the whole rollout (``ro.reduce`` sums over processes for batch statistics).

Each update then splits the rollout into micro-batches of whole groups (``batch_size`` prompts × G), prompt shared
in the batch layout (``layout: shared_prefix``), and weights each by its share of the *global* batch's units (tokens
or sequences, per ``loss_type``; counted once per rollout over every process), so the gradient is the same whatever
the accumulation × process split (``online/aggregate.py``). The rollout buffer is checkpointed with the step, so a
run killed between the μ updates of one rollout resumes on the same samples.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from prefalign.data.batch import collate_groups
from prefalign.errors import UserError
from prefalign.online import algos, hooks
from prefalign.online import features as _features  # noqa: F401  (registers entropy / value reducers)
from prefalign.online.diagnostics import rollout_metrics, sampling_metrics
from prefalign.train.faults import maybe_fault
from prefalign.train.method import Method, MicroBatch, register


def PairExampleOf(row: int, prompt: list[int], ids: list[int]):
    from prefalign.data.types import PairExample

    return PairExample(row, prompt, ids, ids)


PER_TOKEN = ("old_logp", "ref_logp", "values", "returns")  # per-token [N, T] buffer entries besides the ids


@dataclass
class Chunk:
    """One micro-batch: groups [g0, g1) of the rollout."""

    batch: object  # SeqBatch of the groups' sequences
    n0: int  # first sequence
    n1: int  # one past the last

    def __getattr__(self, name):  # the memory estimate reads it as the SeqBatch it holds
        return getattr(self.__dict__["batch"], name)


@register
class Online(Method):
    name = "online"
    progress_keys = ("reward",)

    def __init__(self, cfg):
        self.cfg = cfg
        self.algo = build_algorithm(cfg)
        if self.algo.not_trainable:
            raise UserError("config", f"online algorithm '{self.algo.name}' cannot be trained by the engine yet: "
                            f"{self.algo.not_trainable}", "use one of: " + ", ".join(algos.names()))
        self.needs = self.algo.needs()
        if cfg.reward is None:
            raise UserError("config", "method: online needs a reward", "set reward: vader, module:function, a "
                            "reward-model folder or a verifiable reward such as math")
        if self.algo.needs().reference and cfg.reference in ("none", "precompute"):
            secondary = hooks.role(self.algo) == "secondary"
            what = "its secondary iterate" if secondary else f"a KL term (beta {cfg.beta})"
            raise UserError("config", f"online RL with {what} needs a live reference, not reference: "
                            f"{cfg.reference}", "use reference: auto, copy or adapter" + ("" if secondary else
                                                                                          ", or set beta: 0"))
        self.pairs = None
        if self.needs.pairs:  # online DPO & co: a pairwise objective on pairs picked from each rollout
            from prefalign.online.pairs import PairTrainer

            self.pairs = PairTrainer(cfg, self.algo)
        self.use_reference = self.needs.reference or (self.pairs is not None and self.pairs.needs.reference)
        self.mu = cfg.num_iterations
        self.updates_per_batch = self.mu  # the engine runs μ optimizer steps per batch of prompts
        self.buffer: dict[str, torch.Tensor] | None = None
        self.buffer_id = -1
        self.warned: set[str] = set()

    # --- setup ---------------------------------------------------------------------------------------------------
    def setup(self, engine) -> None:
        from prefalign.online.rewards import Rewards
        from prefalign.reference import Reference

        self.engine, cfg = engine, self.cfg
        if engine.acc.is_main_process:
            import dataclasses

            hp = ", ".join(f"{f.name}={getattr(self.algo, f.name)!r}" for f in dataclasses.fields(self.algo))
            engine.log(f"online: {self.algo.name} ({hp}); {cfg.num_generations} completions per prompt, "
                       f"≤ {cfg.max_new_tokens} new tokens, temperature {cfg.temperature:g}")
        self.load_examples("prompts", {}, {"max_new_tokens": cfg.max_new_tokens})
        model = self.build_policy()
        kind = "none"
        if self.use_reference:
            kind = cfg.reference if cfg.reference in ("copy", "adapter") else ("adapter" if cfg.lora else "copy")
        self.model = model
        self.reference = hooks.build_reference(self) or Reference(kind, model, cfg.log_prob_chunk_size)
        if self.needs.value_head:
            from prefalign.online.features import ValueHead

            self.extra_module = ValueHead(model.config.hidden_size).to(engine.acc.device)
        self.rewards = Rewards(cfg.reward, cfg.reward_weights, device=str(engine.acc.device))
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        from prefalign.decode.generate import eos_ids

        self.eos = eos_ids(self.tokenizer, model)
        if hasattr(self.algo, "setup"):  # hooks.py: the algorithm's running state (SEA's ensemble)
            self.algo.setup(self)

    # --- the rollout ---------------------------------------------------------------------------------------------
    def _prompts_of(self, r: int) -> list[int]:
        from prefalign.train.engine import stream_indices

        return stream_indices(r, self.engine.global_batch, len(self.examples), self.cfg.seed, self.cfg.shuffle)

    def _generator(self, r: int, rank: int) -> torch.Generator:
        seed = (self.cfg.seed * 1_000_003 + r) * 1009 + rank  # deterministic in (seed, rollout, process)
        return torch.Generator(device=self.engine.acc.device).manual_seed(seed % 2**63)

    @torch.no_grad()
    def _rollout(self, r: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        from prefalign.online.rollout import SamplingOptions, generate_groups

        cfg, G = self.cfg, self.cfg.num_generations
        idx = self._prompts_of(r)
        per = len(idx) // world
        mine = idx[rank * per : (rank + 1) * per]
        examples = [self.examples[i] for i in mine]
        # Every prompt of this process in one generation batch: what is sampled then does not depend on how the
        # update splits the rollout (batch_size × accumulation), so neither does the gradient.
        opts = SamplingOptions(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                               top_k=cfg.top_k, kv_cache=cfg.rollout_kv_cache)
        samples = self._sample(lambda lm: generate_groups(lm, [e.prompt_ids for e in examples], G, opts, self.eos,
                                                          self.pad, self._generator(r, rank),
                                                          all_done=self._all_done()))
        maybe_fault("rollout", r * self.mu)  # tests: kill -9 between sampling and the update
        texts = samples.texts(self.tokenizer)
        from prefalign.data.kinds.prompts import prompt_text

        prompts = [prompt_text(e.prompt) for e in examples for _ in range(G)]
        names = sorted({k for e in examples for k in e.columns})
        columns = {k: [e.columns.get(k) for e in examples for _ in range(G)] for k in names}
        rewards, parts = self.rewards(prompts, texts, columns)
        buf = {"ids": samples.padded_ids(self.pad), "mask": samples.completion_mask(),
               "rewards": rewards.float(), "group": samples.group(),
               "truncated": torch.tensor(samples.truncated, dtype=torch.bool), "logq": samples.logq_tensor(),
               "prompt_index": torch.tensor(mine, dtype=torch.long)}
        buf.update({f"reward/{k}": v.float() for k, v in parts.items()})
        feats = self._score_rollout(buf, examples)
        if hasattr(self.algo, "judge"):  # hooks.py: the scores trained on (ONPO's win rates); rewards stay logged
            buf["scores"] = self.algo.judge(buf["rewards"], buf["group"]).float()
        ro = hooks.RolloutPlus(rewards=buf.get("scores", buf["rewards"]), group=buf["group"], mask=buf["mask"],
                               old_logp=buf.get("old_logp", buf["logq"]), ref_logp=buf.get("ref_logp"),
                               values=buf.get("values"), truncated=buf["truncated"], reduce=self._reduce,
                               features=feats, index=r, seed=cfg.seed, rank=rank, world=world)
        out = self.algo.advantages(ro)
        buf["advantages"] = out.pop("advantages").float()
        if "returns" in out:
            buf["returns"] = out.pop("returns").float()
        buf.update({f"extra/{k}": v for k, v in out.items() if isinstance(v, torch.Tensor)})
        self.metrics = rollout_metrics(buf, parts, G, self._reduce, self.warn)
        self.metrics.update({k: v for k, v in out.items() if isinstance(v, float)})  # the algorithm's own
        self._log_samples(r, examples, texts, buf)
        return buf

    def _sample(self, fn):
        """Run sampling ``fn(model)`` on the policy itself — except under FSDP2, where it runs inside the sharded
        root's forward (the decoder layers gather their shards in their own hooks, the root group — embeddings,
        final norm, LM head — stays gathered for the whole generation). DDP's wrapper is bypassed: it would
        broadcast buffers at every forward, a collective the processes' different decoding lengths would unpair."""
        if self.engine.sharding != "fsdp":
            return fn(self.model)
        return self.engine.scorer(None, run=lambda lm: fn(self.model))

    def _all_done(self):
        """Under FSDP every process must run the same forward passes: stop when all are done."""
        if self.engine.sharding != "fsdp":
            return None

        def all_done(local: bool) -> bool:
            flag = torch.tensor([0.0 if local else 1.0], device=self.engine.acc.device)
            torch.distributed.all_reduce(flag)
            return bool(flag.item() == 0)

        return all_done

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.engine.acc.num_processes == 1:
            return t
        t = t.to(self.engine.acc.device).clone()
        torch.distributed.all_reduce(t)
        return t.cpu()

    def _score_rollout(self, buf: dict, examples) -> torch.Tensor | None:
        """The per-token quantities of the sampled ids at rollout time, micro-batch by micro-batch (no gradient);
        returns the last-token hidden states [N, H] when the algorithm ``wants_features`` (hooks.py), else None."""
        want_old = self.mu > 1 or self.needs.old_logp
        want_feat = getattr(self.algo, "wants_features", False)
        if not (want_old or self.needs.reference or self.needs.value_head or want_feat):
            return None
        n, width = buf["ids"].shape
        out = {k: torch.zeros(n, width) for k in PER_TOKEN[:3]}
        last = None
        need_policy = want_old or self.needs.value_head or want_feat  # GRPO with a KL: the reference pass only
        for chunk in self._chunks(buf, examples):
            w = chunk.batch.scoring.width
            if self.needs.reference:
                ref = self.reference.logps(chunk.batch, self.model, token_level=True, score=self._ref_score_plain,
                                           temperature=self.cfg.temperature)
                out["ref_logp"][chunk.n0 : chunk.n1, :w] = ref.token_logps.float().cpu()
            if not need_policy:
                continue
            feats, ctx = self._value_request()
            feats = (*feats, "hidden") if want_feat else feats
            pol = self.engine.score(chunk.batch, chunk_size=self.cfg.log_prob_chunk_size,
                                    temperature=self.cfg.temperature, features=feats, context=ctx)
            if want_feat:
                h = hooks.last_token(pol.features["hidden"], pol.mask).float().cpu()  # [n, H]
                last = h.new_zeros(n, h.shape[1]) if last is None else last
                last[chunk.n0 : chunk.n1] = h
            out["old_logp"][chunk.n0 : chunk.n1, :w] = pol.token_logps.float().cpu()
            if "value" in pol.features:
                out["values"][chunk.n0 : chunk.n1, :w] = pol.features["value"].float().cpu()
        if want_old:
            buf["old_logp"] = out["old_logp"]
        if self.needs.reference:
            buf["ref_logp"] = out["ref_logp"]
        if self.needs.value_head:
            buf["values"] = out["values"]
        return last

    def _ref_score_plain(self, batch, **kw):
        return self.engine.score(batch, **kw)

    def _ref_score(self, batch, **kw):
        return self.engine.score(batch, temperature=self.cfg.temperature, **kw)

    def _value_request(self):
        if not self.needs.value_head:
            return (), None
        return ("value",), {"value_head": self.extra_module.params()}

    # --- micro-batches -------------------------------------------------------------------------------------------
    def _chunks(self, buf: dict, examples=None) -> list[Chunk]:
        G, bs = self.cfg.num_generations, self.cfg.batch_size
        prompts = [self.examples[i].prompt_ids for i in buf["prompt_index"].tolist()]
        lengths = buf["mask"].sum(-1).tolist()
        ids = buf["ids"].tolist()
        out = []
        for g0 in range(0, len(prompts), bs):
            g1 = min(len(prompts), g0 + bs)
            comps = [ids[n][: lengths[n]] for n in range(g0 * G, g1 * G)]
            batch = collate_groups(prompts[g0:g1], comps, G, self.pad, self.cfg.layout, self.cfg.pack,
                                   self._per_row(prompts[g0:g1], comps))
            out.append(Chunk(batch.to(self.engine.acc.device), g0 * G, g1 * G))
        return out

    def _per_row(self, prompts, comps) -> int:
        """Completions per row of the shared_prefix layout (``online.rows``): the config's, or the cheapest."""
        from prefalign.online.rows import attention_ratio, completions_per_row

        if self.cfg.completions_per_row:
            return self.cfg.completions_per_row
        self._rho = getattr(self, "_rho", None) or attention_ratio(self.model)
        return completions_per_row([len(p) for p in prompts], [len(c) for c in comps], self.cfg.num_generations,
                                   self._rho)

    def micro_batches(self, step, idx, rank, world):
        from prefalign.online.aggregate import units

        r = step // self.mu
        if self.buffer_id != r or self.buffer is None:
            self.buffer, self.buffer_id = self._rollout(r, rank, world), r
        buf = self.buffer
        if self.pairs is not None:
            return self._pair_micro_batches(buf)
        chunks = self._chunks(buf)
        mask = buf.get("extra/loss_mask", buf["mask"])  # an algorithm may drop sequences (truncated ones)
        local = [units(mask[c.n0 : c.n1], self.algo.loss_type) for c in chunks]
        total = float(self._reduce(torch.tensor([float(sum(local))], dtype=torch.float64))[0])
        own = float(sum(local))
        rows = buf["prompt_index"].tolist()
        G = self.cfg.num_generations
        return [MicroBatch(c, rows[c.n0 // G : c.n1 // G], u / max(total, 1e-12), u / max(own, 1e-12))
                for c, u in zip(chunks, local)]

    def _pair_micro_batches(self, buf: dict) -> list[MicroBatch]:
        from prefalign.online.pairs import pair_counts

        prompts = [self.examples[i].prompt_ids for i in buf["prompt_index"].tolist()]
        rows = [self.examples[i].row for i in buf["prompt_index"].tolist()]
        pairs = self.pairs.examples(buf, prompts, rows)
        local, total = pair_counts(buf, self._reduce)
        if total == 0:
            self.warn("no_pairs", "a rollout gave no pair (every group's rewards tie): that step changes nothing")
        if not pairs:  # this process has none: one zero-weight pair keeps the step's collectives in line
            ids = buf["ids"][0][: int(buf["mask"][0].sum())].tolist()
            pairs, weight = [PairExampleOf(rows[0], prompts[0], ids)], 0.0
        else:
            weight = None
        bs, dev = self.cfg.batch_size, self.engine.acc.device
        out = []
        for s in range(0, len(pairs), bs):
            chunk = pairs[s : s + bs]
            batch = self.pairs.batch(chunk, self.pad, self.cfg.layout, self.cfg.pack, dev)
            w = len(chunk) / total if weight is None else weight
            out.append(MicroBatch(batch, [e.row for e in chunk], w, len(chunk) / max(len(pairs), 1)))
        return out

    def longest_micro_batch(self) -> MicroBatch:
        """The memory probe's batch: the longest prompts with completions of max_new_tokens (the worst case)."""
        G, bs = self.cfg.num_generations, self.cfg.batch_size
        order = sorted(range(len(self.examples)), key=lambda i: -len(self.examples[i].prompt_ids))[:bs]
        prompts = [self.examples[i].prompt_ids for i in order]
        if self.pairs is not None:
            worst = [PairExampleOf(0, p, [self.pad] * self.cfg.max_new_tokens) for p in prompts]
            return MicroBatch(self.pairs.batch(worst, self.pad, self.cfg.layout, self.cfg.pack,
                                               self.engine.acc.device))
        comps = [[self.pad] * self.cfg.max_new_tokens for _ in range(len(prompts) * G)]
        batch = collate_groups(prompts, comps, G, self.pad, self.cfg.layout, self.cfg.pack,
                               self._per_row(prompts, comps))
        n, T = len(comps), self.cfg.max_new_tokens
        self._probe_buffer = {"mask": torch.ones(n, T, dtype=torch.bool), "rewards": torch.zeros(n),
                              "advantages": torch.zeros(n), "group": torch.arange(n) // G,
                              **{k: torch.zeros(n, T) for k in PER_TOKEN}}
        return MicroBatch(Chunk(batch.to(self.engine.acc.device), 0, n))

    # --- the loss ------------------------------------------------------------------------------------------------
    def loss(self, mb: MicroBatch, step: int):
        from prefalign.online.aggregate import aggregate

        c = mb.data
        if self.pairs is not None:
            loss, metrics = self.pairs.loss(c, self.model, self.reference, self.cfg.log_prob_chunk_size,
                                            self._ref_score_plain)
            return loss, {**getattr(self, "metrics", {}), **metrics}
        buf = self.buffer if self.buffer is not None and c.n1 <= len(self.buffer["mask"]) else self._probe_buffer
        feats, ctx = self._value_request()
        feats = (*feats, "entropy" if getattr(self.algo, "entropy_coef", 0.0) else "entropy_stat")
        pol = self.engine.score(c.batch, chunk_size=self.cfg.log_prob_chunk_size, temperature=self.cfg.temperature,
                                features=feats, context=ctx)
        logp = pol.token_logps  # [n, w]
        w = logp.shape[1]
        sl = lambda k: None if k not in buf else buf[k][c.n0 : c.n1, :w].to(logp.device)  # noqa: E731
        adv = buf["advantages"][c.n0 : c.n1]
        adv = (adv[:, :w] if adv.dim() == 2 else adv).to(logp.device)
        old = sl("old_logp") if self.mu > 1 else logp.detach()
        ent = pol.features.get("entropy", pol.features.get("entropy_stat"))
        extra = {k[6:]: v[c.n0 : c.n1] for k, v in buf.items() if k.startswith("extra/")}
        b = algos.PolicyBatch(logp=logp, old_logp=old, mask=pol.mask, advantages=adv,
                              group=buf["group"][c.n0 : c.n1].to(logp.device),
                              rewards=buf.get("scores", buf["rewards"])[c.n0 : c.n1].to(logp.device),
                              ref_logp=sl("ref_logp"),
                              values=pol.features.get("value"), old_values=sl("values"), returns=sl("returns"),
                              entropy=ent, extra=extra)
        per_token, metrics = self.algo.loss(b)
        mask = pol.mask if "loss_mask" not in extra else extra["loss_mask"][:, :w].to(pol.mask.device).bool()
        total, n_units = aggregate(per_token, mask, self.algo.loss_type, self.cfg.max_new_tokens)
        loss = total / max(n_units, 1e-12)  # this micro-batch's mean; the engine weights it by its global share
        if ent is not None:
            metrics["entropy"] = float((ent.detach() * pol.mask).sum() / pol.mask.sum().clamp(min=1))
        if "old_logp" not in buf and step % self.mu == 0:  # the rollout skipped the policy pass: read them here
            metrics.update(sampling_metrics(logp.detach(), sl("logq"), sl("ref_logp"), pol.mask))
        return loss, {**getattr(self, "metrics", {}), **metrics}

    # --- eval, state, logs ---------------------------------------------------------------------------------------
    @property
    def has_eval(self) -> bool:
        return bool(self.eval_examples)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean reward of one sampled completion per eval prompt (a fixed seed, so evaluations compare)."""
        from prefalign.data.kinds.prompts import prompt_text
        from prefalign.online.rollout import SamplingOptions, generate_groups

        cfg = self.cfg
        opts = SamplingOptions(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                               top_k=cfg.top_k, batch_prompts=cfg.batch_size, kv_cache=cfg.rollout_kv_cache)
        ex = self.eval_examples
        gen = torch.Generator(device=self.engine.acc.device).manual_seed(cfg.seed + 7919)
        samples = self._sample(lambda lm: generate_groups(lm, [e.prompt_ids for e in ex], 1, opts, self.eos,
                                                          self.pad, gen, all_done=self._all_done()))
        names = sorted({k for e in ex for k in e.columns})
        total, _ = self.rewards([prompt_text(e.prompt) for e in ex], samples.texts(self.tokenizer),
                                {k: [e.columns.get(k) for e in ex] for k in names})
        ok = ~torch.isnan(total)
        lengths = samples.completion_mask().sum(-1).float()
        return {"reward": float(total[ok].mean()) if ok.any() else float("nan"),
                "completion_length": float(lengths.mean()), "loss": -float(total[ok].mean()) if ok.any() else 0.0}

    def state(self) -> dict:
        return {"buffer_id": self.buffer_id, **({"algorithm": self.algo.state()} if hasattr(self.algo, "state")
                                                else {})}

    def load_state(self, state: dict) -> None:
        self.buffer_id = state.get("buffer_id", -1)
        if "algorithm" in state and hasattr(self.algo, "load_state"):
            self.algo.load_state(state["algorithm"])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The rollout buffer, checkpointed so a resume between the μ updates of a rollout uses its samples; the
        algorithm's tensor state and a secondary reference's (hooks.py)."""
        out = hooks.collect_tensors(self)
        if self.buffer is None or self.mu == 1:
            return out
        return {**out, **{k: v.contiguous() for k, v in self.buffer.items()}}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = hooks.restore_tensors(self, tensors)
        self.buffer = dict(tensors) if tensors else None
        if self.buffer is None:
            self.buffer_id = -1

    def after_step(self, step: int) -> None:
        """The engine's call after each optimizer step: the algorithm's own update (ONPO's secondary iterate)."""
        if hasattr(self.algo, "after_update"):
            self.algo.after_update(self, step)

    def snapshot(self):
        return self.state(), self.buffer

    def restore(self, snap) -> None:
        state, self.buffer = snap
        self.load_state(state)

    def summary(self) -> dict:
        return {"algorithm": self.algo.name, "num_generations": self.cfg.num_generations,
                "reference": self.reference.kind}

    def warn(self, key: str, message: str) -> None:
        if key not in self.warned and self.engine.acc.is_main_process:
            self.warned.add(key)
            self.engine.log(f"warning: {message}")

    def _log_samples(self, r: int, examples, texts: list[str], buf: dict) -> None:
        """Every ``sample_log_steps`` rollouts, the main process's samples with their rewards → samples.jsonl."""
        every = self.cfg.sample_log_steps
        if not every or r % every or not self.engine.acc.is_main_process:
            return
        G = self.cfg.num_generations
        adv = buf["advantages"]
        lines = []
        for n, text in enumerate(texts):
            e = examples[n // G]
            row = {"step": r * self.mu, "row": e.row, "prompt": e.prompt, "completion": text,
                   "reward": _num(buf["rewards"][n]),
                   **{k[7:]: _num(v[n]) for k, v in buf.items() if k.startswith("reward/")},
                   "advantage": _num(adv[n] if adv.dim() == 1 else (adv[n] * buf["mask"][n]).sum()),
                   "tokens": int(buf["mask"][n].sum()), "truncated": bool(buf["truncated"][n])}
            lines.append(json.dumps(row, ensure_ascii=False))
        try:
            with open(self.engine.out / "samples.jsonl", "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        except OSError as e:  # a sample table is not worth stopping a run for; the next checkpoint will say
            self.warn("samples", f"could not write samples.jsonl ({e.strerror})")


def _num(v) -> float | None:
    x = float(v)
    return None if math.isnan(x) else x


def build_algorithm(cfg):
    """The algorithm ``cfg.objective`` with ``objective_args`` (flat, or under its name) and the flat ``beta``."""
    import dataclasses

    name = cfg.objective
    if not isinstance(name, str):
        raise UserError("config", "method: online trains one algorithm; objective is a list",
                        f"name one of: {', '.join(algos.names())}")
    args = dict(cfg.objective_args.get(name, cfg.objective_args)
                if isinstance(cfg.objective_args.get(name), dict) else cfg.objective_args)
    try:
        cls_fields = {f.name for f in dataclasses.fields(algos.get_class(name))}
        if "beta" in cls_fields and "beta" not in args:
            args["beta"] = cfg.beta
        return algos.get(name, **args)
    except ValueError as e:
        raise UserError("config", str(e), f"online algorithms: {', '.join(algos.names())}") from None
