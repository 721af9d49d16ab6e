"""Synthetic long-video multiple-choice tasks: seeded, vectorised, with bold evidence.

At 56x56 a tiny Qwen2.5-VL turns each pair of frames into 2x2 tokens, one per 28x28 quadrant, so
every event here is drawn at quadrant scale in a few very distinct colours, and lasts whole frame
pairs starting on an even frame. Options keep a canonical order (the answer letter is set by the
video, never by the text) unless shuffled; the answer is uniform over A-D.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode

import numpy as np

from ..data.schema import OPTION_LETTERS, Sample
from ..errors import DataError
from ..video.decode import Frames

CATEGORIES = ("temporal", "goal", "spatial", "plot")  # LongVideo-Reason's four
ALL_TASKS = (*CATEGORIES, "needle")

# Far apart in both RGB and the YUV chroma plane, so they survive yuv420p + libx264.
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 70), "blue": (40, 90, 230), "yellow": (235, 210, 40)}
COLOUR_NAMES = tuple(COLOURS)
PALETTE = np.array(list(COLOURS.values()), np.uint8)
BACKGROUND = np.array((60, 60, 60), np.uint8)
TARGET = np.array((200, 200, 200), np.uint8)
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
PHASES = ("beginning", "early middle", "late middle", "end")
LETTERS = OPTION_LETTERS[:4]

NOMINAL_FPS = 2.0  # timestamps of rendered specs: 2 fps makes even 256 frames a two-minute video
NOISE = 6  # per-pixel noise amplitude: realism without hiding anything
MIN_FRAMES, MAX_FRAMES = 8, 16384
MIN_SIZE, MAX_SIZE = 16, 1024
SPEC_PREFIX = "synth:"


class Generated(NamedTuple):
    frames: np.ndarray  # uint8 [T, H, W, 3]
    question: str
    options: list[str]
    answer: str  # letter
    reasoning: str


def _conclusion(letter: str) -> str:
    return f"So the answer is {letter}."


def _result(
    frames: np.ndarray, question: str, options: Sequence[str], answer: int, evidence: str
) -> Generated:
    letter = LETTERS[answer]
    return Generated(frames, question, list(options), letter, f"{evidence} {_conclusion(letter)}")


def _pick_answer(rng: np.random.Generator, answer: str | None) -> int:
    """Draw the canonical answer index; a forced letter still consumes the draw (same stream after)."""
    drawn = int(rng.integers(4))
    if answer is None:
        return drawn
    if answer not in LETTERS:
        raise ValueError(f"answer must be one of {', '.join(LETTERS)}, got {answer!r}")
    return LETTERS.index(answer)


def _num_pairs(num_frames: int) -> int:
    return num_frames // 2


def _segments(rng: np.random.Generator, pairs: int, k: int) -> np.ndarray:
    """Random cut of `pairs` temporal patches into k contiguous non-empty segments: k+1 bounds."""
    if pairs < k:
        raise ValueError(f"{2 * k} frames are needed for {k} segments, got {2 * pairs}")
    cuts = np.sort(rng.choice(np.arange(1, pairs), k - 1, replace=False))
    return np.concatenate([[0], cuts, [pairs]])


def _quadrant_images(quads: np.ndarray, size: int) -> np.ndarray:
    """[P, 2, 2, 3] quadrant colours -> [P, size, size, 3] images."""
    half = size // 2
    return np.ascontiguousarray(
        np.broadcast_to(quads[:, :, None, :, None, :], (len(quads), 2, half, 2, half, 3)).reshape(
            len(quads), size, size, 3
        )
    )


def _frames(rng: np.random.Generator, pair_images: np.ndarray, num_frames: int) -> np.ndarray:
    """Expand per-pair images to frames (an odd last frame joins the last pair) and add mild noise."""
    pair = np.minimum(np.arange(num_frames) // 2, len(pair_images) - 1)
    size = pair_images.shape[1]
    # A small bank of noise images, reused per frame: cheap for thousands of frames.
    bank = rng.integers(-NOISE, NOISE + 1, (8, size, size, 3), dtype=np.int16)
    noisy = pair_images[pair].astype(np.int16) + bank[rng.integers(0, len(bank), num_frames)]
    return np.clip(noisy, 0, 255).astype(np.uint8)


def temporal(
    rng: np.random.Generator, num_frames: int, size: int, *, answer: str | None = None, distractors: int = 1
) -> Generated:
    """The screen flashes one colour during one quarter of the video; when?"""
    phase = _pick_answer(rng, answer)
    if not 0 <= distractors <= 3:
        raise ValueError(f"distractors must be in 0..3, got {distractors}")
    colours = rng.permutation(4)[: 1 + distractors]
    phases = [phase, *rng.permutation([q for q in range(4) if q != phase])[:distractors]]
    pairs = _num_pairs(num_frames)
    quads = np.broadcast_to(BACKGROUND, (pairs, 2, 2, 3)).copy()
    for colour, q in zip(colours, phases, strict=True):
        a, b = q * pairs // 4, (q + 1) * pairs // 4
        start = a + (b - a) // 4  # the middle half of the quarter, well inside it
        quads[start : start + max(1, (b - a) // 2)] = PALETTE[colour]
    name = COLOUR_NAMES[colours[0]]
    evidence = f"The {name} flash fills the screen in the {PHASES[phase]} of the video"
    if distractors:
        evidence += f", while the {COLOUR_NAMES[colours[1]]} flash comes in the {PHASES[phases[1]]}"
    frames = _frames(rng, _quadrant_images(quads, size), num_frames)
    return _result(frames, f"When does the {name} flash happen in the video?", PHASES, phase, evidence + ".")


def goal(
    rng: np.random.Generator, num_frames: int, size: int, *, answer: str | None = None, progress: float = 0.5
) -> Generated:
    """A quadrant-sized block leaves the centre towards one of four corner targets; which one?"""
    corner = _pick_answer(rng, answer)
    if not 0.25 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0.25, 1], got {progress}")
    colour = int(rng.integers(4))
    pairs, block, mark = _num_pairs(num_frames), size // 2, size // 8
    row, col = divmod(corner, 2)
    # Steady motion from the centre, `progress` of the way to the corner by the last pair.
    travel = np.linspace(0.0, progress, pairs) * (size - block) / 2
    y0 = (size // 4 + (1 if row else -1) * travel).round().astype(int) // 2 * 2
    x0 = (size // 4 + (1 if col else -1) * travel).round().astype(int) // 2 * 2
    pix = np.arange(size)
    on_y = (pix >= y0[:, None]) & (pix < y0[:, None] + block)
    on_x = (pix >= x0[:, None]) & (pix < x0[:, None] + block)
    scene = np.broadcast_to(BACKGROUND, (size, size, 3)).copy()
    for ys in (slice(0, mark), slice(size - mark, size)):
        for xs in (slice(0, mark), slice(size - mark, size)):
            scene[ys, xs] = TARGET
    images = np.where((on_y[:, :, None] & on_x[:, None, :])[..., None], PALETTE[colour], scene)
    name = COLOUR_NAMES[colour]
    way = ("up" if row == 0 else "down") + " and to the " + ("left" if col == 0 else "right")
    evidence = (
        f"The {name} block starts in the centre and moves steadily {way}, "
        f"towards the {QUADRANTS[corner]} target."
    )
    question = f"The {name} block moves towards one of the four corner targets. Which one is it heading to?"
    return _result(_frames(rng, images, num_frames), question, QUADRANTS, corner, evidence)


def spatial(
    rng: np.random.Generator,
    num_frames: int,
    size: int,
    *,
    answer: str | None = None,
    hops: int = 3,
    distractors: int = 1,
    block: float = 1.0,
) -> Generated:
    """A coloured block hops between quadrants (other colours hop too); where does it end?

    `block` is the block's side as a share of the quadrant's, drawn in the frame's outer corner: at 1
    the block fills its quadrant, and a token's content is the same in every quadrant, so only the
    position encoding tells them apart; at 0.5 it covers one vision patch of its quadrant's token,
    the outer one, so the content itself says where it is (as goal's moving block does).
    """
    final = _pick_answer(rng, answer)
    if not 0 <= hops <= 64 or not 0 <= distractors <= 3:
        raise ValueError(f"hops must be in 0..64 and distractors in 0..3, got {hops} and {distractors}")
    if not 0.25 <= block <= 1.0:
        raise ValueError(f"block must be in [0.25, 1], got {block}")
    colours = rng.permutation(4)[: 1 + distractors]
    bounds = _segments(rng, _num_pairs(num_frames), hops + 1)
    path = [final]
    for _ in range(hops):  # walk backwards from the answer; every hop changes quadrant
        path.insert(0, int(rng.choice([q for q in range(4) if q != path[0]])))
    quads = np.broadcast_to(BACKGROUND, (bounds[-1], 4, 3)).copy()
    for k, q in enumerate(path):
        others = rng.permutation([o for o in range(4) if o != q])[:distractors]
        for colour, where in zip(colours, [q, *others], strict=True):
            quads[bounds[k] : bounds[k + 1], where] = PALETTE[colour]
    name = COLOUR_NAMES[colours[0]]
    if hops:
        route = ", then ".join(f"the {QUADRANTS[q]}" for q in path[1:])
        evidence = (
            f"The {name} block starts in the {QUADRANTS[path[0]]} quadrant and moves to {route}, "
            "where it stays until the end."
        )
    else:
        evidence = f"The {name} block stays in the {QUADRANTS[final]} quadrant throughout the video."
    images = _quadrant_images(quads.reshape(-1, 2, 2, 3), size)
    if block < 1.0:
        side, pix = round(block * size / 2), np.arange(size)
        outer = (pix < side) | (pix >= size - side)  # within `side` of the frame's edge, on either half
        images = np.where((outer[:, None] & outer[None, :])[None, :, :, None], images, BACKGROUND)
    frames = _frames(rng, images, num_frames)
    return _result(frames, f"In which quadrant does the {name} block end up?", QUADRANTS, final, evidence)


def plot(
    rng: np.random.Generator, num_frames: int, size: int, *, answer: str | None = None, ask: str = "any"
) -> Generated:
    """Four full-screen coloured scenes of random lengths play in some order; which came first / last?"""
    target = _pick_answer(rng, answer)
    if ask not in ("first", "last", "any"):
        raise ValueError(f"ask must be 'first', 'last' or 'any', got {ask!r}")
    drawn = ("first", "last")[int(rng.integers(2))]
    ask = drawn if ask == "any" else ask
    rest = [int(c) for c in rng.permutation([c for c in range(4) if c != target])]
    order = [target, *rest] if ask == "first" else [*rest, target]
    bounds = _segments(rng, _num_pairs(num_frames), 4)
    colours = np.repeat(PALETTE[order], np.diff(bounds), axis=0)
    images = np.ascontiguousarray(np.broadcast_to(colours[:, None, None, :], (len(colours), size, size, 3)))
    names = [COLOUR_NAMES[c] for c in order]
    evidence = f"The scenes play in the order {', '.join(names)}: {COLOUR_NAMES[target]} comes {ask}."
    question = f"The video shows four coloured scenes one after another. Which colour appears {ask}?"
    return _result(_frames(rng, images, num_frames), question, COLOUR_NAMES, target, evidence)


def needle(
    rng: np.random.Generator,
    num_frames: int,
    size: int,
    *,
    answer: str | None = None,
    depth: float | None = None,
    length: int = 2,
) -> Generated:
    """A haystack of grey frames hides one coloured flash at `depth` (0 = start, 1 = end).

    The flash lasts `length` frames, rounded down to whole frame pairs (at least one pair).
    """
    colour = _pick_answer(rng, answer)
    drawn = float(rng.uniform())
    depth = drawn if depth is None else depth
    if not 0.0 <= depth <= 1.0 or not 1 <= length <= num_frames:
        raise ValueError(f"depth must be in [0, 1] and length in 1..{num_frames}, got {depth} and {length}")
    pairs = _num_pairs(num_frames)
    greys = rng.integers(70, 190, (pairs, 4), dtype=np.uint8)  # each quadrant its own grey per pair
    quads = np.repeat(greys[..., None], 3, axis=-1)
    span = max(1, length // 2)
    start = round(depth * (pairs - span))
    quads[start : start + span] = PALETTE[colour]
    frames = _frames(rng, _quadrant_images(quads.reshape(-1, 2, 2, 3), size), num_frames)
    name = COLOUR_NAMES[colour]
    evidence = (
        f"Among the grey frames a brief {name} flash appears about {round(100 * depth)}% of the way through."
    )
    question = "A brief coloured flash is hidden among the grey frames. What colour is it?"
    return _result(frames, question, COLOUR_NAMES, colour, evidence)


TASKS: dict[str, Callable[..., Generated]] = {
    "temporal": temporal,
    "goal": goal,
    "spatial": spatial,
    "plot": plot,
    "needle": needle,
}


def _parse_value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _check_args(
    task: str, seed: object, num_frames: object, size: object, task_kwargs: dict[str, object]
) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(num_frames, (int, np.integer)) or not MIN_FRAMES <= num_frames <= MAX_FRAMES:
        raise ValueError(f"frames must be an integer in {MIN_FRAMES}..{MAX_FRAMES}, got {num_frames!r}")
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE or size % 4:
        raise ValueError(f"size must be a multiple of 4 in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    params = inspect.signature(TASKS[task]).parameters.values()
    allowed = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(task_kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for task {task!r}; allowed: {', '.join(allowed)}"
        )


def generate(task: str, seed: int, num_frames: int, size: int = 56, **task_kwargs: object) -> Generated:
    """Run one task's generator with a stream seeded by (task, seed); ValueError on bad arguments."""
    _check_args(task, seed, num_frames, size, task_kwargs)
    rng = np.random.default_rng([zlib.crc32(task.encode()), int(seed)])
    return TASKS[task](rng, int(num_frames), int(size), **task_kwargs)


def make_spec(task: str, seed: int, num_frames: int, size: int = 56, **task_kwargs: object) -> str:
    """`synth:<task>?seed=..&frames=..&size=..[&kwargs, sorted]`."""
    query = {"seed": seed, "frames": num_frames, "size": size, **dict(sorted(task_kwargs.items()))}
    return f"{SPEC_PREFIX}{task}?{urlencode(query)}"


def parse_spec(spec: str) -> tuple[str, int, int, int, dict[str, int | float | str]]:
    """Inverse of `make_spec`: (task, seed, num_frames, size, task_kwargs); ValueError when malformed."""
    if not isinstance(spec, str) or not spec.startswith(SPEC_PREFIX):
        raise ValueError(f"a synthetic video spec starts with {SPEC_PREFIX!r}, got {spec!r}")
    task, _, query = spec[len(SPEC_PREFIX) :].partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as e:
        raise ValueError(f"malformed query in spec {spec!r}: {e}") from e
    values = {k: _parse_value(v) for k, v in pairs}
    if len(values) != len(pairs):
        raise ValueError(f"repeated key in spec {spec!r}")
    missing = [k for k in ("seed", "frames", "size") if k not in values]
    if missing:
        raise ValueError(f"spec {spec!r} lacks {', '.join(missing)}")
    seed, frames, size = (values.pop(k) for k in ("seed", "frames", "size"))
    for name, value in (("seed", seed), ("frames", frames), ("size", size)):
        if not isinstance(value, int):
            raise ValueError(f"{name} in spec {spec!r} must be an integer, got {value!r}")
    return task, seed, frames, size, values


def check_spec(spec: str) -> None:
    """Cheap validation of a spec (format, task, ranges, option names) without rendering it."""
    task, seed, num_frames, size, kwargs = parse_spec(spec)
    _check_args(task, seed, num_frames, size, kwargs)


def make_sample(
    task: str,
    seed: int,
    num_frames: int,
    size: int = 56,
    *,
    shuffle_options: bool = False,
    **task_kwargs: object,
) -> tuple[Sample, np.ndarray]:
    """One synthetic question with its frames; `video` is the spec that regenerates them."""
    gen = generate(task, seed, num_frames, size, **task_kwargs)
    options, letter, reasoning = gen.options, gen.answer, gen.reasoning
    if shuffle_options:
        # Its own stream: shuffling never changes the frames of a spec.
        perm = np.random.default_rng([zlib.crc32(task.encode()), int(seed), 1]).permutation(len(options))
        options = [options[p] for p in perm]
        new = LETTERS[list(perm).index(LETTERS.index(letter))]
        reasoning = reasoning.removesuffix(_conclusion(letter)) + _conclusion(new)
        letter = new
    sample = Sample(
        id=f"{task}-{seed}",
        video=make_spec(task, seed, num_frames, size, **task_kwargs),
        question=gen.question,
        answer=letter,
        category=task,
        options=tuple(options),
        reasoning=reasoning,
    )
    return sample, gen.frames


def render_spec(spec: str) -> Frames:
    """Regenerate a spec's frames, timestamped at NOMINAL_FPS; DataError when the spec is invalid."""
    try:
        task, seed, num_frames, size, kwargs = parse_spec(spec)
        frames = generate(task, seed, num_frames, size, **kwargs).frames
    except (ValueError, TypeError) as e:
        raise DataError(f"invalid synthetic video spec {spec!r}: {e}") from e
    return Frames(frames, np.arange(len(frames), dtype=np.float64) / NOMINAL_FPS, spec)
