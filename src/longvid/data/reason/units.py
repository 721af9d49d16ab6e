"""One unit of work per stage — build the request, call the model, parse the reply — and the pure
assembly of a video's final items. Both runners (asyncio with a journal, Ray Data) call these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from . import stages
from .client import Reply
from .stages import ORDER, Rejected


class Chat(Protocol):
    model: str

    async def complete(self, messages: list[dict], *, max_tokens: int, temperature: float) -> Reply: ...


@dataclass(frozen=True)
class Budget:
    """Sampling settings of the two models."""

    caption_tokens: int = 256
    caption_temperature: float = 0.0
    llm_tokens: int = 4096
    llm_temperature: float = 0.6
    per_category: int = 1  # questions asked per category and video


async def caption(client: Chat, clip: dict, budget: Budget) -> str | Rejected:
    reply = await client.complete(
        stages.caption_messages(clip), max_tokens=budget.caption_tokens, temperature=budget.caption_temperature
    )
    return stages.parse_caption(reply.text)


async def generate(client: Chat, video: dict, timeline: str, category: str, budget: Budget) -> list[dict] | Rejected:
    messages = stages.generate_messages(category, timeline, video["duration"], budget.per_category)
    reply = await client.complete(messages, max_tokens=budget.llm_tokens, temperature=budget.llm_temperature)
    if category == ORDER:
        events = stages.parse_events(reply.text)
        if isinstance(events, Rejected):
            return events
        item = stages.order_item(events, video)
        return item if isinstance(item, Rejected) else [item]
    return stages.parse_items(reply.text, category)


async def refine(client: Chat, item: dict, budget: Budget) -> str | Rejected:
    reply = await client.complete(
        stages.refine_messages(item), max_tokens=budget.llm_tokens, temperature=budget.llm_temperature
    )
    return stages.parse_refined(reply.text)


def needs_refine(item: dict) -> bool:
    """Ordering items are written in the "checking the video" style already, from true times."""
    return item["category"] != ORDER
