"""Synthetic long-video tasks (`tasks`), their dataset writer (`writer`) and the tiny tokenizer's
corpus (`corpus`).

A room of its own: it imports data/ and video/ (and, for the corpus only, the prompt text of
`inputs`); nothing imports it but the demo, the CLI and tests. Importing it registers the `synth:`
video source, so datasets of specs load through data/ without data/ knowing this room.
"""

from ..video.sources import register_source
from .tasks import (
    ALL_TASKS,
    CATEGORIES,
    NOMINAL_FPS,
    SPEC_PREFIX,
    TASKS,
    Generated,
    check_spec,
    generate,
    make_sample,
    make_spec,
    parse_spec,
    render_spec,
)
from .haystack import needle_haystack
from .writer import write_dataset

register_source(SPEC_PREFIX, render_spec, check_spec)

__all__ = [
    "ALL_TASKS",
    "CATEGORIES",
    "NOMINAL_FPS",
    "needle_haystack",
    "SPEC_PREFIX",
    "TASKS",
    "Generated",
    "check_spec",
    "generate",
    "make_sample",
    "make_spec",
    "parse_spec",
    "render_spec",
    "write_dataset",
]
