"""Views of one forward pass for the objectives: the log-prob layer's ``SeqLogps`` of a batch (and the reference's)
→ the objective's input (PairLogps, PointLogps, SampleLogps, JudgedLogps), by the batch's sequence order.

Generic over features: every [S, ...] tensor of ``SeqLogps.features`` (and of the reference's, prefixed ``ref_``, and
the batch's per-sequence row data such as revision marks) is split by the role of each sequence, e.g. for pairs
``log_sum_sq`` → ``chosen_log_sum_sq`` [B, T] and ``rejected_log_sum_sq``; no feature is named here.

``ref`` is what ``Reference.logps`` returns (``RefLogps``; a ``SeqLogps`` has the same attributes), a tensor of
summed log-probs [S], or None (reference-free).
"""

from __future__ import annotations

import torch

from prefalign.objectives import JudgedLogps, PairLogps, PointLogps, SampleLogps


def _ref_parts(ref) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, torch.Tensor]]:
    """(summed [S], per-token [S, T] or None, features) of a reference result."""
    if ref is None or isinstance(ref, torch.Tensor):
        return ref, None, {}
    return ref.seq_logps, getattr(ref, "token_logps", None), dict(getattr(ref, "features", {}) or {})


def sequence_data(batch) -> dict[str, torch.Tensor]:
    """Per-sequence row data the batch carries, [S, T, ...] in sequence order, split like features: revision rows'
    token marks (FIGA) as ``marks``."""
    marks = getattr(batch, "token_marks", None)
    return {} if marks is None else {"marks": marks}


def _all_features(pol, ref) -> dict[str, torch.Tensor]:
    """Policy features and reference features (``ref_<out>``), [S, T, ...] each."""
    _, _, ref_feats = _ref_parts(ref)
    return {**pol.features, **{f"ref_{k}": v for k, v in ref_feats.items()}}


def _named(feats: dict[str, torch.Tensor], data: dict[str, torch.Tensor], split) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in [*feats.items(), *data.items()]:
        for name, part in split(k, v):
            if name in out:
                raise ValueError(f"feature '{name}' given twice (a feature and row data of the same name)")
            out[name] = part
    return out


def to_pair_logps(pol, ref, batch) -> PairLogps:
    """PairLogps of a ``collate_pairs`` batch: sequences [0, B) are the chosen, [B, 2B) the rejected."""
    b = batch.num_pairs
    ref_seq, ref_tok, _ = _ref_parts(ref)
    halves = lambda k, v: ((f"chosen_{k}", v[:b]), (f"rejected_{k}", v[b:]))  # noqa: E731
    return PairLogps(
        policy_chosen=pol.seq_logps[:b], policy_rejected=pol.seq_logps[b:],
        ref_chosen=None if ref_seq is None else ref_seq[:b], ref_rejected=None if ref_seq is None else ref_seq[b:],
        chosen_tokens=pol.n_tokens[:b].float(), rejected_tokens=pol.n_tokens[b:].float(),
        policy_chosen_token_logps=pol.token_logps[:b], policy_rejected_token_logps=pol.token_logps[b:],
        ref_chosen_token_logps=None if ref_tok is None else ref_tok[:b],
        ref_rejected_token_logps=None if ref_tok is None else ref_tok[b:],
        chosen_mask=pol.mask[:b], rejected_mask=pol.mask[b:], extras=batch.extras,
        features=_named(_all_features(pol, ref), sequence_data(batch), halves),
    )


def to_point_logps(pol, ref, batch) -> PointLogps:
    """PointLogps of a ``collate_points`` batch: sequences [0, B) are the rows, [B, 2B) the mismatched pairs."""
    b = batch.num_points
    ref_seq, _, _ = _ref_parts(ref)
    mism = pol.seq_logps.shape[0] > b
    split = lambda k, v: ((k, v[:b]),) + (((f"mismatched_{k}", v[b:]),) if mism else ())  # noqa: E731
    return PointLogps(
        policy=pol.seq_logps[:b], label=batch.labels, ref=None if ref_seq is None else ref_seq[:b],
        tokens=pol.n_tokens[:b].float(), kl_policy=pol.seq_logps[b:] if mism else None,
        kl_ref=None if (ref_seq is None or not mism) else ref_seq[b:], extras=batch.extras,
        features=_named(_all_features(pol, ref), sequence_data(batch), split),
    )


def to_sample_logps(pol, ref, batch) -> SampleLogps:
    """SampleLogps of a ``collate_samples`` batch: sequences [0, B) are the negatives, the rest the samples."""
    b = batch.num_rows
    ref_seq, _, _ = _ref_parts(ref)
    k = int(batch.sample_slot.max()) + 1 if batch.sample_slot.numel() else 0

    def grid(flat):  # [N, ...] per sample sequence → [B, K, ...], zero where a row has fewer samples
        return flat.new_zeros((b, k) + flat.shape[1:]).index_put((batch.sample_row, batch.sample_slot), flat)

    split = lambda n, v: ((f"rejected_{n}", v[:b]), (f"samples_{n}", grid(v[b:])))  # noqa: E731
    mask = grid(torch.ones_like(pol.seq_logps[b:], dtype=torch.bool))
    return SampleLogps(
        policy_rejected=pol.seq_logps[:b], policy_samples=grid(pol.seq_logps[b:]), sample_mask=mask,
        ref_rejected=None if ref_seq is None else ref_seq[:b], ref_samples=None if ref_seq is None else grid(ref_seq[b:]),
        rejected_tokens=pol.n_tokens[:b].float(), sample_tokens=grid(pol.n_tokens[b:].float()), extras=batch.extras,
        features=_named(_all_features(pol, ref), sequence_data(batch), split),
    )


def to_judged_logps(pol, ref, batch) -> JudgedLogps:
    """JudgedLogps of a ``collate_judged`` batch: sequences [0, B) follow the prompt, [B, 2B) the judged prompt."""
    b = batch.num_rows
    split = lambda k, v: ((k, v[:b]), (f"judged_{k}", v[b:]))  # noqa: E731
    return JudgedLogps(policy_token_logps=pol.token_logps[:b], judged_token_logps=pol.token_logps[b:],
                       mask=pol.mask[:b], extras=batch.extras,
                       features=_named(_all_features(pol, ref), sequence_data(batch), split))

