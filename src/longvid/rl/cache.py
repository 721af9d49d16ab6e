"""Embedding cache: each video is encoded once and its embeddings serve every consumer of the step.

Keyed by everything that determines the embeddings — the sample, the video's content identity,
the frame sampling and the encoder's weights version — so a changed file, another sampling or an
updated vision tower can never be served stale embeddings (the anchor served one resolution's
embeddings for another). Bounded in bytes with LRU eviction; optionally kept on the CPU and moved
back to the model's device on use.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from ..model.adapter import VisualEmbeds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheKey:
    sample_id: str
    video: str  # the video's content identity (`longvid.data.dataset.video_identity`)
    sampling: str  # e.g. "frames=32,size=56"
    encoder_version: int


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class EmbeddingCache:
    def __init__(self, max_bytes: int = 2 * 2**30, *, offload: bool = False):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.offload = offload
        self._entries: OrderedDict[CacheKey, VisualEmbeds] = OrderedDict()
        self.stats = CacheStats()

    @staticmethod
    def _size(value: VisualEmbeds) -> int:
        return value.nbytes  # DeepStack layers included

    def get_or_encode(
        self, key: CacheKey, encode: Callable[[], VisualEmbeds], device: torch.device | None = None
    ) -> VisualEmbeds:
        """The cached embeddings for `key` (on `device`), encoding without gradients on a miss."""
        found = self.get(key, device)
        if found is not None:
            return found
        with torch.no_grad():
            value = encode().detach()
        device = device or value.embeds.device
        stored = value.to("cpu") if self.offload else value
        size = self._size(stored)
        if size > self.max_bytes:
            log.warning("embeddings of %s (%d bytes) exceed the cache (%d bytes); not cached", key.sample_id, size, self.max_bytes)
            return value
        self._entries[key] = stored
        self.stats.bytes += size
        while self.stats.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.stats.bytes -= self._size(old)
            self.stats.evictions += 1
        self.stats.entries = len(self._entries)
        return stored.to(device) if self.offload else stored

    def get(self, key: CacheKey, device: torch.device | None = None) -> VisualEmbeds | None:
        found = self._entries.get(key)
        if found is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return found.to(device) if device is not None else found

    def clear(self) -> None:
        self._entries.clear()
        self.stats.bytes = self.stats.entries = 0

    def __len__(self) -> int:
        return len(self._entries)
