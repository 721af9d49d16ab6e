"""Embedding cache: keyed by what determines embeddings, bounded by bytes, LRU, optional offload."""

import numpy as np
import pytest
import torch

import longvid.synth  # noqa: F401  (registers the synth: video source)
from longvid.data.dataset import video_identity
from longvid.model.adapter import VisualEmbeds
from longvid.rl.cache import CacheKey, EmbeddingCache


def _visual(n, d=8, value=1.0):
    return VisualEmbeds(torch.full((n, d), value), torch.tensor([[n, 2, 2]]), 1.0)


def _key(sample="s", video="v", sampling="frames=8", version=0):
    return CacheKey(sample, video, sampling, version)


def test_hit_miss_and_every_key_field_matters():
    cache = EmbeddingCache(10_000)
    calls = []
    encode = lambda: calls.append(1) or _visual(4)  # noqa: E731
    cache.get_or_encode(_key(), encode)
    cache.get_or_encode(_key(), encode)
    assert len(calls) == 1 and cache.stats.hits == 1 and cache.stats.misses == 1
    for changed in (_key(sample="t"), _key(video="w"), _key(sampling="frames=16"), _key(version=1)):
        cache.get_or_encode(changed, encode)
    assert len(calls) == 5


def test_lru_eviction_by_bytes():
    one = 4 * 8 * 4  # 4 tokens x 8 dims x float32
    cache = EmbeddingCache(3 * one)
    for name in "abc":
        cache.get_or_encode(_key(name), lambda: _visual(4))
    cache.get_or_encode(_key("a"), lambda: pytest.fail("a should be cached"))  # a is now most recent
    cache.get_or_encode(_key("d"), lambda: _visual(4))  # evicts b, the least recently used
    assert cache.stats.evictions == 1 and cache.stats.bytes == 3 * one and len(cache) == 3
    assert cache.get(_key("b")) is None and cache.get(_key("a")) is not None


def test_entries_larger_than_the_cache_are_returned_not_stored():
    cache = EmbeddingCache(16)
    out = cache.get_or_encode(_key(), lambda: _visual(4))
    assert out.num_tokens == 4 and len(cache) == 0


def test_encoding_never_keeps_a_graph():
    cache = EmbeddingCache(10_000)
    w = torch.ones(1, requires_grad=True)
    out = cache.get_or_encode(_key(), lambda: VisualEmbeds(torch.ones(4, 8) * w, torch.tensor([[1, 2, 2]]), 1.0))
    assert not out.embeds.requires_grad


def test_offload_keeps_cpu_copies_and_returns_on_device():
    cache = EmbeddingCache(10_000, offload=True)
    out = cache.get_or_encode(_key(), lambda: _visual(4, value=3.0), device=torch.device("cpu"))
    assert torch.equal(out.embeds, torch.full((4, 8), 3.0))
    assert cache.get(_key(), torch.device("cpu")).embeds.device.type == "cpu"


def test_video_identity_tracks_file_changes_and_pixels(tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(b"x" * 10)
    first = video_identity(f)
    f.write_bytes(b"y" * 11)
    assert video_identity(f) != first
    assert video_identity("synth:plot?seed=1&frames=8&size=56") == "synth:plot?seed=1&frames=8&size=56"
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1, 2, 2, 0] = 1
    assert video_identity("mem", a) != video_identity("mem", b)


def test_dataset_video_key_needs_no_decoding_and_tracks_the_file(tmp_path):
    from longvid.data.dataset import VideoDataset
    from longvid.data.schema import Sample

    (tmp_path / "v.mp4").write_bytes(b"not decoded here")
    file_row = Sample(id="a", video="v.mp4", question="q", answer="A", category="plot", options=("x", "y"))
    spec_row = Sample(id="b", video="synth:plot?seed=1&frames=8&size=56", question="q", answer="A", category="plot", options=("x", "y"))
    data = VideoDataset([file_row, spec_row], root=tmp_path, num_frames=8)
    first = data.video_key(file_row)
    (tmp_path / "v.mp4").write_bytes(b"changed content, longer")
    assert data.video_key(file_row) != first and first.startswith("file:")
    assert data.video_key(spec_row) == spec_row.video
