"""DeRa against closed forms, through the library's ``dera_logits`` (no language model).

One step (a bandit): if the aligned logits are the exact optimum π*(β) = π_ref·exp(r/β)/Z, then
softmax(λ·z_aligned + (1−λ)·z_ref) ∝ π_ref^{1−λ}·(π_ref·e^{r/β})^λ = π_ref·e^{λr/β}, i.e. exactly π*(β/λ).

Several steps: the aligned token conditionals are those of the sequence-level optimum π*(β), and mixing
them per token is no longer exact, because π*(β)(y_t | y_<t) carries the soft value at temperature β, and λ
times that is not the soft value at β/λ. The test measures the total-variation error as λ varies.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from prefalign.decode import dera_logits

F64 = torch.float64


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0, 1.7, 3.0])
def test_one_step_realignment_is_exactly_the_optimum_at_beta_over_lambda(lam):
    g = torch.Generator().manual_seed(0)
    k, beta = 7, 0.5
    log_ref = torch.log_softmax(torch.randn(k, generator=g, dtype=F64), 0)
    r = torch.randn(k, generator=g, dtype=F64)
    z_aligned = torch.log_softmax(log_ref + r / beta, 0) + 3.0  # logits: any per-row shift is allowed
    z_ref = log_ref - 1.0
    realigned = torch.softmax(dera_logits(z_aligned[None], z_ref[None], lam)[0], 0)
    expected = torch.softmax(log_ref + lam * r / beta, 0)  # π*(β/λ); λ = 0 gives π_ref
    torch.testing.assert_close(realigned, expected, atol=1e-6, rtol=0)
    # the geometric-mixture form of the same statement
    geo = torch.softmax((1 - lam) * log_ref + lam * torch.log_softmax(z_aligned, 0), 0)
    torch.testing.assert_close(realigned, geo, atol=1e-12, rtol=0)


class TabularToy:
    """An autoregressive tabular 'LM': V tokens, T steps, a random table of logits per prefix."""

    def __init__(self, seed: int, vocab: int = 3, steps: int = 3, beta: float = 0.5):
        g = torch.Generator().manual_seed(seed)
        self.v, self.t, self.beta = vocab, steps, beta
        self.seqs = list(itertools.product(range(vocab), repeat=steps))
        self.prefixes = [p for t in range(steps) for p in itertools.product(range(vocab), repeat=t)]
        self.ref = {p: torch.log_softmax(torch.randn(vocab, generator=g, dtype=F64), 0) for p in self.prefixes}
        self.reward = torch.randn(len(self.seqs), generator=g, dtype=F64)  # sequence-level r(y)
        self.log_ref_seq = self.seq_logp(self.ref)

    def seq_logp(self, cond: dict) -> torch.Tensor:
        """[N] log-probs of every full sequence under token conditionals ``cond[prefix] -> [V]``."""
        return torch.stack([sum(cond[s[:i]][s[i]] for i in range(self.t)) for s in self.seqs])

    def optimum(self, beta: float) -> torch.Tensor:
        """[N] sequence-level π*(β) ∝ π_ref·exp(r/β)."""
        return torch.softmax(self.log_ref_seq + self.reward / beta, 0)

    def conditionals(self, probs: torch.Tensor) -> dict:
        """Token conditionals of a sequence distribution (marginalising the continuations)."""
        out = {}
        for p in self.prefixes:
            mass = torch.zeros(self.v, dtype=F64)
            for prob, s in zip(probs, self.seqs):
                if s[: len(p)] == p:
                    mass[s[len(p)]] += prob
            out[p] = (mass / mass.sum()).log()
        return out

    def dera(self, lam: float) -> torch.Tensor:
        aligned = self.conditionals(self.optimum(self.beta))
        mixed = {p: torch.log_softmax(dera_logits(aligned[p][None], self.ref[p][None], lam)[0], 0)
                 for p in self.prefixes}
        return self.seq_logp(mixed).exp()


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


LAMS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_step_per_token_error_against_sequence_optimum(seed):
    toy = TabularToy(seed)
    rows = []
    for lam in LAMS:
        target = toy.optimum(toy.beta / lam) if lam > 0 else toy.log_ref_seq.exp()
        approx = toy.dera(lam)
        rows.append((lam, tv(approx, target), tv(toy.log_ref_seq.exp(), target), tv(toy.optimum(toy.beta), target)))
    print(f"\nseed {seed}: λ, TV(DeRa, π*(β/λ)), TV(π_ref, ·), TV(π*(β), ·)")
    for row in rows:
        print("  " + "  ".join(f"{x:.4f}" for x in row))
    for lam, err, from_ref, from_aligned in rows:
        if lam in (0.0, 1.0):
            assert err < 1e-12  # the endpoints are the two models themselves
        else:
            assert err > 1e-4  # per-token mixing is an approximation off the endpoints ...
            assert err < min(from_ref, from_aligned)  # ... but closer than either model alone
