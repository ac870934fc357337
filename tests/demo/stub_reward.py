"""A stub reward for the demo tests: cheap, deterministic, and varied enough that most prompts have no ties."""


def score(prompts, completions):
    """Share of vowels among the letters, minus a little per character: any model's samples get spread scores."""
    out = []
    for c in completions:
        letters = [ch for ch in c.lower() if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / max(1, len(letters)) - 0.001 * len(c))
    return out


def constant(prompts, completions):
    """Every completion ties: labelling must drop every prompt."""
    return [0.5 for _ in completions]
