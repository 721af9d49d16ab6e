"""One chat turn about one video, answered by a longvid model: decode, encode once, prefill once, n samples.

Both `longvid serve` and the data pipeline's in-process captioner answer through `answer_video`, so
the server and the library produce the same text for the same frames, question and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.adapter import VLMAdapter
from ..model.sampling import SamplingConfig, sample
from ..video.decode import Frames


@dataclass
class Answer:
    texts: list[str]
    finish_reasons: list[str]  # "stop" (ended on an end-of-turn token) or "length"
    prompt_tokens: int
    completion_tokens: int  # summed over the n choices, as OpenAI counts them


class Engine:
    """A model in eval mode. It holds no lock: callers bound how many answers run at once (the
    server with its semaphore)."""

    def __init__(self, adapter: VLMAdapter):
        self.adapter = adapter
        adapter.model.eval()

    def prompt_length(self, question: str, visual_tokens: int) -> int:
        return len(self.adapter.build_prompt(question, visual_tokens))

    @torch.no_grad()
    def answer_video(
        self,
        frames: Frames,
        question: str,
        n: int,
        config: SamplingConfig,
        *,
        seed: int | None = None,
        max_prompt_tokens: int | None = None,
    ) -> Answer:
        """`n` answers to `question` about `frames` (seeded when `seed` is given); a prompt longer
        than `max_prompt_tokens` raises PromptTooLong before the vision tower runs."""
        adapter = self.adapter
        video = adapter.preprocess(frames.pixels, frames.timestamps)
        length = self.prompt_length(question, adapter.num_visual_tokens(video))
        if max_prompt_tokens is not None and length > max_prompt_tokens:
            raise PromptTooLong(length, max_prompt_tokens)
        generator = torch.Generator(device=adapter.device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        visual = adapter.encode(video)
        prompt = adapter.build_prompt(question, visual)
        embeds, positions = adapter.prefix_inputs(prompt, visual)
        out = sample(adapter, embeds, positions, n, config, generator=generator)
        lengths = [int(x) for x in out.lengths]
        return Answer(
            texts=[adapter.decode(out.tokens[g, :m]) for g, m in enumerate(lengths)],
            finish_reasons=["stop" if bool(f) else "length" for f in out.finished],
            prompt_tokens=len(prompt),
            completion_tokens=sum(lengths),
        )


class PromptTooLong(ValueError):
    def __init__(self, length: int, limit: int):
        super().__init__(f"the prompt has {length} tokens (video included), above the limit of {limit}")
        self.length, self.limit = length, limit
