"""`longvid serve`: OpenAI-compatible chat completions about local videos, errors in OpenAI's shape."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from http_utils import running_server
from longvid.config import ModelConfig
from longvid.model import load_adapter
from longvid.model.sampling import SamplingConfig
from longvid.serve import Engine, ServeLimits, create_app
from longvid.video.decode import decode, encode_mp4
from longvid.synth import make_sample

MODEL = "longvid-tiny"
LIMITS = ServeLimits(num_frames=8, size=56, max_frames=64, max_n=8, max_new_tokens=64, default_max_tokens=8,
                     max_prompt_tokens=4096, max_body_bytes=64 * 1024, max_concurrency=1, max_queue=0)


@pytest.fixture(scope="module")
def engine():
    return Engine(load_adapter(ModelConfig()))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    _, frames = make_sample("temporal", 3, 16, 56)
    encode_mp4(root / "clip.mp4", frames, 2.0)
    outside = tmp_path_factory.mktemp("outside")
    encode_mp4(outside / "secret.mp4", frames, 2.0)
    (root / "link.mp4").symlink_to(outside / "secret.mp4")
    return root


@pytest.fixture(scope="module")
def client(engine, root):
    return TestClient(create_app(engine, MODEL, root, LIMITS))


def chat(video: str | None = "clip.mp4", text: str = "What happens?", **kw) -> dict:
    content = [{"type": "text", "text": text}]
    if video is not None:
        content.append({"type": "video_url", "video_url": {"url": video}})
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **kw}


def test_models(client):
    body = client.get("/v1/models").json()
    assert [m["id"] for m in body["data"]] == [MODEL] and body["object"] == "list"


def test_completion_matches_the_library_path(client, engine, root):
    """The server answers exactly as `Engine.answer_video` on the same frames with the same seed,
    and counts the prompt (video tokens included) and every choice's tokens."""
    r = client.post("/v1/chat/completions", json=chat(n=3, temperature=0.8, top_p=0.9, max_tokens=12, seed=7))
    assert r.status_code == 200, r.text
    body = r.json()
    frames = decode(root / "clip.mp4", num_frames=8, size=(56, 56))
    ref = engine.answer_video(frames, "What happens?", 3, SamplingConfig(12, 0.8, 0.9), seed=7)
    assert [c["message"]["content"] for c in body["choices"]] == ref.texts
    assert [c["finish_reason"] for c in body["choices"]] == ref.finish_reasons
    usage = body["usage"]
    adapter = engine.adapter
    visual_tokens = adapter.num_visual_tokens(adapter.preprocess(frames.pixels, frames.timestamps))
    assert visual_tokens > 0
    assert usage["prompt_tokens"] == len(adapter.build_prompt("What happens?", visual_tokens))
    assert usage["completion_tokens"] == ref.completion_tokens and 3 <= usage["completion_tokens"] <= 36
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # A different seed samples differently (the seed is really used).
    other = client.post("/v1/chat/completions", json=chat(n=3, temperature=0.8, max_tokens=12, seed=8)).json()
    assert [c["message"]["content"] for c in other["choices"]] != ref.texts


def test_one_token_answers_count_one_token_each(client):
    body = client.post("/v1/chat/completions", json=chat(n=4, max_tokens=1, seed=0)).json()
    assert len(body["choices"]) == 4 and body["usage"]["completion_tokens"] == 4


def test_file_url_and_absolute_path(client, root):
    for url in (f"file://{root / 'clip.mp4'}", str(root / "clip.mp4")):
        r = client.post("/v1/chat/completions", json=chat(url, temperature=0))
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "body, status, param",
    [
        (chat(n=0), 400, "n"),
        (chat(temperature=-1), 400, "temperature"),
        (chat(top_p=0), 400, "top_p"),
        (chat(bogus=1), 400, "bogus"),
        (chat(stream=True), 400, "stream"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]}]},
         400, "messages[0].content[0]"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}]},
         400, "messages[0].content[0].video_url.url"),
        ({"model": MODEL}, 400, "messages"),
        (chat(None), 400, "messages[0].content"),
        (chat("https://example.com/v.mp4"), 400, "messages[0].content[1].video_url.url"),
        (chat("missing.mp4"), 404, "messages[0].content[1].video_url.url"),
        (chat("../outside/secret.mp4"), 403, "messages[0].content[1].video_url.url"),
        (chat("link.mp4"), 403, "messages[0].content[1].video_url.url"),
        (chat("file:///etc/passwd"), 403, "messages[0].content[1].video_url.url"),
        ({**chat(), "model": "gpt-4o"}, 404, "model"),
        (chat(num_frames=65), 413, "num_frames"),
        (chat(max_tokens=65), 413, "max_tokens"),
        (chat(n=9), 413, "n"),
        (chat(text="x" * 70_000), 413, None),
    ],
)
def test_errors_in_openai_shape(client, body, status, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_multi_turn_is_refused_naming_messages(client):
    body = chat()
    body["messages"].insert(0, {"role": "system", "content": "be brief"})
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_prompt_too_long_is_413(engine, root):
    app = create_app(engine, MODEL, root, ServeLimits(num_frames=8, size=56, max_prompt_tokens=20))
    r = TestClient(app).post("/v1/chat/completions", json=chat())
    assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded"


def test_corrupt_video_is_400(client, root):
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    r = client.post("/v1/chat/completions", json=chat("broken.mp4"))
    assert r.status_code == 400 and "broken.mp4" in r.json()["error"]["message"]


def test_unknown_route_is_404_in_openai_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_openai_client_over_a_real_socket(engine, root):
    """The official client, unchanged, against the server on a localhost port."""
    with running_server(create_app(engine, MODEL, root, LIMITS)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == [MODEL]
        out = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "Describe the clip."},
                {"type": "video_url", "video_url": {"url": f"file://{root / 'clip.mp4'}"}},
            ]}],
            n=2, temperature=0.7, top_p=0.95, max_tokens=6, seed=3,
            extra_body={"num_frames": 4},
        )
        assert len(out.choices) == 2 and all(isinstance(c.message.content, str) for c in out.choices)
        assert out.usage.prompt_tokens > 0 and 2 <= out.usage.completion_tokens <= 12
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": "nope.mp4"}}]}])
        assert e.value.status_code == 404 and "nope.mp4" in e.value.message
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, n=0, messages=[{"role": "user", "content": "hi"}])
        assert e.value.body["param"] == "n"


def _hold_generation(engine, monkeypatch):
    """Make each generation signal `started` and wait for `release` (to fill the server's slots)."""
    started, release = threading.Event(), threading.Event()
    original = engine.answer_video

    def slow(*args, **kwargs):
        started.set()
        assert release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "answer_video", slow)
    return started, release


def test_busy_server_answers_429_and_stays_responsive(engine, root, monkeypatch):
    """With one generation slot and no queue a second request is refused at once (429 with
    Retry-After) while the first generates in a worker thread; the loop still lists models."""
    started, release = _hold_generation(engine, monkeypatch)
    with running_server(create_app(engine, MODEL, root, LIMITS)) as url:
        results = {}
        first = threading.Thread(target=lambda: results.update(first=httpx.post(f"{url}/v1/chat/completions", json=chat(), timeout=60)))
        first.start()
        assert started.wait(30)
        assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 200
        busy = httpx.post(f"{url}/v1/chat/completions", json=chat(), timeout=5)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "rate_limit_error"
        release.set()
        first.join(60)
        assert results["first"].status_code == 200
        # The slot is free again.
        assert httpx.post(f"{url}/v1/chat/completions", json=chat(), timeout=60).status_code == 200


def test_requests_queue_up_to_the_bound(engine, root, monkeypatch):
    """One slot and a queue of one: the second request waits and is answered, the third gets 429."""
    started, release = _hold_generation(engine, monkeypatch)
    limits = ServeLimits(num_frames=8, size=56, default_max_tokens=4, max_concurrency=1, max_queue=1)
    app = create_app(engine, MODEL, root, limits)
    with running_server(app) as url:
        results = {}

        def post(name):
            results[name] = httpx.post(f"{url}/v1/chat/completions", json=chat(), timeout=60)

        threads = [threading.Thread(target=post, args=(name,)) for name in ("first", "queued")]
        threads[0].start()
        assert started.wait(30)
        threads[1].start()
        deadline = time.monotonic() + 30
        while app.state.admitted < 2:  # the second request holds its place in the queue
            assert time.monotonic() < deadline
            time.sleep(0.02)
        third = httpx.post(f"{url}/v1/chat/completions", json=chat(), timeout=5)
        assert third.status_code == 429
        release.set()
        for t in threads:
            t.join(60)
    assert results["first"].status_code == 200 and results["queued"].status_code == 200


def test_serves_a_checkpoint_folder(engine, root, tmp_path):
    """`build_app` with a saved checkpoint: the model id is the folder name, answers match the original."""
    from longvid.serve import build_app

    engine.adapter.save_pretrained(tmp_path / "my-model")
    app = build_app(str(tmp_path / "my-model"), root, LIMITS)
    client = TestClient(app)
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["my-model"]
    body = {**chat(temperature=0, max_tokens=6), "model": "my-model"}
    saved = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    original = TestClient(create_app(engine, MODEL, root, LIMITS)).post(
        "/v1/chat/completions", json=chat(temperature=0, max_tokens=6)).json()["choices"][0]["message"]["content"]
    assert saved == original


def test_cli_binds_localhost_by_default(root, monkeypatch, capsys):
    import longvid.serve as serve_module
    from longvid.cli import main

    seen = {}
    monkeypatch.setattr(serve_module, "serve", lambda app, host, port, log_level: seen.update(app=app, host=host, port=port))
    assert main(["serve", "--video-root", str(root), "--port", "8123", "--frames", "4", "--size", "56"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert TestClient(seen["app"]).get("/v1/models").json()["data"][0]["id"] == "longvid-tiny"
    assert main(["serve", "--video-root", str(root / "nope")]) == 2
    assert "video root" in capsys.readouterr().err
    assert main(["serve", "--video-root", str(root), "--frames", "600"]) == 2
