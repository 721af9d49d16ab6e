"""A small OpenAI-compatible server that replays recorded replies, for the reasoning-pipeline tests.

No reasoning LLM can run here, so the tests talk HTTP to this server, as the pipeline would to
vLLM or SGLang. `RECORDED` holds what a reasoning model might answer, per task, including
malformed replies; `Faults` injects HTTP 500, 429 and slow (timed-out) replies on the first call
of chosen tasks, or a server that fails hard after N replies.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from longvid.data.reason import prompts


def _item(question, options, answer, reasoning, timestamps):
    return {"question": question, "options": options, "answer": answer, "reasoning": reasoning, "timestamps": timestamps}


GOOD_TEMPORAL = _item(
    "When does the screen first turn bright?", ["In the first clip", "In the second clip", "In the third clip", "Never"],
    "B", "At 1.0s the screen is dark; at 5.0s it is brighter, so it first turns bright in the second clip.", [1.0, 5.0])
GOOD_PLOT = _item(
    "How does the video end compared with its start?", ["Brighter", "Darker", "The same", "It cuts to black"],
    "A", "At 0.5s the frame is dark and at 14.0s it is bright: the video ends brighter.", [0.5, 14.0])
GOOD_SPATIAL = _item(
    "Where is the bright area at the end?", ["Top left", "Everywhere", "Bottom right", "Centre only"],
    "B", "At 13.0s the whole frame is uniformly bright, so it is everywhere.", [13.0])

RECORDED = {
    # A reasoning model's reply: its thoughts first, then the JSON object.
    "temporal": "<think>The captions say the screen brightens.</think>\n" + json.dumps({"items": [GOOD_TEMPORAL]}),
    # Chatter around the JSON: malformed, must be rejected (never repaired).
    "goal": 'Sure! Here is the question you asked for: {"items": []}',
    # Two items: one good, one whose answer is not a letter A-D.
    "plot": json.dumps({"items": [GOOD_PLOT, {**GOOD_PLOT, "question": "Which is brighter?", "answer": "E"}]}),
    # Fenced JSON: one good item, one with duplicate options, one citing a time past the end.
    "spatial": "```json\n" + json.dumps({"items": [
        GOOD_SPATIAL,
        {**GOOD_SPATIAL, "question": "Where?", "options": ["Left", "left", "Right", "Top"]},
        {**GOOD_SPATIAL, "question": "Where later?", "timestamps": [95.0]},
    ]}) + "\n```",
    "order": json.dumps({"events": [
        {"event": "the frame is almost black", "time": 1.0},
        {"event": "a dim grey frame", "time": 5.0},
        {"event": "a mid grey frame", "time": 9.0},
        {"event": "a bright frame", "time": 13.0},
    ]}),
}
CAPTION = "A flat grey frame that slowly gets brighter."


def task_of(body: dict) -> str:
    """Which pipeline request this is: caption, refine:<category-guess>, or a generation category."""
    messages = body["messages"]
    user = messages[-1]["content"]
    if isinstance(user, list):
        return "caption"
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    if system == prompts.REFINE_SYSTEM:
        return "refine"
    if prompts.ORDER_FORMAT in user:
        return "order"
    return next(c for c, guide in prompts.CATEGORY_GUIDES.items() if guide in user)


def caption(body: dict) -> str:
    """The recorded caption, tagged with the clip's folder so each video's timeline differs."""
    url = next(p["video_url"]["url"] for p in body["messages"][-1]["content"] if p["type"] == "video_url")
    return f"{CAPTION} ({PurePosixPath(url).parent.name})"


def refined(body: dict) -> str:
    user = body["messages"][-1]["content"]
    question = user.split("\n", 1)[0]
    if "How does the video end" in question:
        return json.dumps({"reasoning": ""})  # an empty rewrite: rejected at refine
    return json.dumps({"reasoning": "Checking the video at the cited times: " + user.split("Reasoning: ", 1)[1].split("\n")[0]})


@dataclass
class Faults:
    """First call of each listed task (per distinct request): 500, 429 or a reply slower than the
    client's timeout. `fail_after`: every reply after that many successful ones is HTTP 500."""

    error_500: tuple[str, ...] = ()
    error_429: tuple[str, ...] = ()
    slow: tuple[str, ...] = ()
    slow_seconds: float = 2.0
    fail_after: int | None = None
    delay: float = 0.0  # seconds before every reply (a slow server, to kill a run midway)


@dataclass
class ReplayServer:
    faults: Faults = field(default_factory=Faults)
    calls: Counter = field(default_factory=Counter)  # per task
    statuses: Counter = field(default_factory=Counter)
    served: int = 0

    def __post_init__(self) -> None:
        self._seen: Counter = Counter()
        self._lock = threading.Lock()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "replay", "object": "model", "created": 0, "owned_by": "test"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            task = task_of(body)
            fingerprint = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
            with self._lock:
                self.calls[task] += 1
                self._seen[fingerprint] += 1
                first = self._seen[fingerprint] == 1
                broken = self.faults.fail_after is not None and self.served >= self.faults.fail_after
            if broken or (first and task in self.faults.error_500):
                return self._error(500, "injected server error")
            if first and task in self.faults.error_429:
                return self._error(429, "injected rate limit", {"Retry-After": "0"})
            if first and task in self.faults.slow:
                await asyncio.sleep(self.faults.slow_seconds)
            await asyncio.sleep(self.faults.delay)
            text = caption(body) if task == "caption" else refined(body) if task == "refine" else RECORDED[task]
            with self._lock:
                self.served += 1
                self.statuses[200] += 1
            return {
                "id": "replay", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }

        return app

    def _error(self, status: int, message: str, headers: dict | None = None) -> JSONResponse:
        with self._lock:
            self.statuses[status] += 1
        body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        return JSONResponse(body, status_code=status, headers=headers)
