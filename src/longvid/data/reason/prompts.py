"""The prompts of the reasoning-data pipeline (ours; each asks the model for one JSON object)."""

from __future__ import annotations

CAPTION = (
    "Describe this video clip in detail: the people and objects, what they do, where things are in "
    "the frame, and how the scene changes from start to end. Use plain sentences."
)

GENERATE_SYSTEM = (
    "You write multiple-choice questions that test understanding of a long video. You only see "
    "time-stamped captions of its clips; every fact you use must come from them. Reply with one "
    "JSON object and nothing else."
)

CATEGORY_GUIDES = {
    "temporal": "TEMPORAL reasoning: when something happens, what happens before or after what, how long a state lasts, "
    "or how often an event repeats across the video.",
    "goal": "GOAL and purpose: why a person acts as they do, what they are trying to achieve, or what a sequence of "
    "actions is for.",
    "plot": "PLOT and narrative: how the story develops, cause and effect between scenes, turning points, or how the "
    "video ends compared with how it starts.",
    "spatial": "SPATIAL reasoning: where people and objects are relative to each other or to the frame, how positions "
    "change over time, or where something ends up.",
}

ITEM_FORMAT = """Answer with exactly this JSON shape:
{"items": [{"question": "...",
            "options": ["text of A", "text of B", "text of C", "text of D"],
            "answer": "A",
            "reasoning": "step-by-step reasoning that cites clip times in seconds, e.g. 'at 12.0s ...'",
            "timestamps": [12.0, 31.5]}]}
Rules: exactly four different options, without letter prefixes; answer is one of A, B, C, D; the
question must need information from more than one clip; timestamps lists every time (in seconds,
inside the video) the reasoning relies on."""

ORDER_FORMAT = """Pick four key events from four DIFFERENT clips, each described in a short phrase that
does not reveal its time. Answer with exactly this JSON shape:
{"events": [{"event": "short description", "time": 12.0}, ...four entries...]}
time is the start of the event in seconds, inside the video."""

REFINE_SYSTEM = (
    "You rewrite the reasoning of a video question as if the writer were watching the video. Keep "
    "every fact and every time; change only the style. Reply with one JSON object and nothing else."
)

REFINE_FORMAT = """Rewrite the reasoning so it reads like someone checking the video: phrases such as
"checking the video at 12.0s, ...", "looking again around 40s, ...". Do not mention captions or clips.
Keep all times in seconds and end with the same conclusion (the same answer letter).
Answer with exactly this JSON shape: {"reasoning": "..."}"""


def captions_block(timeline: str, duration: float) -> str:
    return f"The video lasts {duration:.1f} seconds. Captions of its clips, in time order:\n{timeline}"


def generate_user(category: str, timeline: str, duration: float, count: int) -> str:
    return (
        f"{captions_block(timeline, duration)}\n\n"
        f"Write {count} question(s) about {CATEGORY_GUIDES[category]}\n\n{ITEM_FORMAT}"
    )


def order_user(timeline: str, duration: float) -> str:
    return f"{captions_block(timeline, duration)}\n\n{ORDER_FORMAT}"


def refine_user(question: str, options: list[str], answer: str, reasoning: str) -> str:
    lettered = "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", options))
    return f"Question: {question}\n{lettered}\nAnswer: {answer}\nReasoning: {reasoning}\n\n{REFINE_FORMAT}"
