"""`longvid serve`: a longvid model behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

Routes: `GET /v1/models`, `POST /v1/chat/completions` (one user turn: text parts plus at most one
`{"type": "video_url", "video_url": {"url": ...}}` part naming a local file, a path relative to
the video root or a `file://` URL inside it). Errors use OpenAI's JSON shape, so the official
`openai` client raises its usual exception types:

- 400 a malformed request (the `param` names the field), an unsupported feature, an unreadable video
- 403 a video path outside `--video-root` (symlinks resolved first)
- 404 a missing video file, an unknown model name or route
- 413 absurd sizes: a body above `max_body_bytes`, more than `max_frames` frames, `n` above `max_n`,
  `max_tokens` above `max_new_tokens`, or a prompt above `max_prompt_tokens`
- 429 more than `max_concurrency` requests generating plus `max_queue` waiting: excess requests
  are refused at once with `Retry-After` rather than queued without bound

Decoding and generation run in a worker thread, so the event loop keeps answering (429s, model
lists) while a request generates.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import VideoError
from ..model.sampling import SamplingConfig
from ..video.decode import decode
from .engine import Engine, PromptTooLong
from .protocol import ChatRequest, TextPart, VideoPart, error_body, first_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeLimits:
    num_frames: int = 32  # frames sampled per video when the request does not say
    size: int | None = 224  # square side frames are resized to; None keeps the decoded size
    max_frames: int = 512
    max_n: int = 64
    max_new_tokens: int = 4096
    default_max_tokens: int = 256
    max_prompt_tokens: int = 32768
    max_body_bytes: int = 1 << 20
    max_concurrency: int = 1
    max_queue: int = 8

    def __post_init__(self) -> None:
        for name in ("num_frames", "max_frames", "max_n", "max_new_tokens", "default_max_tokens",
                     "max_prompt_tokens", "max_body_bytes", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.num_frames > self.max_frames:
            raise ValueError(f"num_frames={self.num_frames} is above max_frames={self.max_frames}")


class APIError(Exception):
    """An error answered as OpenAI's JSON with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def resolve_video_url(url: str, root: Path, param: str) -> Path:
    """The local file a `video_url` names, resolved (symlinks too) and required to lie inside `root`."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise APIError(400, f"{param}: file:// URLs must name a local path, got host {parsed.netloc!r}", param=param)
        given = Path(unquote(parsed.path))
    elif parsed.scheme == "":  # a plain path
        given = Path(url)
    else:
        raise APIError(400, f"{param}: only local paths and file:// URLs are served, got a {parsed.scheme}:// URL", param=param)
    full = given if given.is_absolute() else root / given
    real = full.resolve()
    if not real.is_relative_to(root):
        raise APIError(403, f"{param}: {url!r} lies outside the served video root", "permission_error", param)
    if not real.is_file():
        raise APIError(404, f"{param}: video file not found: {url}", param=param, code="video_not_found")
    return real


def _turn(req: ChatRequest, root: Path) -> tuple[str, Path | None]:
    """The question text and the video file of the request's single user turn."""
    if len(req.messages) != 1 or req.messages[0].role != "user":
        roles = [m.role for m in req.messages]
        raise APIError(400, f"messages: one user message is supported (a single turn about one video), got roles {roles}",
                       param="messages")
    content = req.messages[0].content
    if isinstance(content, str):
        return content, None
    texts, videos = [], []
    for i, part in enumerate(content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, VideoPart):
            videos.append(resolve_video_url(part.video_url.url, root, f"messages[0].content[{i}].video_url.url"))
    if len(videos) > 1:
        raise APIError(400, f"messages[0].content: at most one video_url part, got {len(videos)}", param="messages[0].content")
    return "\n".join(texts), videos[0] if videos else None


def create_app(engine: Engine, model_name: str, video_root: str | Path, limits: ServeLimits = ServeLimits()) -> FastAPI:
    root = Path(video_root).resolve()
    if not root.is_dir():
        raise ValueError(f"video root {video_root} is not a directory")
    app = FastAPI(title="longvid", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    slots = asyncio.Semaphore(limits.max_concurrency)
    app.state.admitted = 0  # requests generating or waiting; only the event loop thread touches it

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail), "invalid_request_error"), status_code=e.status_code)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "longvid"}]}

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise APIError(413, f"request body of {declared} bytes is above the limit of {limits.max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():  # a chunked body has no length header: count as it comes
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise APIError(413, f"request body is above the limit of {limits.max_body_bytes} bytes")
        return bytes(body)

    def parse(raw: bytes) -> ChatRequest:
        try:
            req = ChatRequest.model_validate_json(raw)
        except ValidationError as e:
            param, message = first_error(e)
            raise APIError(400, message, param=param or None) from None
        if req.model != model_name:
            raise APIError(404, f"model: {req.model!r} is not served here; this server serves {model_name!r}",
                           param="model", code="model_not_found")
        if req.stream:
            raise APIError(400, "stream: streaming responses are not supported", param="stream")
        if req.n > limits.max_n:
            raise APIError(413, f"n: {req.n} is above the limit of {limits.max_n}", param="n")
        return req

    def generate(req: ChatRequest, question: str, video: Path, num_frames: int, max_tokens: int) -> dict:
        size = (limits.size, limits.size) if limits.size else None
        try:
            frames = decode(video, num_frames=num_frames, size=size)
        except VideoError as e:
            raise APIError(400, f"video: {e}", param="messages[0].content", code="unreadable_video") from None
        config = SamplingConfig(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k)
        try:
            answer = engine.answer_video(
                frames, question, req.n, config, seed=req.seed, max_prompt_tokens=limits.max_prompt_tokens
            )
        except PromptTooLong as e:
            raise APIError(413, f"messages: {e}", param="messages", code="context_length_exceeded") from None
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason, "logprobs": None}
                for i, (text, reason) in enumerate(zip(answer.texts, answer.finish_reasons))
            ],
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            },
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        req = parse(await read_body(request))
        question, video = _turn(req, root)
        if video is None:
            raise APIError(400, "messages[0].content: a video_url part is required (longvid models answer about a video)",
                           param="messages[0].content")
        num_frames = req.num_frames or limits.num_frames
        if num_frames > limits.max_frames:
            raise APIError(413, f"num_frames: {num_frames} is above the limit of {limits.max_frames}", param="num_frames")
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_new_tokens:
            param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise APIError(413, f"{param}: {max_tokens} is above the limit of {limits.max_new_tokens}", param=param)
        if app.state.admitted >= limits.max_concurrency + limits.max_queue:
            raise APIError(429, f"server busy: {app.state.admitted} requests generating or queued; retry later",
                           "rate_limit_error", code="server_busy")
        app.state.admitted += 1
        try:
            async with slots:
                body = await asyncio.to_thread(generate, req, question, video, num_frames, max_tokens)
        finally:
            app.state.admitted -= 1
        return JSONResponse(body)

    return app
