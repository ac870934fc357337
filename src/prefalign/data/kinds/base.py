"""Row kinds: what one kind of data row is, in one place — a registry.

A row kind validates a raw row (one-line problems naming row and field), turns a valid row into a token-level
example (the prompt/completion split in token space, truncation), lays a list of examples out as one batch through
the shared segment builder (``data/batch.py``), and turns the log-prob layer's output for that batch into the
objective's view (``PairLogps``, ``PointLogps``, …). The training loop and the data loader only ever call
``get(name)``; no list of kind names exists outside this registry, so a new kind is one file (or one class in a
test) decorated with ``@register``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

Problem = tuple[str, str]  # (problem kind, one-line message)


@dataclass
class Encoded:
    """One encoded row: its example and the lengths the preprocessing report counts."""

    example: Any
    prompt_lengths: list[int] = field(default_factory=list)
    completion_lengths: list[int] = field(default_factory=list)
    total_lengths: list[int] = field(default_factory=list)
    truncated: bool = False


class RowKind:
    """Base class; a subclass sets ``name`` and implements ``check``, ``encode``, ``collate`` and ``view``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Fields that ``encode`` reads; every other non-underscore field of a normalised row is an "extra"
    # (a declared numeric field such as ``pref_prob``), carried into ``example.extras``.
    standard_keys: ClassVar[tuple[str, ...]] = ()
    # Whether reference log-probs of its batches can be cached per example as (chosen, rejected) by
    # ``reference: precompute`` (sequence s < B is chosen of row s, B + s its rejected).
    precomputable: ClassVar[bool] = False

    def accept(self, where: str, row: dict, options: dict) -> None:
        """Refuse a row the objective cannot read at all (raise UserError); default: accept every row."""

    def check(self, where: str, row: dict) -> tuple[dict, list[Problem]]:  # pragma: no cover - abstract
        """The normalised row (meaningful only without problems) and its problems."""
        raise NotImplementedError

    def encode(self, split, where: str, row: dict, max_length: int | None, truncation: str) -> Encoded | str:
        """The encoded row, or the reason it is dropped (e.g. "prompt fills max_length"). ``split`` is the
        token-space renderer (``data.render.Renderer``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def collate(self, examples: list, pad_id: int, layout: str, pack: bool, **options):  # pragma: no cover
        """A batch (``SeqBatch`` or a subclass) of ``examples``; ``options`` come from the objective's needs."""
        raise NotImplementedError

    def view(self, policy, ref, batch):  # pragma: no cover - abstract
        """The objective's input from the policy's ``SeqLogps`` and the reference's log-probs (``RefLogps``: summed,
        and per-token / features when the objective asked for them; None without a reference)."""
        raise NotImplementedError

    def size(self, example) -> int:
        """Tokens in the forward pass this example costs (the memory probe picks the longest)."""
        n = len(getattr(example, "prompt_ids", ()))
        for f in ("chosen_ids", "rejected_ids", "completion_ids", "rejected_prompt_ids", "judged_prompt_ids"):
            n += len(getattr(example, f, None) or ())
        return n + sum(len(s) for s in getattr(example, "sample_ids", ()))

    def token_ids(self, example) -> list:
        """Every id list of the example, for cache fingerprints."""
        return [example.prompt_ids, example.chosen_ids, example.rejected_ids]

    def logp_metrics(self, policy, batch) -> dict[str, float]:
        """Mean per-token log-prob of the "chosen" and "rejected" sides (health checks read logps/chosen)."""
        b = batch.num_pairs
        avg = policy.seq_logps.detach() / policy.n_tokens.clamp(min=1)
        return {"logps/chosen": avg[:b].mean().item(), "logps/rejected": avg[b:].mean().item()}


_KINDS: dict[str, RowKind] = {}


def register(cls: type[RowKind]) -> type[RowKind]:
    """Class decorator: make the kind available by its ``name`` (a later registration replaces an earlier one)."""
    if not cls.name:
        raise ValueError(f"row kind {cls.__name__} has no name")
    _KINDS[cls.name] = cls()
    return cls


def get(name: str) -> RowKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"unknown row kind {name!r}; known: {', '.join(sorted(_KINDS))}") from None


def names() -> list[str]:
    return sorted(_KINDS)


def extras_of(row: dict, standard: tuple[str, ...]) -> dict:
    """A normalised row's declared extra fields (everything but the kind's own fields and the row number)."""
    return {k: v for k, v in row.items() if k not in standard and not k.startswith("_")}
