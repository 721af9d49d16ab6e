"""Answer one question about one video: encode the video once, prefill once, sample N responses.

Evaluation and the difficulty filter both answer through `respond`, so they see the same prompt
and the same visual embeddings as training does (`inputs.encode_sample`).
"""

from __future__ import annotations

import torch

from .data.schema import Sample
from .inputs import encode_sample
from .model.adapter import VLMAdapter
from .model.compress import Compressor
from .model.sampling import SamplingConfig, sample
from .video.decode import Frames


@torch.no_grad()
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
    window by window into visual summary tokens)."""
    enc = encode_sample(adapter, sample_row, frames.pixels, frames.timestamps, chunk=encode_chunk)
    embeds, positions = adapter.prefix_inputs(enc.prompt, enc.visual)
    if compressor is not None:
        out = compressor.sample(adapter, enc.prompt, embeds, positions, num_responses, config, generator=generator)
    else:
        out = sample(adapter, embeds, positions, num_responses, config, generator=generator, deepstack=enc.visual.deepstack)
    return [adapter.decode(out.tokens[g, : int(n)]) for g, n in enumerate(out.lengths)]
