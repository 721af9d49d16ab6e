"""The OpenAI chat-completions request we accept (vLLM's `video_url` content parts) and its error shape.

Unknown fields are refused rather than ignored, so a client never believes a setting was applied
when it was not.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class VideoURL(_Strict):
    url: str = Field(min_length=1)


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: VideoURL


Part = Annotated[TextPart | VideoPart, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]
    name: str | None = None


class ChatRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # vLLM's extension (extra_body); 0 keeps every token
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stream: bool = False
    user: str | None = None
    num_frames: int | None = Field(None, ge=1)  # our extension (extra_body): frames sampled per video


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def field_path(loc: tuple) -> str:
    """Pydantic's error location as a request path, e.g. `messages[0].content[1].video_url.url`.

    Pydantic adds the name of the union member it tried (`list[...]`, `video_url`) to the path;
    those are dropped where they are not real keys of the request."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str",):
            continue
        elif i > 0 and part in ("text", "video_url") and isinstance(loc[i - 1], int):
            continue  # discriminator tag, not a key
        else:
            out += f".{part}" if out else part
    return out


def first_error(e: ValidationError) -> tuple[str, str]:
    """(field path, message) of the most specific validation error, for a 400 that names the field.

    For `content` (a string or a list of parts) pydantic reports both union branches; the deepest
    location is the one that says what is wrong inside the list."""
    err = max(e.errors(include_url=False), key=lambda err: len(err["loc"]))
    path = field_path(tuple(err["loc"]))
    return path, f"{path or 'body'}: {err['msg']}"
