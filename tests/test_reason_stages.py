"""The reasoning pipeline's pure stages and its journal, one by one."""

import json

import pytest

from longvid.data.reason import stages
from longvid.data.reason.journal import Journal
from longvid.data.reason.stages import Rejected
from longvid.data.schema import Sample
from longvid.errors import DataError

CLIPS = [{"index": i, "start": 10.0 * i, "end": 10.0 * (i + 1), "path": f"/c/{i}.mp4"} for i in range(4)]
VIDEO = {"video": "films/a.mp4", "path": "/v/films/a.mp4", "duration": 40.0, "clips": CLIPS}


def item(**kw):
    base = {"category": "temporal", "question": "When?", "options": ["At 5s", "At 15s", "At 25s", "At 35s"],
            "answer": "B", "reasoning": "At 15.0s the door opens.", "timestamps": [15.0]}
    return {**base, **kw}


def test_merge_keeps_true_seconds_in_time_order():
    """The anchor multiplied clip times by 10 a second time; ours are the clips' own seconds."""
    clips = [{"index": 1, "start": 10.0, "end": 20.0}, {"index": 0, "start": 0.0, "end": 10.0},
             {"index": 2, "start": 20.0, "end": 27.5}]
    timeline = stages.merge_captions(clips, {0: "a dog", 1: "a cat", 2: "a bird"})
    assert timeline.splitlines() == ["[0.0s-10.0s] a dog", "[10.0s-20.0s] a cat", "[20.0s-27.5s] a bird"]
    assert "100.0s" not in timeline and "275" not in timeline
    # A rejected caption leaves its clip out, nothing is invented for it.
    assert stages.merge_captions(clips, {2: "a bird"}) == "[20.0s-27.5s] a bird"


@pytest.mark.parametrize("text, expected", [
    ('{"items": []}', {"items": []}),
    ('<think>hmm {"a": 1}</think>\n{"items": [1]}', {"items": [1]}),
    ('```json\n{"x": 1}\n```', {"x": 1}),
    ("Here it is: {\"x\": 1}", Rejected("not JSON")),
    ('{"x": 1} and more', Rejected("not JSON")),
    ("[1, 2]", Rejected("not a JSON object")),
    ("", Rejected("empty reply")),
    (None, Rejected("empty reply")),
    ('```json\n{"x": 1}\n``` trailing', Rejected("not JSON")),
])
def test_json_replies_are_parsed_not_repaired(text, expected):
    got = stages.parse_json_reply(text)
    if isinstance(expected, Rejected):
        assert isinstance(got, Rejected) and got.code == expected.code
    else:
        assert got == expected


def test_parse_items_tags_category_and_rejects_shapes():
    assert stages.parse_items(json.dumps({"items": [{"question": "q"}]}), "goal") == [{"question": "q", "category": "goal"}]
    assert stages.parse_items('{"items": []}', "goal").code == "no items"
    assert stages.parse_items('{"items": ["q"]}', "goal").code == "item not an object"
    assert stages.parse_items('{"questions": []}', "goal").code == "no items"


@pytest.mark.parametrize("change, code", [
    ({"category": "humour"}, "unknown category"),
    ({"question": " "}, "no question"),
    ({"options": ["a", "b", "c"]}, "not four options"),
    ({"options": {"A": "a"}}, "not four options"),
    ({"options": ["a", "b", "", "d"]}, "empty option"),
    ({"options": ["A. a", "B. b", "C. c", "D. d"]}, "option has a letter prefix"),
    ({"options": ["a", "b", "c", " A "]}, "duplicate options"),
    ({"answer": "E"}, "answer not among A-D"),
    ({"answer": "b"}, "answer not among A-D"),
    ({"reasoning": ""}, "no reasoning"),
    ({"timestamps": []}, "no timestamps"),
    ({"timestamps": ["15s"]}, "no timestamps"),
    ({"timestamps": [15.0, 40.5]}, "timestamp outside video"),
    ({"timestamps": [-1]}, "timestamp outside video"),
])
def test_validate_rejects_with_a_reason(change, code):
    got = stages.validate(item(**change), 40.0)
    assert isinstance(got, Rejected) and got.code == code


def test_validate_keeps_a_good_item_and_it_is_a_sample_row():
    good = stages.validate(item(timestamps=[0, 40.0]), 40.0)
    assert not isinstance(good, Rejected) and good["timestamps"] == [0.0, 40.0]
    row = stages.to_row(good, VIDEO, 0, "films/a.mp4")
    sample = Sample.from_row(row)
    assert sample.answer_text == "At 15s" and sample.extra["duration"] == 40.0 and sample.id == "films/a.mp4#temporal-0"


def test_refinement_replaces_only_the_reasoning():
    """The anchor's rewrite dropped the options; ours never asks for them back."""
    original = stages.validate(item(), 40.0)
    messages = stages.refine_messages(original)
    assert all(f"{l}. {o}" in messages[-1]["content"] for l, o in zip("ABCD", original["options"]))
    reasoning = stages.parse_refined('{"reasoning": "Checking the video at 15.0s, the door opens."}')
    refined = stages.apply_refinement(original, reasoning)
    assert refined["options"] == original["options"] and refined["answer"] == "B" and refined["question"] == "When?"
    assert refined["reasoning"].startswith("Checking the video")
    assert stages.parse_refined('{"reasoning": ""}').code == "no reasoning"
    assert stages.parse_refined('{"text": "x"}').code == "no reasoning"


def events(times):
    return [{"event": f"event at {t}", "time": t} for t in times]


def test_order_items_follow_true_times():
    built = stages.order_item(events([31.0, 2.0, 22.0, 15.0]), VIDEO)
    assert stages.validate(built, 40.0) == {**built, "refined": False}
    listed = built["question"].split("? ", 1)[1].split("; ")
    by_number = {int(x[1]): x.split(") ", 1)[1] for x in listed}
    chosen = built["options"]["ABCD".index(built["answer"])]
    assert [by_number[int(n)] for n in chosen.split(", ")] == ["event at 2.0", "event at 15.0", "event at 22.0", "event at 31.0"]
    assert len(set(built["options"])) == 4 and built["timestamps"] == [2.0, 15.0, 22.0, 31.0]
    # Deterministic per video: a resumed or sharded run builds the same item.
    assert stages.order_item(events([31.0, 2.0, 22.0, 15.0]), VIDEO) == built


def test_order_items_reject_bad_events():
    assert stages.order_item(events([1.0, 2.0, 22.0, 31.0]), VIDEO).code == "events not in different clips"
    assert stages.order_item(events([1.0, 12.0, 22.0, 45.0]), VIDEO).code == "timestamp outside video"
    assert stages.parse_events('{"events": [{"event": "a", "time": 1}]}').code == "events"
    assert stages.parse_events(json.dumps({"events": events([1, 2, 3, "4"])})).code == "events"
    assert stages.parse_events(json.dumps({"events": [{"event": "", "time": 1}] * 4})).code == "events"


def test_caption_requests_use_the_video_url_shape(tmp_path):
    clip = {"index": 0, "path": str(tmp_path / "clip 0.mp4")}
    content = stages.caption_messages(clip)[0]["content"]
    assert content[0] == {"type": "video_url", "video_url": {"url": (tmp_path / "clip 0.mp4").as_uri()}}
    assert stages.parse_caption("  \n").code == "empty caption" and stages.parse_caption(" a cat ") == "a cat"


def test_generation_prompts_name_their_category():
    for category in stages.QUESTION_CATEGORIES:
        text = stages.generate_messages(category, "[0.0s-10.0s] x", 10.0, 2)[-1]["content"]
        assert "Write 2 question(s)" in text and category.upper() in text and "10.0 seconds" in text
    assert '"events"' in stages.generate_messages("order", "t", 10.0, 1)[-1]["content"]


def test_shards_are_stable_and_cover_all():
    ids = [f"v{i}.mp4" for i in range(200)]
    parts = [stages.shard_of(v, 4) for v in ids]
    assert parts == [stages.shard_of(v, 4) for v in ids] and set(parts) == {0, 1, 2, 3}


def test_journal_round_trip_and_torn_tail(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.record("a", "caption", "0", value="text")
        j.record("a", "caption", "1", rejected="", code="empty caption")
        with pytest.raises(ValueError, match="already holds"):
            j.record("a", "caption", "0", value="again")
    path.write_bytes(path.read_bytes() + b'{"video": "a", "sta')
    with Journal(path) as j:
        assert j.get("a", "caption", "0")["value"] == "text"
        assert j.get("a", "caption", "1")["code"] == "empty caption" and not j.get("a", "caption", "1")["ok"]
        j.record("a", "caption", "2", value="new")
    assert len(path.read_text().splitlines()) == 3
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(DataError, match="j.jsonl:4"):
        Journal(path)
