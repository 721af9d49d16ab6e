"""From a `Sample` and its frames to model inputs — the one path every consumer takes.

SFT, rollout, the policy and reference passes and evaluation all call these functions, so the
question text, the prompt, the visual embeddings and the positions they see are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data.schema import Sample
from .model.adapter import Prompt, VisualEmbeds, VLMAdapter

INSTRUCTION = "Think step by step inside <think></think>, then give the option letter inside <answer></answer>."


def question_text(sample: Sample) -> str:
    """The user turn's text: the question, its lettered options and the answer-format instruction."""
    lines = [sample.question.strip()]
    if sample.options:
        lines += [f"{letter}. {text}" for letter, text in zip(sample.letters, sample.options)]
        lines.append(INSTRUCTION)
    else:
        lines.append("Think step by step inside <think></think>, then give the answer inside <answer></answer>.")
    return "\n".join(lines)


def target_text(sample: Sample) -> str:
    """The chain-of-thought SFT target: `<think>reasoning</think><answer>X</answer>`."""
    return f"<think>{(sample.reasoning or '').strip()}</think><answer>{sample.answer}</answer>"


@dataclass
class Encoded:
    """A sample's prompt with its video encoded once."""

    sample: Sample
    visual: VisualEmbeds
    prompt: Prompt


def encode_sample(adapter: VLMAdapter, sample: Sample, pixels, timestamps, *, chunk: int | None = None) -> Encoded:
    video = adapter.preprocess(pixels, timestamps)
    visual = adapter.encode(video, chunk_patches=chunk)
    return Encoded(sample, visual, adapter.build_prompt(question_text(sample), visual))


def with_response(
    adapter: VLMAdapter, prompt: Prompt, visual: VisualEmbeds, response_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`[prompt | response]` embeddings `[S, D]`, positions `[..., S]` and next-token labels `[S]`.

    Labels are already shifted: `labels[i]` is the token that position `i` predicts, -100 where
    nothing is learned, so the sequence can be sharded later without losing a target.
    """
    embeds, positions = adapter.prefix_inputs(prompt, visual)
    response_ids = response_ids.to(embeds.device)
    embeds = torch.cat([embeds, adapter.embed_tokens(response_ids)])
    positions = torch.cat([positions, adapter.continuation_positions(positions, len(response_ids))], dim=-1)
    labels = torch.full((embeds.shape[0],), -100, dtype=torch.long, device=embeds.device)
    labels[len(prompt) - 1 : -1] = response_ids
    return embeds, positions, labels
