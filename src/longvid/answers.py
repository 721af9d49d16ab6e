"""The one definition of a correct answer: parsing, extraction and grading of model responses.

Evaluation, the GRPO accuracy reward and the difficulty filter all grade through `judge`, so a
response that scores in one scores in the others. Benchmarks whose official scorer differs keep
that scorer beside ours (`eval/benchmarks/`).

Everything here takes untrusted model output, so every function is bounded and total:

- `parse_response` uses only linear string scans (`find`, `count`) on at most the first
  `MAX_RESPONSE_CHARS` characters; the rest of a longer response is ignored.
- The extractors (`extract_letter`, `extract_choice`, `extract_number`) run regexes on a window
  of at most `WINDOW_CHARS` characters: the whole text when it is short enough, else its first
  and last `WINDOW_CHARS // 2` characters (answers sit at the start or the end of a response).
- Every regex has bounded repetitions or single-class loops followed by a disjoint literal, so
  none can backtrack catastrophically. Non-string input gives "nothing found", never an error.

Letter extraction reads evidence in tiers, strongest first, and the first tier that names a valid
letter decides; two different letters in that tier make the response ambiguous (None):

1. the whole answer is one letter: "B", "(B)", "B.", "**B**", "b", "[b]";
2. an explicit answer phrase: "The answer is B", "answer: (C)", "\\boxed{D}";
3. an option label at the start: "B: Argentina", "B) text", "(b) text";
4. an option phrase: "Option B", "choice (c)";
5. standalone capital letters anywhere ("I pick B since...").

Lower-case letters count only where they cannot be an ordinary word: as the whole answer, in
brackets, or right after an answer phrase when no word follows on the same line ("answer: b").
The English words "A" and "I" are the classic trap ("A ball is red", "I think C"): a capital A or I
followed by a lower-case word is read as the word unless that word is a connective that follows
an option letter ("A or B", "A is correct", "I and J"). A letter right after "not" is ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_RESPONSE_CHARS = 1_000_000  # far beyond any completion budget (~250k tokens)
WINDOW_CHARS = 4_000  # extractors look at the first and last 2,000 characters
MAX_NORMALIZE_CHARS = 10_000  # exact-string answers are short; longer text is cut here

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


@dataclass(frozen=True)
class Parsed:
    """A response split into its reasoning and its answer (both stripped; None when absent)."""

    think: str | None
    answer: str | None
    well_formed: bool


def _as_text(text: object) -> str:
    return text[:MAX_RESPONSE_CHARS] if isinstance(text, str) else ""


def _between(text: str, open_tag: str, close_tag: str) -> str | None:
    """Content between the first `open_tag` and the first `close_tag` after it."""
    start = text.find(open_tag)
    if start < 0:
        return None
    start += len(open_tag)
    end = text.find(close_tag, start)
    return None if end < 0 else text[start:end].strip()


def parse_response(text: str) -> Parsed:
    """Split `<think>…</think> <answer>…</answer>` and say whether the response is well formed.

    Well formed means the whole response, after stripping surrounding whitespace, is exactly
    `<think>T</think>`, optional whitespace, `<answer>A</answer>`, with each tag once: nothing may
    trail `</answer>` (Long-RL's format reward is a full match). Long-RL's regex
    `<think>.*?</think>\\s*<answer>.*?</answer>` under fullmatch also accepts repeated blocks
    (`.*?` can swallow tags); we reject them so a response cannot offer two answers.
    `think` and `answer` are the first such sections, also in malformed responses.
    """
    text = _as_text(text)
    think = _between(text, THINK_OPEN, THINK_CLOSE)
    answer = _between(text, ANSWER_OPEN, ANSWER_CLOSE)
    body = text.strip()
    well_formed = (
        all(body.count(tag) == 1 for tag in _TAGS)
        and body.startswith(THINK_OPEN)
        and body.endswith(ANSWER_CLOSE)
        # With each tag present once, start/end pinned, only the middle order is left to check:
        # </think> then whitespace then <answer>.
        and body[body.find(THINK_CLOSE) + len(THINK_CLOSE) : body.find(ANSWER_OPEN)].strip() == ""
        and body.find(THINK_CLOSE) < body.find(ANSWER_OPEN)
    )
    return Parsed(think=think, answer=answer, well_formed=well_formed)


def answer_text(text: str) -> str:
    """The `<answer>` content when the response has one, else the whole response."""
    answer = parse_response(text).answer
    return answer if answer is not None else _as_text(text)


def _window(text: str) -> str:
    if len(text) <= WINDOW_CHARS:
        return text
    half = WINDOW_CHARS // 2
    # A newline at the seam keeps a token cut in half from fusing with another.
    return text[:half] + "\n" + text[-half:]


def _prepare(text: object) -> str:
    """Answer content, windowed, with markdown emphasis and code marks removed."""
    return _window(answer_text(text)).replace("*", "").replace("`", "")  # type: ignore[arg-type]


# --- letters -----------------------------------------------------------------------------------

# Matched against stripped text; single optional spaces only, so no two loops compete for input.
_LONE = re.compile(r"[(\[]? ?([A-Za-z]) ?[)\]]?[.:]?")
_GAP = r"[^A-Za-z0-9\n]{0,8}"  # punctuation and spaces between a keyword and its letter
_COPULA = r"(?:(?:is|was|be|would\s+be|should\s+be|will\s+be)\b" + _GAP + r")?"
_STRONG = re.compile(
    r"\banswer\b" + _GAP + _COPULA + r"(?:(?:option|choice)\b" + _GAP + r")?([A-Za-z])(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\boxed\{\s*([A-Za-z])\s*\}")
_LABEL = re.compile(r"\s*(?:[(\[]([A-Za-z])[)\]]|([a-z])\)|([A-Z])(?:[.:),]|\s+-))")
_WEAK = re.compile(r"\b(?:option|choice)\b" + _GAP + _COPULA + r"([A-Za-z])(?![A-Za-z0-9])", re.IGNORECASE)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'’\-])([A-Z])(?![A-Za-z0-9'’\-])|[(\[]([a-z])[)\]]")
_NEXT_WORD = re.compile(r"[ \t]+([a-z]+)")
_NOT_BEFORE = re.compile(r"\bnot\s*(?:(?:option|choice)\s*)?[(\[]?$", re.IGNORECASE)
# Words that follow an option letter but never the article "A" or the pronoun "I".
_CONNECTIVES = frozenset(
    "or and nor vs versus is was seems appears looks because since but then than".split()
)


def _is_english_word(text: str, end: int) -> bool:
    """Whether the capital A/I ending at `end` is the article/pronoun, not an option."""
    if text[end - 1] not in "AI":
        return False
    nxt = _NEXT_WORD.match(text, end)
    return nxt is not None and nxt.group(1) not in _CONNECTIVES


def _lowercase_ok(text: str, start: int, end: int) -> bool:
    """A lower-case letter after an answer phrase counts when bracketed or no word follows it."""
    if start > 0 and text[start - 1] in "([" and end < len(text) and text[end] in ")]":
        return True
    return _NEXT_WORD.match(text, end) is None


def _phrase_letters(pattern: re.Pattern[str], text: str, valid: frozenset[str]) -> set[str]:
    found = set()
    for m in pattern.finditer(text):
        letter, start, end = m.group(1), m.start(1), m.end(1)
        if letter.islower() and not _lowercase_ok(text, start, end):
            continue
        if letter.isupper() and _is_english_word(text, end):
            continue
        found.add(letter.upper())
    return found & valid


def _lone_letter(text: str, valid: frozenset[str]) -> set[str]:
    m = _LONE.fullmatch(text.strip())
    return {m.group(1).upper()} & valid if m else set()


def _strong_letters(text: str, valid: frozenset[str]) -> set[str]:
    boxed = {m.group(1).upper() for m in _BOXED.finditer(text)}
    return (_phrase_letters(_STRONG, text, valid) | boxed) & valid


def _label_letter(text: str, valid: frozenset[str]) -> set[str]:
    m = _LABEL.match(text)
    if not m:
        return set()
    letter = next(g for g in m.groups() if g)
    return {letter.upper()} & valid


def _weak_letters(text: str, valid: frozenset[str]) -> set[str]:
    return _phrase_letters(_WEAK, text, valid)


def _standalone_letters(text: str, valid: frozenset[str]) -> set[str]:
    found = set()
    for m in _STANDALONE.finditer(text):
        capital, bracketed = m.group(1), m.group(2)
        if capital and _is_english_word(text, m.end(1)):
            continue
        if _NOT_BEFORE.search(text, max(0, m.start() - 16), m.start()):
            continue
        found.add((capital or bracketed).upper())
    return found & valid


_TIERS = (_lone_letter, _strong_letters, _label_letter, _weak_letters, _standalone_letters)


def _valid_letters(letters: str | Sequence[str]) -> frozenset[str]:
    return frozenset(str(letter).upper() for letter in letters if str(letter).isalpha() and len(str(letter)) == 1)


def extract_letter(text: str, letters: str | Sequence[str] = "ABCD") -> str | None:
    """The multiple-choice letter a response commits to (upper case), or None if none/ambiguous.

    Reads the `<answer>` content when present, else the whole text; see the module docstring for
    the evidence tiers and the lower-case and "A"/"I" rules.
    """
    valid = _valid_letters(letters)
    text = _prepare(text)
    for tier in _TIERS:
        found = tier(text, valid)
        if found:
            return found.pop() if len(found) == 1 else None
    return None


# --- free text ---------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+")
_ARTICLES = frozenset(("a", "an", "the"))


def normalize_text(text: str) -> str:
    """Text for exact-string comparison: case-folded, punctuation and articles dropped.

    SQuAD-style: lower-case (Unicode casefold), every run of non-word characters (punctuation,
    symbols, control characters) becomes one space, the articles a/an/the are removed, and
    whitespace is collapsed. Only the first `MAX_NORMALIZE_CHARS` characters are read.
    """
    if not isinstance(text, str):
        return ""
    words = _NON_WORD.sub(" ", text[:MAX_NORMALIZE_CHARS].casefold()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def extract_choice(text: str, options: Sequence[str]) -> str | None:
    """The chosen option's letter: by letter first, else by matching an option's text.

    The text match compares normalized text: the answer equal to one option, else exactly one
    option appearing in it as whole words (an option contained in another matching option, such
    as "red" inside "dark red", yields to the longer one).
    """
    letters = "".join(chr(ord("A") + i) for i in range(min(len(options), 26)))
    letter = extract_letter(text, letters)
    if letter is not None:
        return letter
    answer = normalize_text(_window(answer_text(text)))
    if not answer:
        return None
    normalized = {letter: normalize_text(opt) for letter, opt in zip(letters, options)}
    normalized = {letter: opt for letter, opt in normalized.items() if opt}  # "The" alone normalizes to ""
    exact = [letter for letter, opt in normalized.items() if opt == answer]
    if exact:
        return exact[0] if len(exact) == 1 else None
    padded = f" {answer} "
    hits = {letter: opt for letter, opt in normalized.items() if f" {opt} " in padded}
    hits = {
        letter: opt
        for letter, opt in hits.items()
        if not any(other != opt and f" {opt} " in f" {other} " for other in hits.values())
    }
    return next(iter(hits)) if len(hits) == 1 else None


# --- numbers -----------------------------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+"
_NUMBER_RE = re.compile(r"(?<![\w.])(?:" + _NUMBER + r")")
_ANSWER_NUMBER = re.compile(
    r"\banswer\b" + _GAP + _COPULA + r"(" + _NUMBER + ")",
    re.IGNORECASE,
)
_MAX_WORDS_FOR_NUMBER_WORDS = 4
_NUMBER_WORDS = {
    word: float(i)
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


def _to_float(token: str) -> float | None:
    token = token.replace(",", "")
    try:
        if "/" in token:
            numerator, denominator = token.split("/")
            value = float(numerator) / float(denominator)
        else:
            value = float(token)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def _single(values: list[float | None]) -> float | None:
    distinct = {v for v in values if v is not None}
    return distinct.pop() if len(distinct) == 1 else None


def extract_number(text: str) -> float | None:
    """The number a response answers with, or None if it names none or several.

    Reads the `<answer>` content (else the whole text). Understands "1,234", "-3.5", ".5", "3/4",
    "45s", "50%" (as 50), and the words zero..twenty in an answer of at most four words. When
    several different numbers appear, the one right after an answer phrase ("the answer is 7")
    decides; otherwise the response is ambiguous.
    """
    text = _window(answer_text(text)).replace("\u2212", "-")  # Unicode minus sign
    values = [_to_float(m.group()) for m in _NUMBER_RE.finditer(text)]
    if not values:
        # Number words only in a short answer ("three", "three people"): in prose, "one" is
        # more often a pronoun than a count.
        words = normalize_text(text).split()
        if len(words) > _MAX_WORDS_FOR_NUMBER_WORDS:
            return None
        return _single([_NUMBER_WORDS.get(w) for w in words])
    if (value := _single(values)) is not None:
        return value
    return _single([_to_float(m.group(1)) for m in _ANSWER_NUMBER.finditer(text)])


# --- grading -----------------------------------------------------------------------------------

KINDS = ("choice", "number", "text")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Verdict:
    """What a response answered (a letter, a number, normalized text; None if nothing usable)."""

    predicted: str | float | None
    correct: bool


def gold_number(answer: str) -> float | None:
    """The answer as a finite number ("1,000" reads 1000), or None when it is not a plain number."""
    try:
        value = float(answer.strip().replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def infer_kind(answer: str, options: Sequence[str] | None = None) -> str:
    """"choice" with options, "number" when the answer is a plain number, else "text"."""
    if options:
        return "choice"
    return "number" if gold_number(answer) is not None else "text"


def judge(
    text: str,
    answer: str,
    options: Sequence[str] | None = None,
    kind: str | None = None,
    *,
    rel_tol: float = 1e-3,
    abs_tol: float = 1e-6,
) -> Verdict:
    """Grade a response against the gold `answer`.

    The graded text is the `<answer>` content, or the whole response when it has none (as in
    Long-RL; the format reward is what punishes a missing tag). A choice answer is a letter, read
    by `extract_choice` (letter, else option text); without `options` any letter A-Z is read (no
    letter set derived from the gold answer, which would let a hedge like "E or F" pass). Numbers
    match within `rel_tol`/`abs_tol`; text matches after `normalize_text`.
    """
    kind = kind or infer_kind(answer, options)
    if kind == "choice":
        predicted = extract_choice(text, options) if options else extract_letter(text, LETTERS)
        return Verdict(predicted, predicted == answer.strip().upper())
    if kind == "number":
        gold = gold_number(answer)
        if gold is None:
            raise ValueError(f"answer {answer!r} is graded as a number but is not one")
        value = extract_number(text)
        return Verdict(value, value is not None and math.isclose(value, gold, rel_tol=rel_tol, abs_tol=abs_tol))
    if kind == "text":
        normalized = normalize_text(answer_text(text))
        return Verdict(normalized or None, bool(normalized) and normalized == normalize_text(answer))
    raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
