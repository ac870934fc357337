"""Aggregation invariance: the gradient of an optimiser step does not depend on how its batch is split.

Splits of 8 sequences with unequal completion lengths: 1 micro-batch × 8; 2 accumulation steps × 4; 2 processes
× 4 (DDP: each process back-propagates P·loss_sum/U and the gradients are averaged); 2 processes × 2 accumulation
steps × 2. Units (tokens or sequences) are summed over the whole window before any backward, as the method does.
Processes are simulated in one address space; ``ThreadAllReduce`` runs real concurrent "ranks" for the batch
statistics of the advantage functions.
"""

from __future__ import annotations

import threading

import pytest
import torch

from prefalign.online.advantages import group_advantages, whiten
from prefalign.online.aggregate import LOSS_TYPES, aggregate, units
from prefalign.online.algos.base import PolicyBatch, Rollout, get

D = torch.float64
N, T, L_MAX = 8, 7, 10
LENGTHS = torch.tensor([7, 1, 3, 5, 2, 7, 4, 6])
MASK = torch.arange(T)[None, :] < LENGTHS[:, None]  # [N, T]
SPLITS = {  # split name → processes, each a list of micro-batches (row ranges)
    "1x8": [[range(0, 8)]],
    "2acc x4": [[range(0, 4), range(4, 8)]],
    "2proc x4": [[range(0, 4)], [range(4, 8)]],
    "2proc x2acc x2": [[range(0, 2), range(2, 4)], [range(4, 6), range(6, 8)]],
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is many times faster than two contending ones on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _per_token(w, idx):  # any differentiable per-token loss of rows idx; nonlinear so the weights matter
    c = torch.linspace(-1, 1, N * T, dtype=D).view(N, T)[idx]
    return (w * c).sin() + 0.5 * w.square()


def _step_grad(loss_fn, split, loss_type, unit_mask=MASK):
    """The gradient a whole optimiser step accumulates: Σ_micro ∇(P·loss_sum/U), averaged over P processes."""
    w = torch.randn(N, T, dtype=D, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    procs = SPLITS[split]
    global_units = sum(units(unit_mask[list(rows)], loss_type) for proc in procs for rows in proc)  # all-reduced
    per_process = []
    for proc in procs:
        grad = torch.zeros_like(w)
        for rows in proc:
            idx = torch.tensor(list(rows))
            loss_sum, _ = loss_fn(w[idx], idx)
            grad += torch.autograd.grad(len(procs) * loss_sum / global_units, w)[0]
        per_process.append(grad)
    return torch.stack(per_process).mean(0)  # DDP's gradient all-reduce is a mean


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_aggregate_gradient_is_split_invariant(loss_type):
    def loss_fn(w_rows, idx):
        return aggregate(_per_token(w_rows, idx), MASK[idx], loss_type, max_completion_length=L_MAX)

    ref = _step_grad(loss_fn, "1x8", loss_type)
    assert ref.abs().sum() > 0 and torch.all(ref[~MASK] == 0)
    for split in SPLITS:
        torch.testing.assert_close(_step_grad(loss_fn, split, loss_type), ref, rtol=0, atol=1e-12)


def test_aggregate_values_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    expect = {"grpo": (2.0 + 4.0, 2), "dr_grpo": (10.0 / 5, 2), "dapo": (10.0, 4), "bnpo": (10.0, 4),
              "sequence": (10.0, 2)}
    for loss_type, (loss_sum, n_units) in expect.items():
        s, u = aggregate(per_token, mask, loss_type, max_completion_length=5)
        assert (float(s), u) == (loss_sum, n_units), loss_type
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate(per_token, mask, "dr_grpo")


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo"])
def test_naive_per_micro_batch_token_mean_changes_the_gradient(loss_type):
    """The trl#5619 bug class: each micro-batch divided by its *own* token count, then ÷ accumulation steps.

    Micro-batches 0:4 and 4:8 hold 16 and 19 tokens, so the naive mean weights a token of the first by 1/32 and of
    the second by 1/38, where the global token mean weights every token by 1/35.
    """
    def correct(w_rows, idx):
        return aggregate(_per_token(w_rows, idx), MASK[idx], loss_type)

    def naive(ga):
        def fn(w_rows, idx):  # (Σ/u_local)/GA, written in units of the global count, which _step_grad divides by
            s, u = aggregate(_per_token(w_rows, idx), MASK[idx], loss_type)
            return s / u * float(MASK.sum()) / ga, u
        return fn

    good = _step_grad(correct, "2acc x4", loss_type)
    bad = _step_grad(naive(2), "2acc x4", loss_type)
    assert (int(MASK[:4].sum()), int(MASK[4:].sum())) == (16, 19)
    assert (bad - good).abs().max() > 1e-3
    torch.testing.assert_close(bad[:4][MASK[:4]], good[:4][MASK[:4]] * 35 / 32)  # exactly the mis-weighting
    torch.testing.assert_close(_step_grad(naive(1), "1x8", loss_type), good)  # a single micro-batch hides the bug


def _rollout_and_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(N, T, dtype=D, generator=g) * MASK
    ref = old + 0.2 * torch.randn(N, T, dtype=D, generator=g) * MASK
    ro = Rollout(rewards=torch.tensor([1.0, 0.0, float("nan"), 2.0, 0.5, 0.5, -1.0, 3.0], dtype=D),
                 group=torch.arange(2).repeat_interleave(4), mask=MASK, old_logp=old, ref_logp=ref,
                 values=0.3 * torch.randn(N, T, dtype=D, generator=g) * MASK,
                 truncated=LENGTHS == T)
    shift = 0.3 * torch.randn(N, T, dtype=D, generator=g) * MASK  # current policy ≠ sampler: clipping active
    entropy = torch.rand(N, T, dtype=D, generator=g)
    return ro, shift, entropy


ALGOS = [("grpo", dict(beta=0.04, epsilon_high=0.28, entropy_coef=0.01, loss_type=lt)) for lt in LOSS_TYPES]
ALGOS += [("grpo", dict(importance_sampling_level="sequence", loss_type="grpo", mask_truncated_completions=True)),
          ("rloo", {}), ("reinforce_pp", {}), ("ppo", {})]


@pytest.mark.parametrize("name,hp", ALGOS, ids=[f"{n}-{'-'.join(map(str, h.values()))}" for n, h in ALGOS])
def test_algorithm_loss_is_split_invariant(name, hp):
    """End to end through advantages() (once, over the whole rollout) and loss() per micro-batch."""
    algo = get(name, **hp)
    ro, shift, entropy = _rollout_and_batches()
    adv = algo.advantages(ro)
    agg_mask = adv.get("loss_mask", MASK)

    def loss_fn(w_rows, idx):
        a = adv["advantages"][idx]
        b = PolicyBatch(logp=ro.old_logp[idx] + shift[idx] + 0.01 * w_rows, old_logp=ro.old_logp[idx],
                        mask=MASK[idx], advantages=a, group=ro.group[idx], rewards=ro.rewards[idx],
                        ref_logp=ro.ref_logp[idx], entropy=entropy[idx] * (1 + 0.01 * w_rows),
                        values=ro.values[idx] + 0.01 * w_rows, old_values=ro.values[idx],
                        returns=adv["returns"][idx] if "returns" in adv else None,
                        extra={k: v[idx] for k, v in adv.items() if k == "loss_mask"})
        per_token, _ = algo.loss(b)
        return aggregate(per_token, agg_mask[idx], algo.loss_type, max_completion_length=L_MAX)

    # units count on the aggregation mask (a truncated completion leaves the token count)
    ref = _step_grad(loss_fn, "1x8", algo.loss_type, agg_mask)
    assert ref.abs().max() > 1e-6
    for split in SPLITS:
        torch.testing.assert_close(_step_grad(loss_fn, split, algo.loss_type, agg_mask), ref, rtol=0, atol=1e-12)


class ThreadAllReduce:
    """A sum all-reduce between ``world`` threads: the reduce of a real multi-process run, in one test."""

    def __init__(self, world):
        self.world, self.barrier, self.slots = world, threading.Barrier(world), [None] * world

    def for_rank(self, rank):
        def reduce(x):
            self.slots[rank] = x.clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before every rank has read it
            return total
        return reduce


def _sharded(fn, n_ranks=2):
    """Run fn(rank, reduce) on concurrent ranks; returns their results in rank order."""
    ar, results = ThreadAllReduce(n_ranks), [None] * n_ranks

    def run(rank):
        results[rank] = fn(rank, ar.for_rank(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(n_ranks)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    return results


def test_batch_statistics_are_global_across_processes():
    """scale_rewards="batch", whitening and REINFORCE++ see the global batch whichever process holds which group."""
    ro, _, _ = _rollout_and_batches()
    halves = [slice(0, 4), slice(4, 8)]  # one group per process
    full = group_advantages(ro.rewards, ro.group, "batch")
    shards = _sharded(lambda r, red: group_advantages(ro.rewards[halves[r]], ro.group[halves[r]], "batch",
                                                       reduce=red))
    torch.testing.assert_close(torch.cat(shards), full, rtol=0, atol=1e-12)
    # local statistics would differ: the check has teeth
    assert not torch.allclose(torch.cat([group_advantages(ro.rewards[h], ro.group[h], "batch") for h in halves]),
                              full)
    x = ro.old_logp + ro.ref_logp
    shards = _sharded(lambda r, red: whiten(x[halves[r]], MASK[halves[r]], red))
    torch.testing.assert_close(torch.cat(shards), whiten(x, MASK), rtol=0, atol=1e-12)

    algo = get("reinforce_pp", baseline="group")
    full = algo.advantages(ro)["advantages"]

    def shard(r, red):
        h = halves[r]
        return algo.advantages(Rollout(rewards=ro.rewards[h], group=ro.group[h], mask=MASK[h],
                                       old_logp=ro.old_logp[h], ref_logp=ro.ref_logp[h], reduce=red))["advantages"]

    torch.testing.assert_close(torch.cat(_sharded(shard)), full, rtol=0, atol=1e-12)
