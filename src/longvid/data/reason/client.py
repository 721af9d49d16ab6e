"""Chat completions for the pipeline: any OpenAI-compatible server, or a longvid model in-process.

`ChatClient` wraps the official `openai` async client with its own retry loop (the client's own
retries are off, so every retry is counted): 429, 5xx, timeouts and dropped connections are
retried with exponential backoff (a server's `Retry-After` is honoured up to the cap); other HTTP
errors (400, 404, ...) are not retried. A request that still fails raises `RequestFailed`, which
the runner counts and leaves out of the journal so a resumed run tries it again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import openai

log = logging.getLogger(__name__)

RETRIABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)


class RequestFailed(Exception):
    """A request that did not succeed (after retries, or with a non-retriable error)."""


@dataclass
class Reply:
    text: str
    finish_reason: str | None


@dataclass
class RetryPolicy:
    retries: int = 4
    backoff: float = 1.0  # seconds before the first retry; doubled each time
    max_backoff: float = 30.0
    timeout: float = 300.0  # seconds per request

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        wait = self.backoff * 2**attempt
        if retry_after is not None:
            try:
                wait = max(wait, float(retry_after))
            except ValueError:
                pass
        return min(wait, self.max_backoff)


@dataclass
class ChatClient:
    """One model on one OpenAI-compatible server (`base_url` ends in /v1)."""

    base_url: str
    model: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    api_key: str = "unused"
    retries_done: int = 0

    def __post_init__(self) -> None:
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=self.policy.timeout
        )

    async def complete(self, messages: list[dict], *, max_tokens: int, temperature: float) -> Reply:
        for attempt in range(self.policy.retries + 1):
            try:
                out = await self._client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature
                )
            except RETRIABLE as e:
                if attempt == self.policy.retries:
                    raise RequestFailed(f"{self.base_url}: {_describe(e)} after {attempt + 1} attempts") from e
                response = getattr(e, "response", None)
                wait = self.policy.delay(attempt, response.headers.get("retry-after") if response is not None else None)
                log.info("%s: %s; retrying in %.2fs", self.base_url, _describe(e), wait)
                self.retries_done += 1
                await asyncio.sleep(wait)
                continue
            except openai.APIStatusError as e:
                raise RequestFailed(f"{self.base_url}: HTTP {e.status_code}: {e.message}") from e
            except openai.APIError as e:  # e.g. a 200 whose body is not a chat completion
                raise RequestFailed(f"{self.base_url}: {type(e).__name__}: {e}") from e
            if not out.choices:
                raise RequestFailed(f"{self.base_url}: a reply with no choices")
            choice = out.choices[0]
            return Reply(choice.message.content or "", choice.finish_reason)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._client.close()


def _describe(e: Exception) -> str:
    if isinstance(e, openai.APIStatusError):
        return f"HTTP {e.status_code}"
    return type(e).__name__


class InProcessClient:
    """Captions from a longvid model loaded in this process (no server): the same `answer_video`
    path `longvid serve` uses. Requests run one at a time in a worker thread."""

    def __init__(self, engine, *, num_frames: int = 16, size: int | None = 224, seed: int = 0):
        self.engine, self.num_frames, self.size, self.seed = engine, num_frames, size, seed
        self.model = "in-process"
        self.retries_done = 0
        self._lock = asyncio.Lock()

    def _answer(self, messages: list[dict], max_tokens: int, temperature: float) -> Reply:
        from ...model.sampling import SamplingConfig
        from ...video.decode import decode

        parts = messages[-1]["content"]
        url = next(p["video_url"]["url"] for p in parts if p["type"] == "video_url")
        text = "\n".join(p["text"] for p in parts if p["type"] == "text")
        path = Path(unquote(urlparse(url).path))
        frames = decode(path, num_frames=self.num_frames, size=(self.size, self.size) if self.size else None)
        answer = self.engine.answer_video(frames, text, 1, SamplingConfig(max_tokens, temperature), seed=self.seed)
        return Reply(answer.texts[0], answer.finish_reasons[0])

    async def complete(self, messages: list[dict], *, max_tokens: int, temperature: float) -> Reply:
        from ...errors import VideoError

        async with self._lock:
            try:
                return await asyncio.to_thread(self._answer, messages, max_tokens, temperature)
            except VideoError as e:
                raise RequestFailed(str(e)) from e

    async def close(self) -> None:
        pass
