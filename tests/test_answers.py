"""Answer parsing and grading: formats, letters, option text, numbers, and adversarial input."""

import time

import pytest

from longvid.answers import (
    MAX_RESPONSE_CHARS,
    Parsed,
    Verdict,
    extract_choice,
    extract_letter,
    extract_number,
    infer_kind,
    judge,
    normalize_text,
    parse_response,
)

# --- parse_response ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "<think>look at frame 3</think><answer>B</answer>",
        "<think>a\nb</think>\n\n<answer>B</answer>",
        "  \n<think>x</think> <answer> B </answer>\n ",  # surrounding whitespace is allowed
        "<think></think><answer></answer>",  # empty sections are a format matter for accuracy
    ],
)
def test_well_formed(text):
    assert parse_response(text).well_formed


@pytest.mark.parametrize(
    "text",
    [
        "<think>x</think><answer>B</answer> trailing",  # full match: nothing after </answer>
        "intro <think>x</think><answer>B</answer>",
        "<think>x</think> so <answer>B</answer>",  # only whitespace between the blocks
        "<answer>B</answer><think>x</think>",
        "<think>x</think><answer>A</answer><answer>B</answer>",  # two answers
        "<think>x<think>y</think><answer>B</answer>",  # nested think
        "<think>x</think><answer>B",  # truncated
        "<think>x<answer>B</answer>",
        "B",
        "",
    ],
)
def test_not_well_formed(text):
    assert not parse_response(text).well_formed


def test_parse_extracts_stripped_sections():
    assert parse_response("<think> hmm \n</think>\n<answer> C </answer>") == Parsed("hmm", "C", True)
    malformed = parse_response("I guess <answer>A</answer> maybe")
    assert malformed == Parsed(None, "A", False)
    assert parse_response("no tags") == Parsed(None, None, False)


def test_parse_takes_the_first_answer_of_several():
    assert parse_response("<answer>A</answer><answer>B</answer>").answer == "A"


def test_parse_ignores_text_past_the_cap():
    text = "<think>" + "x" * MAX_RESPONSE_CHARS + "</think><answer>B</answer>"
    parsed = parse_response(text)
    assert parsed.answer is None and not parsed.well_formed


# --- extract_letter ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("[C]", "C"),
        ("B.", "B"),
        ("  D  ", "D"),
        ("**B**", "B"),
        ("B: Argentina", "B"),
        ("B) the man in red", "B"),
        ("(B) Argentina", "B"),
        ("The answer is B", "B"),
        ("The answer is B.", "B"),
        ("answer: (C)", "C"),
        ("Final Answer: **D**", "D"),
        ("The correct answer is option A.", "A"),
        ("\\boxed{C}", "C"),
        ("Option B", "B"),
        ("The correct option is B since it fits.", "B"),
        ("I think C is right", "C"),
        ("A is correct", "A"),
        ("A, because the man leaves first", "A"),
        ("The answer is not A, it's D", "D"),
        ("<think>A seems wrong, maybe C</think><answer>B</answer>", "B"),  # the <answer> decides
        # lower case, only where it cannot be an ordinary word
        ("b", "B"),
        ("(b)", "B"),
        ("b) the dog", "B"),
        ("answer: b", "B"),
        ("The answer is (c).", "C"),
        ("choice (d)", "D"),
    ],
)
def test_letter_found(text, expected):
    assert extract_letter(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no letter here",
        "E",  # not an option of ABCD
        "A or B",  # ambiguous
        "Between A and C, C is better",
        "The answer is A. No wait, the answer is B.",  # two committed answers
        "A ball is on the table.",  # the article, not option A
        "A man opens the door",
        "The answer is a ball",  # lower-case article after an answer phrase
        "the answer is b because",  # lower case followed by a word: too weak
        "Because of the rain",  # letters inside words
        "B-roll footage of D-Day",  # hyphenated words
    ],
)
def test_letter_not_found(text):
    assert extract_letter(text) is None


def test_lone_lowercase_letter_counts():
    assert extract_letter("a") == "A"
    assert extract_letter("d.") == "D"


def test_pronoun_i_is_not_an_option():
    letters = "ABCDEFGHIJ"
    assert extract_letter("I think J", letters) == "J"
    assert extract_letter("I or J", letters) is None  # "I" before a connective is an option
    assert extract_letter("I", letters) == "I"


def test_letter_set_is_respected():
    assert extract_letter("E", letters="ABCDE") == "E"
    assert extract_letter("The answer is E", letters=["A", "B"]) is None


def test_answer_tag_content_is_preferred():
    # The think section names other letters; the answer alone is read.
    assert extract_letter("<think>Is it A or C? Not D.</think><answer>(C)</answer>") == "C"
    # No answer tags: the whole text is read.
    assert extract_letter("After watching, the answer is D") == "D"


def test_long_response_reads_head_and_tail():
    text = "The answer is C. " + "filler words here " * 5000 + " So again, C."
    assert extract_letter(text) == "C"


# --- extract_choice ----------------------------------------------------------------------------

OPTIONS = ["A red car", "A blue bus", "The dark red truck", "Nothing"]


def test_choice_prefers_the_letter():
    assert extract_choice("<answer>B</answer>", OPTIONS) == "B"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>a blue bus</answer>", "B"),  # equal after normalisation
        ("<answer>It was the blue bus.</answer>", "B"),  # contained as whole words
        ("<answer>nothing</answer>", "D"),
        ("<answer>the dark red truck</answer>", "C"),
        ("<answer>red car or blue bus</answer>", None),  # two options named
        ("<answer>a green tram</answer>", None),
        ("<answer>busy</answer>", None),  # not a whole-word match of "bus"
    ],
)
def test_choice_by_option_text(text, expected):
    assert extract_choice(text, OPTIONS) == expected


def test_choice_prefers_the_longer_contained_option():
    assert extract_choice("dark red", ["red", "dark red", "blue"]) == "B"


def test_choice_limits_letters_to_the_options():
    assert extract_choice("C", ["yes", "no"]) is None


# --- extract_number and normalize_text ----------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", 42.0),
        ("<answer>3 people</answer>", 3.0),
        ("-3.5", -3.5),
        ("\u22122", -2.0),  # Unicode minus
        (".5", 0.5),
        ("1,234", 1234.0),
        ("3/4", 0.75),
        ("50%", 50.0),
        ("45s", 45.0),
        ("The answer is 7 (counted 7 times)", 7.0),  # repeats of one value are fine
        ("The answer is 7, out of 10 tries", 7.0),  # several numbers: the answer phrase decides
        ("three", 3.0),
        ("twelve birds", 12.0),
    ],
)
def test_number_found(text, expected):
    assert extract_number(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["", "no number", "between 3 and 5", "3,5", "1/0", "x2", "there is no one in the room at all"],
)
def test_number_not_found(text):
    assert extract_number(text) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  The Eiffel-Tower!! ", "eiffel tower"),
        ("An apple", "apple"),
        ("STRASSE", "strasse"),
        ("Stra\u00dfe", "strasse"),  # casefold, not lower
        ("a\x00b", "b"),  # control characters separate words; the article "a" then drops
        ("", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize("fn", [extract_letter, extract_number, normalize_text, parse_response])
def test_non_string_input_is_empty_not_an_error(fn):
    result = fn(None)
    assert result in (None, "") or result == Parsed(None, None, False)


# --- adversarial input: every parser returns quickly and never raises ---------------------------

ADVERSARIAL = {
    "think_1mb": "<think>" * 150_000,
    "nested_tags": "<answer>" * 100_000 + "B" + "</answer>" * 100_000,
    "alternating_tags": "</think><answer>" * 100_000,
    "open_parens": "(" * 100_000,
    "parens_in_answer": "<answer>" + "(" * 100_000 + "</answer>",
    "unicode_junk": "\u202e\ufeff\U0001f600a\u0301\ud7ff" * 50_000,
    "null_bytes": "\x00" * 200_000 + "B",
    "spaces_then_junk": "B" + " " * 100_000 + "x",
    "answer_phrase_spaces": "answer would" + " " * 100_000 + "x",
    "digits": "1" * 100_000,
    "thousands_commas": "1," * 100_000,
    "many_articles": "A " * 100_000,
    "many_nots": "not " * 100_000 + "A",
    "over_the_cap": "<think>" + "x" * 3_000_000 + "</think><answer>B</answer>",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_input_is_fast_and_safe(name):
    text = ADVERSARIAL[name]
    start = time.perf_counter()
    parse_response(text)
    extract_letter(text)
    extract_choice(text, ["yes", "no"])
    extract_number(text)
    normalize_text(text)
    # A correctness bound (these are linear; a catastrophic regex would take minutes), not a benchmark.
    assert time.perf_counter() - start < 1.0


def test_adversarial_results_are_sane():
    assert extract_letter(ADVERSARIAL["null_bytes"]) == "B"
    assert extract_letter(ADVERSARIAL["open_parens"]) is None
    assert not parse_response(ADVERSARIAL["think_1mb"]).well_formed
    assert extract_number(ADVERSARIAL["digits"]) is None  # 2,000-digit numbers overflow: no answer


GOOD_B = "<think>the flag is blue and white</think>\n<answer>B</answer>"
GOOD_C = "<think>hmm</think><answer>C</answer>"
BARE_B = "The answer is B"


# --- grading -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, answer, kind, options, expected",
    [
        (GOOD_B, "B", "choice", None, 1.0),
        (GOOD_C, "B", "choice", None, 0.0),
        (BARE_B, "B", "choice", None, 1.0),  # no tags: the whole text is graded (format pays for it)
        ("<answer>Argentina</answer>", "B", "choice", ["Brazil", "Argentina"], 1.0),  # option text
        ("<answer>E or F</answer>", "E", "choice", None, 0.0),  # a hedge is not an answer
        ("<answer>42</answer>", "42", "number", None, 1.0),
        ("<answer>42.03</answer>", "42", "number", None, 1.0),  # within 0.1 %
        ("<answer>43</answer>", "42", "number", None, 0.0),
        ("<answer>about 1,000 frames</answer>", "1000", "number", None, 1.0),
        ("<answer>no idea</answer>", "42", "number", None, 0.0),
        ("<answer>The Eiffel Tower!</answer>", "eiffel tower", "text", None, 1.0),
        ("<answer>Eiffel</answer>", "eiffel tower", "text", None, 0.0),
        ("<answer></answer>", "the", "text", None, 0.0),  # empty after normalising never matches
    ],
)
def test_judge(completion, answer, kind, options, expected):
    assert judge(completion, answer, options, kind).correct == bool(expected)


def test_infer_kind():
    assert infer_kind("B", ["x", "y"]) == "choice"
    assert infer_kind("12.5") == "number"
    assert infer_kind("1,000") == "number"
    assert infer_kind("a dog") == "text"
    assert infer_kind("inf") == "text"


def test_judge_errors():
    with pytest.raises(ValueError, match="not one"):
        judge("<answer>3</answer>", "three", kind="number")
    with pytest.raises(ValueError, match="kind"):
        judge("<answer>3</answer>", "3", kind="regex")


def test_judge_reports_what_was_read():
    assert judge("<answer>Argentina</answer>", "B", ["Brazil", "Argentina"]) == Verdict("B", True)
    assert judge("<answer>about 1,000</answer>", "1000") == Verdict(1000.0, True)
    assert judge("<answer>The Eiffel Tower!</answer>", "eiffel tower") == Verdict("eiffel tower", True)
    assert judge("<answer></answer>", "x") == Verdict(None, False)
