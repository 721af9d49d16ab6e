"""Answer one question about one video: encode the video once, prefill once, sample N responses.

Evaluation and the difficulty filter answer `Sample`s through `respond`, so they see the same
prompt (`inputs.question_text`) and the same visual embeddings as training does.
`respond_to_prompt` is for prompt text written elsewhere (an lmms-eval task's), used verbatim.
"""

from __future__ import annotations

import torch

from .data.schema import Sample
from .inputs import question_text
from .model.adapter import VLMAdapter
from .model.compress import Compressor
from .model.sampling import SamplingConfig, sample
from .video.decode import Frames


def respond(
    adapter: VLMAdapter,
    sample_row: Sample,
    frames: Frames,
    num_responses: int,
    config: SamplingConfig,
    *,
    encode_chunk: int | None = None,
    generator: torch.Generator | None = None,
    compressor: Compressor | None = None,
) -> list[str]:
    """`num_responses` decoded answers to one question (with `compressor`, the video is prefilled
    window by window into visual summary tokens): the user turn training writes for the sample."""
    return respond_to_prompt(
        adapter, question_text(sample_row), frames, num_responses, config,
        encode_chunk=encode_chunk, generator=generator, compressor=compressor,
    )


@torch.no_grad()
def respond_to_prompt(
    adapter: VLMAdapter,
    text: str,
    frames: Frames,
    num_responses: int,
    config: SamplingConfig,
    *,
    encode_chunk: int | None = None,
    generator: torch.Generator | None = None,
    compressor: Compressor | None = None,
) -> list[str]:
    """`num_responses` decoded answers to a user turn `text` about the video."""
    visual = adapter.encode(adapter.preprocess(frames.pixels, frames.timestamps), chunk_patches=encode_chunk)
    prompt = adapter.build_prompt(text, visual)
    embeds, positions = adapter.prefix_inputs(prompt, visual)
    if compressor is not None:
        out = compressor.sample(adapter, prompt, embeds, positions, num_responses, config, generator=generator)
    else:
        out = sample(adapter, embeds, positions, num_responses, config, generator=generator, deepstack=visual.deepstack)
    return [adapter.decode(out.tokens[g, : int(n)]) for g, n in enumerate(out.lengths)]
