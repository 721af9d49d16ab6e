"""A user reward function loaded by `module:function` in the GRPO tests (TRL signature)."""


def shorter_is_better(prompts, completions, **columns):
    return [1.0 / (1 + len(c)) for c in completions]


def flat_for_flash_0(prompts, completions, id, **columns):
    """Sample flash-0's group earns 1.0 everywhere (mean 1: DAPO's filter drops it); any other
    group's k-th completion earns 0.1 + 0.2 k (varied, kept). Deterministic whatever is sampled."""
    seen: dict[str, int] = {}
    rewards = []
    for sample_id in id:
        k = seen[sample_id] = seen.get(sample_id, -1) + 1
        rewards.append(1.0 if sample_id == "flash-0" else 0.1 + 0.2 * (k % 4))
    return rewards


def always_one(prompts, completions, **columns):
    return [1.0] * len(completions)
