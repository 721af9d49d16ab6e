"""The pipeline's stages as pure functions: a record in, a record (or records) or a rejection out.

Records are plain JSON-able dicts, so the same functions serve the asyncio runner, the Ray Data
runner and the journal. Model output is parsed, never executed and never repaired: anything that
is not the JSON asked for is a `Rejected` with a reason, counted in the summary.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import VideoError
from ...video.clips import cut_clips
from . import prompts

LETTERS = ("A", "B", "C", "D")
QUESTION_CATEGORIES = ("temporal", "goal", "plot", "spatial")
ORDER = "order"  # Video-XL VICO-style: put key events from different clips in order
CATEGORIES = QUESTION_CATEGORIES + (ORDER,)


@dataclass(frozen=True)
class Rejected:
    """Why a stage refused its input: `code` is counted in the summary, `detail` says exactly what."""

    code: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


# -- segment -------------------------------------------------------------------------------------


def segment(video: dict, clips_dir: str | Path, clip_seconds: float, mode: str = "auto") -> dict | Rejected:
    """`{"video", "path"}` → the video with its `duration` and `clips` (true start/end seconds)."""
    try:
        clips = cut_clips(video["path"], Path(clips_dir), clip_seconds, mode=mode)
    except VideoError as e:
        return Rejected("unreadable video", str(e))
    duration = max(c.end for c in clips)
    return {**video, "duration": duration, "clips": [c.to_dict() for c in clips]}


# -- caption -------------------------------------------------------------------------------------


def caption_messages(clip: dict) -> list[dict]:
    """One user turn with the clip file (vLLM's video_url part) and our caption prompt."""
    url = Path(clip["path"]).resolve().as_uri()
    return [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url}},
        {"type": "text", "text": prompts.CAPTION},
    ]}]


def parse_caption(text: str | None) -> str | Rejected:
    caption = (text or "").strip()
    if not caption:
        return Rejected("empty caption")
    return caption


def merge_captions(clips: list[dict], captions: dict[int, str]) -> str:
    """The video's timeline: one line per captioned clip in time order, `[start-end s] caption`,
    with the clip's true times in seconds (never scaled)."""
    lines = []
    for clip in sorted(clips, key=lambda c: c["start"]):
        if clip["index"] in captions:
            lines.append(f"[{clip['start']:.1f}s-{clip['end']:.1f}s] {captions[clip['index']]}")
    return "\n".join(lines)


# -- generate ------------------------------------------------------------------------------------


def generate_messages(category: str, timeline: str, duration: float, count: int) -> list[dict]:
    if category == ORDER:
        user = prompts.order_user(timeline, duration)
    else:
        user = prompts.generate_user(category, timeline, duration, count)
    return [{"role": "system", "content": prompts.GENERATE_SYSTEM}, {"role": "user", "content": user}]


_THINK = re.compile(r"\A\s*<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"\A```(?:json)?\s*\n(.*)\n```\Z", re.DOTALL)


def parse_json_reply(text: str | None) -> dict | Rejected:
    """The one JSON object a reply must be. A reasoning model's leading `<think>…</think>` and a
    single ```json fence around the whole object are the only wrappers accepted."""
    body = _THINK.sub("", text or "", count=1).strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body:
        return Rejected("empty reply")
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        return Rejected("not JSON", f"{e.msg} at line {e.lineno} column {e.colno}")
    if not isinstance(value, dict):
        return Rejected("not a JSON object", type(value).__name__)
    return value


def parse_items(text: str | None, category: str) -> list[dict] | Rejected:
    """The `items` of a generation reply, each tagged with its category (checked later by `validate`)."""
    reply = parse_json_reply(text)
    if isinstance(reply, Rejected):
        return reply
    items = reply.get("items")
    if not isinstance(items, list) or not items:
        return Rejected("no items", "the reply has no non-empty 'items' list")
    if not all(isinstance(item, dict) for item in items):
        return Rejected("item not an object")
    return [{**item, "category": category} for item in items]


def parse_events(text: str | None) -> list[dict] | Rejected:
    reply = parse_json_reply(text)
    if isinstance(reply, Rejected):
        return reply
    events = reply.get("events")
    if not isinstance(events, list) or len(events) != 4:
        return Rejected("events", f"expected a list of 4 events, got {type(events).__name__} of {_size(events)}")
    for i, e in enumerate(events):
        if not isinstance(e, dict) or not isinstance(e.get("event"), str) or not e["event"].strip():
            return Rejected("events", f"events[{i}] has no 'event' text")
        if not _is_number(e.get("time")):
            return Rejected("events", f"events[{i}] has no numeric 'time'")
    return events


def order_item(events: list[dict], video: dict) -> dict | Rejected:
    """A question asking for the order of four events from four different clips. The true order
    comes from the events' times (checked against the clips), not from the model's claim; the
    options are four different orders, the right one at a letter drawn from the video's name."""
    duration, clips = video["duration"], video["clips"]
    times = [float(e["time"]) for e in events]
    for t in times:
        if not 0 <= t <= duration:
            return Rejected("timestamp outside video", f"{t:.1f}s not in 0-{duration:.1f}s")
    owners = [_clip_of(t, clips) for t in times]
    if len(set(owners)) != 4:
        return Rejected("events not in different clips", f"clips {owners}")
    texts = [e["event"].strip() for e in events]
    if len(set(t.lower() for t in texts)) != 4:
        return Rejected("duplicate events")
    rng = np.random.default_rng(_stable_int(video["video"], ORDER))
    shown = rng.permutation(4)  # the order the events are listed in the question
    # Event numbers as listed; the correct answer lists them by time.
    numbered = {int(k): i + 1 for i, k in enumerate(shown)}
    truth = tuple(numbered[k] for k in np.argsort(times, kind="stable"))
    others = [p for p in itertools.permutations((1, 2, 3, 4)) if p != truth]
    picks = [others[i] for i in rng.choice(len(others), 3, replace=False)]
    letter = int(rng.integers(4))
    orders = picks[:letter] + [truth] + picks[letter:]
    listing = "; ".join(f"({i + 1}) {texts[k]}" for i, k in enumerate(shown))
    steps = [f"checking the video at {times[k]:.1f}s, event ({numbered[k]}) {texts[k]}" for k in np.argsort(times, kind="stable")]
    return {
        "category": ORDER,
        "question": f"In what order do these events happen in the video? {listing}",
        "options": [", ".join(map(str, o)) for o in orders],
        "answer": LETTERS[letter],
        "reasoning": "; ".join(steps) + f". So the order is {', '.join(map(str, truth))}, option {LETTERS[letter]}.",
        "timestamps": sorted(times),
    }


# -- refine --------------------------------------------------------------------------------------


def refine_messages(item: dict) -> list[dict]:
    user = prompts.refine_user(item["question"], item["options"], item["answer"], item["reasoning"])
    return [{"role": "system", "content": prompts.REFINE_SYSTEM}, {"role": "user", "content": user}]


def parse_refined(text: str | None) -> str | Rejected:
    reply = parse_json_reply(text)
    if isinstance(reply, Rejected):
        return reply
    reasoning = reply.get("reasoning")
    if not isinstance(reasoning, str) or not reasoning.strip():
        return Rejected("no reasoning", "the reply has no non-empty 'reasoning' string")
    return reasoning.strip()


def apply_refinement(item: dict, reasoning: str) -> dict:
    """The item with only its reasoning replaced: question, options and answer stay as generated."""
    return {**item, "reasoning": reasoning, "refined": True}


# -- validate ------------------------------------------------------------------------------------


_LETTER_PREFIX = re.compile(r"\A\(?[A-Da-d][.):]\s")


def validate(item: dict, duration: float) -> dict | Rejected:
    """Four distinct non-empty options without letter prefixes, answer among A-D, a known category,
    a question and reasoning, and every cited timestamp inside the video."""
    if item.get("category") not in CATEGORIES:
        return Rejected("unknown category", repr(item.get("category")))
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        return Rejected("no question")
    options = item.get("options")
    if not isinstance(options, list) or len(options) != 4:
        return Rejected("not four options", f"got {type(options).__name__} of {_size(options)}")
    if not all(isinstance(o, str) and o.strip() for o in options):
        return Rejected("empty option")
    if any(_LETTER_PREFIX.match(o.strip()) for o in options):
        return Rejected("option has a letter prefix", next(o for o in options if _LETTER_PREFIX.match(o.strip())))
    if len({o.strip().lower() for o in options}) != 4:
        return Rejected("duplicate options")
    if item.get("answer") not in LETTERS:
        return Rejected("answer not among A-D", repr(item.get("answer")))
    reasoning = item.get("reasoning")
    if not isinstance(reasoning, str) or not reasoning.strip():
        return Rejected("no reasoning")
    stamps = item.get("timestamps")
    if not isinstance(stamps, list) or not stamps or not all(_is_number(t) for t in stamps):
        return Rejected("no timestamps", "'timestamps' must be a non-empty list of seconds")
    outside = [t for t in stamps if not 0 <= float(t) <= duration]
    if outside:
        return Rejected("timestamp outside video", f"{float(outside[0]):.1f}s not in 0-{duration:.1f}s")
    return {
        "category": item["category"],
        "question": question.strip(),
        "options": [o.strip() for o in options],
        "answer": item["answer"],
        "reasoning": reasoning.strip(),
        "timestamps": [float(t) for t in stamps],
        "refined": bool(item.get("refined", False)),
    }


def to_row(item: dict, video: dict, index: int, video_field: str) -> dict:
    """A `Sample` row (see data/schema.py); `video_field` is the path relative to the dataset file."""
    return {
        "id": f"{video['video']}#{item['category']}-{index}",
        "video": video_field,
        "question": item["question"],
        "options": item["options"],
        "answer": item["answer"],
        "category": item["category"],
        "reasoning": item["reasoning"],
        "timestamps": item["timestamps"],
        "duration": video["duration"],
        "refined": item["refined"],
    }


# -- helpers -------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _size(value: Any) -> int | str:
    return len(value) if isinstance(value, (list, dict, str)) else "?"


def _clip_of(t: float, clips: list[dict]) -> int:
    for clip in clips:
        if clip["start"] <= t < clip["end"]:
            return clip["index"]
    return clips[-1]["index"]


def _stable_int(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest(), "big")


def shard_of(video_id: str, num_shards: int) -> int:
    """The shard a video belongs to: a hash of its id, the same on every machine and run."""
    return _stable_int(video_id) % num_shards
