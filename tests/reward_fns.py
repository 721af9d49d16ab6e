"""A user reward function loaded by `module:function` in the GRPO tests (TRL signature)."""


def shorter_is_better(prompts, completions, **columns):
    return [1.0 / (1 + len(c)) for c in completions]
