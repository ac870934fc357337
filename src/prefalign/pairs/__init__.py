"""Preference pairs from a model and a reward: sample n completions per prompt, score them, keep best vs worst.

    from prefalign.pairs import sample_completions, score_samples, make_pairs
    samples = sample_completions(model, tokenizer, prompts, n=4, opts=GenOptions(max_new_tokens=40))
    score_samples(samples, load_reward("vader"))
    pairs, stats = make_pairs(samples.prompts, samples.completions, samples.rewards, samples.chat)

The CLI: ``prefalign sample`` writes the samples (optionally scored), ``prefalign label`` writes the pairs.
"""

from prefalign.pairs.io import read_jsonl, read_prompts, write_jsonl
from prefalign.pairs.label import LabelStats, best_worst, make_pairs, pairs_from_rows
from prefalign.pairs.sample import Samples, sample_completions, sample_ids, score_samples

__all__ = ["LabelStats", "Samples", "best_worst", "make_pairs", "pairs_from_rows", "read_jsonl", "read_prompts",
           "sample_completions", "sample_ids", "score_samples", "write_jsonl"]
