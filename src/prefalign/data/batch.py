"""Batches of token ids, in one of two exact layouts, with a scoring plan saying which tokens count.

``separate`` (TRL's layout): 2B right-padded rows, prompt+chosen for each pair, then prompt+rejected.
``shared_prefix``: B rows, each ``prompt | chosen | rejected``; a 4D attention mask lets each completion see the
prompt and itself but not the other completion, and the rejected positions restart where the prompt ends. The
prompt runs once per pair and gets gradients from both completions; log-probs are identical to ``separate``.
A cross-prompt pair (JPO: chosen after x₁, rejected after x₂) shares nothing: in ``separate`` the rejected row holds
x₂ + rejected; in ``shared_prefix`` its row holds two blocks ``x₁ | chosen | x₂ | rejected``, the rejected seeing only
x₂ and itself (positions restart at 0 for x₂), so same-prompt pairs of the same batch still share their prompt.
``pack=True`` (padding-free): all rows of the layout are concatenated into one row with a block mask and
position ids restarting per sequence, so no compute is spent on padding.

Whatever the layout, output sequence s ∈ [0, 2B) is chosen of pair s (s < B) or rejected of pair s − B, and the
scoring plan lists, for each scored token, the (row, position) whose hidden state predicts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefalign.data.types import JudgedExample, PairExample, PointExample, SampleExample

LAYOUTS = ("separate", "shared_prefix")


@dataclass
class Scoring:
    """M scored tokens: hidden state at (row, pos) predicts ``target``; it is token ``slot`` of sequence ``seq``."""

    row: torch.Tensor  # [M]
    pos: torch.Tensor  # [M]
    target: torch.Tensor  # [M]
    seq: torch.Tensor  # [M]
    slot: torch.Tensor  # [M]
    num_seqs: int  # S (= 2B for pairs)
    width: int  # T, the longest completion

    def to(self, device) -> Scoring:
        return Scoring(self.row.to(device), self.pos.to(device), self.target.to(device), self.seq.to(device),
                       self.slot.to(device), self.num_seqs, self.width)


@dataclass
class SeqBatch:
    input_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor  # [R, L] 1 on real tokens, or [R, 1, L, L] bool (True = may attend)
    position_ids: torch.Tensor  # [R, L]
    scoring: Scoring
    real: torch.Tensor | None = None  # [R, L] 1 on real tokens (0 on padding)
    rows: list[int] = field(default_factory=list)  # source row of each pair (length B)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # [B] per declared field
    ref_logps: torch.Tensor | None = None  # [2B] cached reference log-probs, when precomputed
    token_marks: torch.Tensor | None = None  # [2B, T] revision rows' 0/1 token marks per sequence (FIGA), 0 past ends

    @property
    def num_pairs(self) -> int:
        return self.scoring.num_seqs // 2

    @property
    def num_tokens(self) -> int:
        """Real tokens in the forward pass (what the layout costs)."""
        return int(self.real.sum())

    def to(self, device) -> SeqBatch:
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t
        return SeqBatch(move(self.input_ids), move(self.attention_mask), move(self.position_ids),
                        self.scoring.to(device), move(self.real), self.rows,
                        {k: move(v) for k, v in self.extras.items()}, move(self.ref_logps),
                        move(self.token_marks))


def _build(rows: list[list[tuple[list[int], int, int]]], num_seqs: int, pad_id: int, mask_4d: bool,
           pad_to_multiple_of: int | None) -> tuple:
    """rows: per row, segments (ids, parent, seq): ``parent`` = index of the prompt segment in the row (−1 for a
    prompt), ``seq`` = output sequence of a completion (−1 for a prompt)."""
    length = max(sum(len(ids) for ids, _, _ in segs) for segs in rows)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    n = len(rows)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    pos_ids = torch.zeros((n, length), dtype=torch.long)
    seg_of = torch.full((n, length), -1, dtype=torch.long)  # segment index per position (−1 = padding)
    plan: list[tuple[int, int, int, int, int]] = []
    parents: list[list[int]] = []
    for r, segs in enumerate(rows):
        start, spans = 0, []
        for k, (ids, parent, seq) in enumerate(segs):
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids, dtype=torch.long)
            seg_of[r, start:end] = k
            p_start, p_end = spans[parent] if parent >= 0 else (start, start)
            offset = p_end - p_start  # positions continue after the prompt
            pos_ids[r, start:end] = torch.arange(offset, offset + len(ids))
            if seq >= 0:
                for t, tok in enumerate(ids):  # token t is predicted by the position before it
                    if t == 0 and p_end == p_start and parent >= 0 and start == p_end:
                        continue  # empty prompt: nothing predicts the first token
                    plan.append((r, (p_end - 1) if t == 0 else (start + t - 1), tok, seq, t))
            spans.append((start, end))
            start = end
        parents.append([p for _, p, _ in segs])
    plan_t = torch.tensor(plan, dtype=torch.long).reshape(-1, 5)
    width = int(plan_t[:, 4].max()) + 1 if len(plan) else 0
    scoring = Scoring(*plan_t.unbind(1), num_seqs=num_seqs, width=width)
    real = (seg_of >= 0).long()  # [R, L]
    if not mask_4d:
        return input_ids, real, pos_ids, scoring, real
    # i may attend j iff j ≤ i and j is in i's segment or in its parent prompt segment (all rows at once: one
    # batched comparison instead of a loop of small [L, L] ops, which stall on a busy machine).
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # [L, L]
    table = torch.full((n, max(len(p) for p in parents) + 1), -1, dtype=torch.long)  # [R, K+1] parent per segment
    for r, p in enumerate(parents):
        table[r, : len(p)] = torch.tensor(p, dtype=torch.long)
    par = table.gather(1, torch.where(seg_of >= 0, seg_of, table.shape[1] - 1))  # [R, L]; −1 for prompts/padding
    real_pos = seg_of >= 0  # [R, L]
    visible = (seg_of[:, :, None] == seg_of[:, None, :]) | (par[:, :, None] == seg_of[:, None, :])  # [R, L, L]
    mask = (causal & visible & real_pos[:, :, None] & real_pos[:, None, :])[:, None]  # [R, 1, L, L]
    # A padding row attending to nothing makes softmax NaN; let padding see itself (never scored).
    mask |= torch.eye(length, dtype=torch.bool)[None, None] & (seg_of < 0)[:, None, :, None]
    return input_ids, mask, pos_ids, scoring, real


def _pack(rows: list[list[tuple[list[int], int, int]]]) -> list[list[tuple[list[int], int, int]]]:
    """One row holding every segment; parent indices shifted to the packed row."""
    packed: list[tuple[list[int], int, int]] = []
    for segs in rows:
        base = len(packed)
        packed += [(ids, parent + base if parent >= 0 else -1, seq) for ids, parent, seq in segs]
    return [packed]


def collate_pairs(examples: list[PairExample], pad_id: int, layout: str = "separate", pack: bool = False,
                  pad_to_multiple_of: int | None = None) -> SeqBatch:
    b = len(examples)
    x2 = [e.rejected_prompt_ids if e.cross_prompt else e.prompt_ids for e in examples]  # the rejected's prompt
    if layout == "separate":
        rows = [[(e.prompt_ids, -1, -1), (e.chosen_ids, 0, i)] for i, e in enumerate(examples)]
        rows += [[(x2[i], -1, -1), (e.rejected_ids, 0, b + i)] for i, e in enumerate(examples)]
    elif layout == "shared_prefix":  # a cross-prompt pair has nothing to share: two blocks (x₁ y₁)(x₂ y₂) in its row
        rows = [[(e.prompt_ids, -1, -1), (e.chosen_ids, 0, i)]
                + ([(x2[i], -1, -1), (e.rejected_ids, 2, b + i)] if e.cross_prompt else [(e.rejected_ids, 0, b + i)])
                for i, e in enumerate(examples)]
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got '{layout}'")
    if pack:
        rows = _pack(rows)
    ids, mask, pos, scoring, real = _build(rows, 2 * b, pad_id, layout != "separate" or pack, pad_to_multiple_of)
    extras = {k: torch.tensor([float(e.extras[k]) for e in examples]) for k in (examples[0].extras if b else ())}
    marks = None
    if b and examples[0].chosen_marks is not None:  # revision rows: marks in sequence order, like the log-probs
        marks = torch.zeros(2 * b, scoring.width)  # [2B, T]
        for i, e in enumerate(examples):
            marks[i, : len(e.chosen_marks)] = torch.tensor(e.chosen_marks, dtype=torch.float)
            marks[b + i, : len(e.rejected_marks)] = torch.tensor(e.rejected_marks, dtype=torch.float)
    return SeqBatch(ids, mask, pos, scoring, real, [e.row for e in examples], extras, token_marks=marks)


@dataclass
class PointBatch(SeqBatch):
    """A batch of B unpaired examples: sequence i < B is prompt_i + completion_i; with ``mismatched``, sequence
    B + i is prompt_i + completion_{i−1 mod B} (TRL KTO's KL pairs)."""

    labels: torch.Tensor | None = None  # [B] bool
    num_points: int = 0

    @property
    def num_pairs(self) -> int:  # what the pair-oriented code reads as "rows of the batch"
        return self.num_points

    def to(self, device) -> PointBatch:
        base = SeqBatch.to(self, device)
        return PointBatch(**{f: getattr(base, f) for f in SeqBatch.__dataclass_fields__},
                          labels=None if self.labels is None else self.labels.to(device), num_points=self.num_points)


def collate_points(examples: list[PointExample], pad_id: int, layout: str = "separate", pack: bool = False,
                   pad_to_multiple_of: int | None = None, mismatched: bool = False) -> PointBatch:
    """Point-wise examples through the same segment builder as pairs: one (prompt, completion) per example, plus,
    with ``mismatched``, (prompt_i, completion_{i−1}) as sequence B + i. ``shared_prefix`` puts both completions of
    prompt i in one row (as for pairs); ``separate`` gives each sequence its own row."""
    b = len(examples)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got '{layout}'")
    prev = [examples[(i - 1) % b].completion_ids for i in range(b)]
    if layout == "shared_prefix":
        rows = [[(e.prompt_ids, -1, -1), (e.completion_ids, 0, i)] + ([(prev[i], 0, b + i)] if mismatched else [])
                for i, e in enumerate(examples)]
    else:
        rows = [[(e.prompt_ids, -1, -1), (e.completion_ids, 0, i)] for i, e in enumerate(examples)]
        if mismatched:
            rows += [[(e.prompt_ids, -1, -1), (prev[i], 0, b + i)] for i, e in enumerate(examples)]
    if pack:
        rows = _pack(rows)
    num_seqs = 2 * b if mismatched else b
    ids, mask, pos, scoring, real = _build(rows, num_seqs, pad_id, layout != "separate" or pack, pad_to_multiple_of)
    extras = {k: torch.tensor([float(e.extras[k]) for e in examples]) for k in (examples[0].extras if b else ())}
    labels = torch.tensor([bool(e.label) for e in examples], dtype=torch.bool)
    return PointBatch(ids, mask, pos, scoring, real, [e.row for e in examples], extras, labels=labels, num_points=b)


@dataclass
class SampleBatch(SeqBatch):
    """A batch of B D2O rows: sequence i < B is prompt_i + rejected_i; sequences B, B+1, … are the samples of row
    0, then row 1, …; sample sequence B + n is sample ``sample_slot[n]`` of row ``sample_row[n]``."""

    sample_row: torch.Tensor | None = None  # [N] row of each sample sequence (N = Σ_b K_b)
    sample_slot: torch.Tensor | None = None  # [N] its index k within the row
    num_rows: int = 0

    @property
    def num_pairs(self) -> int:  # what the pair-oriented code reads as "rows of the batch"
        return self.num_rows

    def to(self, device) -> SampleBatch:
        base = SeqBatch.to(self, device)
        return SampleBatch(**{f: getattr(base, f) for f in SeqBatch.__dataclass_fields__},
                           sample_row=self.sample_row.to(device), sample_slot=self.sample_slot.to(device),
                           num_rows=self.num_rows)


def collate_samples(examples: list[SampleExample], pad_id: int, layout: str = "separate", pack: bool = False,
                    pad_to_multiple_of: int | None = None) -> SampleBatch:
    """D2O rows through the same segment builder as pairs: ``shared_prefix`` puts the prompt once and the negative
    and all K samples after it in one row (each completion sees only the prompt and itself); ``separate`` gives
    every (prompt, completion) sequence its own row."""
    b = len(examples)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got '{layout}'")
    sample_row = [i for i, e in enumerate(examples) for _ in e.sample_ids]
    sample_slot = [k for e in examples for k in range(len(e.sample_ids))]
    first = [b]  # sequence id of row i's first sample
    for e in examples:
        first.append(first[-1] + len(e.sample_ids))
    if layout == "shared_prefix":
        rows = [[(e.prompt_ids, -1, -1), (e.rejected_ids, 0, i)]
                + [(s, 0, first[i] + k) for k, s in enumerate(e.sample_ids)] for i, e in enumerate(examples)]
    else:
        rows = [[(e.prompt_ids, -1, -1), (e.rejected_ids, 0, i)] for i, e in enumerate(examples)]
        rows += [[(e.prompt_ids, -1, -1), (s, 0, first[i] + k)] for i, e in enumerate(examples)
                 for k, s in enumerate(e.sample_ids)]
    if pack:
        rows = _pack(rows)
    ids, mask, pos, scoring, real = _build(rows, first[-1], pad_id, layout != "separate" or pack, pad_to_multiple_of)
    extras = {k: torch.tensor([float(e.extras[k]) for e in examples]) for k in (examples[0].extras if b else ())}
    return SampleBatch(ids, mask, pos, scoring, real, [e.row for e in examples], extras,
                       sample_row=torch.tensor(sample_row, dtype=torch.long),
                       sample_slot=torch.tensor(sample_slot, dtype=torch.long), num_rows=b)


@dataclass
class JudgedBatch(SeqBatch):
    """A batch of B CUT rows: sequence i < B is prompt_i + completion_i, sequence B + i is (judgment_i ⊕ prompt_i) +
    completion_i — the same completion tokens, so token slot t of both sequences is the same token."""

    num_rows: int = 0

    @property
    def num_pairs(self) -> int:  # what the pair-oriented code reads as "rows of the batch"
        return self.num_rows

    def to(self, device) -> JudgedBatch:
        base = SeqBatch.to(self, device)
        return JudgedBatch(**{f: getattr(base, f) for f in SeqBatch.__dataclass_fields__}, num_rows=self.num_rows)


def collate_judged(examples: list[JudgedExample], pad_id: int, layout: str = "separate", pack: bool = False,
                   pad_to_multiple_of: int | None = None) -> JudgedBatch:
    """CUT rows through the same segment builder as pairs. The two prompts differ, so nothing is shared:
    ``shared_prefix`` puts both (prompt, completion) sequences of a row in one row with a block mask (each completion
    sees only its own prompt); ``separate`` gives each sequence its own row."""
    b = len(examples)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got '{layout}'")
    if layout == "shared_prefix":
        rows = [[(e.prompt_ids, -1, -1), (e.completion_ids, 0, i), (e.judged_prompt_ids, -1, -1),
                 (e.completion_ids, 2, b + i)] for i, e in enumerate(examples)]
    else:
        rows = [[(e.prompt_ids, -1, -1), (e.completion_ids, 0, i)] for i, e in enumerate(examples)]
        rows += [[(e.judged_prompt_ids, -1, -1), (e.completion_ids, 0, b + i)] for i, e in enumerate(examples)]
    if pack:
        rows = _pack(rows)
    ids, mask, pos, scoring, real = _build(rows, 2 * b, pad_id, layout != "separate" or pack, pad_to_multiple_of)
    extras = {k: torch.tensor([float(e.extras[k]) for e in examples]) for k in (examples[0].extras if b else ())}
    return JudgedBatch(ids, mask, pos, scoring, real, [e.row for e in examples], extras, num_rows=b)


def collate_completions(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> SeqBatch:
    """N (prompt, completion) sequences, one right-padded row each (the ``separate`` layout): sequence i is
    completion i after prompt i, and the scoring plan names exactly completion i's tokens, for
    ``logps.sequence_logps`` (evaluation scoring sampled ids, online RL scoring what it sampled)."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    rows = [[(list(p), -1, -1), (list(c), 0, i)] for i, (p, c) in enumerate(zip(prompt_ids, completion_ids))]
    ids, mask, pos, scoring, real = _build(rows, len(rows), pad_id, False, None)
    return SeqBatch(ids, mask, pos, scoring, real, list(range(len(rows))))


def collate_groups(prompt_ids: list[list[int]], completion_ids: list[list[int]], group_size: int, pad_id: int,
                   layout: str = "shared_prefix", pack: bool = False, per_row: int | None = None) -> SeqBatch:
    """Online RL's groups: P prompts × G completions (completion n answers prompt n // G). ``shared_prefix`` puts
    a prompt once and its completions after it in one row (each completion sees the prompt and itself), so the
    prompt runs once per row in forward and backward: ``per_row`` completions per row (None: all G, the prompt once
    per group; 1: the separate layout); ``separate`` gives every (prompt, completion) its own row. Sequence n of
    the scoring plan is completion n either way, and the log-probs are the same."""
    if len(completion_ids) != len(prompt_ids) * group_size:
        raise ValueError(f"{len(prompt_ids)} prompts × {group_size} need {len(prompt_ids) * group_size} "
                         f"completions, got {len(completion_ids)}")
    if layout == "separate":
        per_row = 1
    elif layout != "shared_prefix":
        raise ValueError(f"layout must be one of {LAYOUTS}, got '{layout}'")
    k = group_size if per_row is None else max(1, min(int(per_row), group_size))
    rows = [[(list(p), -1, -1)] + [(list(completion_ids[n]), 0, n) for n in range(start, min(start + k, end))]
            for i, p in enumerate(prompt_ids)
            for end in [(i + 1) * group_size] for start in range(i * group_size, end, k)]
    if pack:
        rows = _pack(rows)
    # one completion per row is a plain causal sequence: a 2D padding mask (sdpa's fast paths), no 4D mask
    ids, mask, pos, scoring, real = _build(rows, len(completion_ids), pad_id, pack or k > 1, None)
    return SeqBatch(ids, mask, pos, scoring, real, list(range(len(prompt_ids))))
