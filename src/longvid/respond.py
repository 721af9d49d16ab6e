"""Answer questions about videos: encode each video once, prefill once, sample N responses.

Evaluation and the difficulty filter answer `Sample`s through `respond_samples`, so they see the
same prompt (`inputs.question_text`) and the same visual embeddings as training does; several
questions are decoded as one batch (`sampling.sample_batch`), each from its own random stream.
`respond_to_prompt` is for prompt text written elsewhere (an lmms-eval task's), used verbatim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data.schema import Sample
from .inputs import question_text
from .model.adapter import VLMAdapter
from .model.compress import Compressor, windowed_prefill
from .model.sampling import SamplingConfig, sample_batch
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
    return respond_samples(
        adapter, [sample_row], [frames], num_responses, config, encode_chunk=encode_chunk,
        generators=None if generator is None else [generator], compressor=compressor,
    )[0]


def respond_samples(
    adapter: VLMAdapter,
    samples: Sequence[Sample],
    frames: Sequence[Frames],
    num_responses: int,
    config: SamplingConfig,
    **kwargs,
) -> list[list[str]]:
    """`respond` for several questions at once, decoded as one batch (`respond_to_prompts`)."""
    return respond_to_prompts(adapter, [question_text(s) for s in samples], frames, num_responses, config, **kwargs)


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
    return respond_to_prompts(
        adapter, [text], [frames], num_responses, config, encode_chunk=encode_chunk,
        generators=None if generator is None else [generator], compressor=compressor,
    )[0]


@torch.no_grad()
def respond_to_prompts(
    adapter: VLMAdapter,
    texts: Sequence[str],
    frames: Sequence[Frames],
    num_responses: int,
    config: SamplingConfig,
    *,
    encode_chunk: int | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    compressor: Compressor | None = None,
) -> list[list[str]]:
    """`num_responses` answers to each user turn `texts[b]` about the video `frames[b]`, all B x N
    decoded in one loop; prompt b draws only from `generators[b]`, so its answers are the ones a
    one-prompt call with that generator gives (up to float rounding of the padded batch)."""
    if len(texts) != len(frames):
        raise ValueError(f"{len(texts)} prompts for {len(frames)} videos")
    prefixes, deepstacks, prefilled = [], [], []
    for text, video in zip(texts, frames):
        visual = adapter.encode(adapter.preprocess(video.pixels, video.timestamps), chunk_patches=encode_chunk)
        prompt = adapter.build_prompt(text, visual)
        embeds, positions = adapter.prefix_inputs(prompt, visual)
        if compressor is None:
            prefixes.append((embeds, positions))
            deepstacks.append(visual.deepstack)
            prefilled.append(None)
        else:
            layout = compressor.layout(prompt, embeds, positions)
            pre = windowed_prefill(adapter, layout)
            prefixes.append((layout.embeds, layout.positions))
            deepstacks.append(None)
            prefilled.append((pre.last_hidden[-1], pre.cache))
    outs = sample_batch(adapter, prefixes, num_responses, config, generators=generators, deepstacks=deepstacks, prefilled=prefilled)
    return [[adapter.decode(out.tokens[g, : int(n)]) for g, n in enumerate(out.lengths)] for out in outs]
