"""Cheap deterministic rewards for the online-RL tests (importable as ``tests.online.rewards_stub:<name>``)."""


def vowels(prompts, completions, **columns):
    """Share of vowels among the characters: varied across samples of a random tiny model."""
    return [sum(ch in "aeiou" for ch in c.lower()) / max(1, len(c)) for c in completions]


def answer_in(prompts, completions, answer=None, **columns):
    """1 when the row's ``answer`` column appears in the completion; None where the row has no answer."""
    return [None if a is None else float(str(a) in c) for a, c in zip(answer, completions)]
