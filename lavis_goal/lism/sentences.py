"""Split long captions into sentences with character offsets.

A sentence ends at ``.``, ``!``, ``?`` or an ellipsis, with any closing quotes
or brackets after it, where whitespace follows. A blank line also ends a
sentence. An end is rejected in these cases:

- inside a double-quoted passage (``"2. NO RUNNING"``, ``"$19. 95"``);
- after a single letter, read as an initial (``J. R. R. Tolkien``, ``T. rex``,
  ``p. m.``), unless an article names the letter (``the S. There``) or a common
  sentence opener follows;
- after a title such as ``Mr.`` or ``St.`` unless a common sentence opener
  follows, and always after ``e.g.``, ``approx.`` and the like;
- after ``etc.``, ``Inc.``, ``U.S.`` and the like unless a capital follows, and
  after ``No.`` before a number;
- between the two halves of a number (``2. 5 ft``);
- after ``!``, ``?`` or an ellipsis before a lowercase word.

A plain period before a lowercase word still ends a sentence, because some
captions start sentences in lowercase (``... of the image. its paw ...``).
Decimals such as ``3.5`` have no whitespace after the point, so they never
end a sentence.

Sentences are cut only at whitespace. Each keeps its final punctuation, and
the text between two sentences is whitespace. On the DOCCI test captions,
CLIP's BPE tokens of the sentences, concatenated, equal the tokens of the
whole caption.
"""

import re
from dataclasses import dataclass
from typing import List, Optional, Set, Tuple

# Titles, which a name follows: a sentence end only before a common sentence opener.
TITLES = {
    "mr", "mrs", "ms", "messrs", "dr", "prof", "st", "mt", "sgt", "capt", "lt", "col", "gen", "gov",
    "rev", "hon", "sen", "rep", "pres", "supt", "fr",
}
# Abbreviations that never end a sentence in practice.
NEVER_FINAL = {"e.g", "i.e", "vs", "approx", "cf", "ca", "fig", "figs", "viz", "incl", "esp", "al", "resp", "eg", "ie"}
# Abbreviations that introduce a number ("No. 5", "Vol. 2", "pp. 10").
BEFORE_NUMBER = {"no", "nos", "vol", "vols", "pp", "pg", "ch", "sec", "art", "op", "nr"}
# Abbreviations that often end a sentence: a sentence end only before a capital.
OFTEN_FINAL = {
    "etc", "inc", "ltd", "co", "corp", "bros", "jr", "sr", "ave", "blvd", "rd", "ft", "lbs", "oz", "mph", "hrs",
}

# Capitalised words that start sentences but are rarely part of a name. After
# "St." or an initial ("Dragonball Z. The one ..."), one of them marks a sentence end.
SENTENCE_STARTERS = {
    "The", "A", "An", "There", "It", "Its", "It's", "This", "That", "These", "Those", "In", "On", "At", "To",
    "Behind", "Below", "Above", "Under", "Underneath", "Next", "Near", "Beside", "Beyond", "Between", "Along",
    "Around", "He", "She", "They", "Both", "Each", "All", "Some", "Two", "Three", "One", "Several", "Another",
    "From", "With", "Inside", "Outside", "Over", "Across", "Further", "Farther", "Here", "Daytime", "Nighttime",
}

# Words before a single letter that make it a letter, not an initial: "the S.", "an X.".
LETTER_CONTEXT = {
    "the", "a", "an", "each", "every", "letter", "letters", "capital", "uppercase", "lowercase", "shape", "shaped",
    "big", "small", "large",
}

_END_RUN = re.compile(r"[.!?\u2026]+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_DOTTED_ABBREVIATION = re.compile(r"^(?:[a-z]\.)+[a-z]$")
_CLOSERS = "\"')]}\u201d\u2019\u00bb"
_OPENERS = "\"'([{\u201c\u2018\u00ab"


@dataclass(frozen=True)
class Sentence:
    """One sentence of a caption: ``caption[start:end] == text``."""

    text: str
    start: int
    end: int


def split_sentences(caption: str) -> List[Sentence]:
    """Split ``caption`` into sentences; see the module docstring for the rules.

    Every returned sentence contains a letter or a digit: a piece made only
    of punctuation (``"It is red. ."``) is joined to the sentence before it,
    or to the next one at the start of the caption. Leading and trailing
    whitespace is not part of any sentence.
    """
    return [Sentence(caption[a:b], a, b) for a, b in sentence_offsets(caption)]


def sentence_offsets(caption: str) -> List[Tuple[int, int]]:
    """Return ``(start, end)`` character offsets of the sentences of ``caption``."""
    quoted = _quoted_spans(caption)
    cuts = sorted(set(_sentence_ends(caption, quoted)) | set(_paragraph_breaks(caption)))

    pieces = []
    start = 0
    for cut in cuts + [len(caption)]:
        piece = _strip(caption, start, cut)
        if piece is not None:
            pieces.append(piece)
        start = cut
    return _join_punctuation_only(caption, pieces)


def _strip(caption: str, start: int, end: int) -> Optional[Tuple[int, int]]:
    while start < end and caption[start].isspace():
        start += 1
    while end > start and caption[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def _join_punctuation_only(caption: str, pieces: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    joined: List[Tuple[int, int]] = []
    carry_start: Optional[int] = None
    for start, end in pieces:
        if not any(ch.isalnum() for ch in caption[start:end]):
            if joined:
                joined[-1] = (joined[-1][0], end)
            elif carry_start is None:
                carry_start = start
            continue
        joined.append((carry_start if carry_start is not None else start, end))
        carry_start = None
    return joined


def _paragraph_breaks(caption: str) -> List[int]:
    return [match.start() for match in _PARAGRAPH_BREAK.finditer(caption)]


def _quoted_spans(caption: str) -> List[Tuple[int, int]]:
    """Return ``(open, close)`` indices of paired double quotes.

    Curly quotes pair by their shape. A straight quote opens when whitespace
    (or an opening bracket) precedes it and a character other than space or
    punctuation follows it. It closes when a non-space character precedes it
    and whitespace or punctuation follows it. Any other quote toggles.
    A second opening quote replaces an unclosed first one, and a closing
    quote with nothing open is ignored, so one stray quote (``the "L. White``)
    does not swallow the rest of the caption. A paragraph break drops an
    unclosed quote.
    """
    breaks = set(_paragraph_breaks(caption))
    spans = []
    open_at: Optional[int] = None
    for index, char in enumerate(caption):
        if index in breaks:
            open_at = None
        if char == "\u201c":
            open_at = index
            continue
        if char == "\u201d":
            if open_at is not None:
                spans.append((open_at, index))
            open_at = None
            continue
        if char != '"':
            continue
        before = caption[index - 1] if index > 0 else None
        after = caption[index + 1] if index + 1 < len(caption) else None
        opens = (
            (before is None or before.isspace() or before in "([{")
            and after is not None and not after.isspace() and after not in ",.;:!?)]}"
        )
        closes = (
            before is not None and not before.isspace()
            and (after is None or after.isspace() or after in ",;:)]}")
        )
        if opens:
            open_at = index
        elif closes or open_at is not None:
            if open_at is not None:
                spans.append((open_at, index))
            open_at = None
        else:
            open_at = index
    return spans


def _inside(position: int, spans: List[Tuple[int, int]]) -> bool:
    """Return whether a cut before ``caption[position]`` falls between a quote pair."""
    return any(open_at < position <= close_at for open_at, close_at in spans)


def _sentence_ends(caption: str, quoted: List[Tuple[int, int]]) -> List[int]:
    closing_quotes = {close_at for _, close_at in quoted}
    cuts = []
    for match in _END_RUN.finditer(caption):
        for cut, has_closers in _cut_candidates(caption, match.end(), closing_quotes):
            if _inside(cut, quoted):
                continue
            if _is_sentence_end(caption, match.start(), match.end(), cut, has_closers):
                cuts.append(cut)
            break
    return cuts


def _cut_candidates(caption: str, punct_end: int, closing_quotes: Set[int]):
    """Yield ``(cut, has_closers)`` for positions after the punctuation where whitespace or the end follows.

    The first candidate directly follows the punctuation and any closers
    stuck to it (``."`` or ``.)``). A second one also takes a closing quote
    after one space (``SHOOT! " The``), which some captions contain.
    """
    position = punct_end
    while position < len(caption) and caption[position] in _CLOSERS:
        position += 1
    if position == len(caption) or caption[position].isspace():
        yield position, position > punct_end
    if (
        position + 1 < len(caption)
        and caption[position] == " "
        and position + 1 in closing_quotes
        and (position + 2 == len(caption) or caption[position + 2].isspace())
    ):
        yield position + 2, True


def _next_word(caption: str, position: int) -> str:
    """Return the next word after ``position``, without leading whitespace or opening punctuation."""
    while position < len(caption) and (caption[position].isspace() or caption[position] in _OPENERS):
        position += 1
    end = position
    while end < len(caption) and not caption[end].isspace():
        end += 1
    return caption[position:end]


def _previous_token(caption: str, punct_start: int) -> str:
    start = punct_start
    while start > 0 and not caption[start - 1].isspace():
        start -= 1
    return caption[start:punct_start]


def _is_sentence_end(caption: str, punct_start: int, punct_end: int, cut: int, has_closers: bool) -> bool:
    if cut >= len(caption.rstrip()):
        return True
    punctuation = caption[punct_start:punct_end]
    following = _next_word(caption, cut)
    if not following:
        return True
    starts_lower = following[0].islower()
    starts_upper = following[0].isupper()
    starts_digit = following[0].isdigit()

    if punctuation != ".":
        # "!", "?", an ellipsis or "..": a lowercase word continues the sentence.
        return not starts_lower
    if has_closers:
        # '"81." There' or '(see left.) The': the period closes a quote or a bracket.
        return True

    token = _previous_token(caption, punct_start)
    word = token.lstrip(_OPENERS)
    lowered = word.lower()
    starts_sentence = following.rstrip(",;:.!?" + _CLOSERS) in SENTENCE_STARTERS
    if len(word) == 1 and word.isalpha():
        return _ends_after_single_letter(caption, punct_start - len(token), following, starts_sentence)
    if lowered in TITLES:
        # "St. Francis" and "Dr. Lee", but "... on San Antonio St. To the right ...".
        return starts_sentence
    if lowered in NEVER_FINAL:
        return False
    if lowered in BEFORE_NUMBER:
        return not starts_digit
    if lowered in OFTEN_FINAL or _DOTTED_ABBREVIATION.match(lowered):
        # "etc.", "U.S.", "a.m.": a sentence end only before a capital letter.
        return starts_upper
    if word and word[-1].isdigit() and starts_digit:
        # A number broken by a space: "2. 5 ft", "$19. 95".
        return False
    return True


def _ends_after_single_letter(caption: str, token_start: int, following: str, starts_sentence: bool) -> bool:
    """Decide whether a period after a single letter ends the sentence.

    "T. rex", "p. m." and "J. R. R. Tolkien" continue. A letter named after an
    article ("the shape of the S. There ...") or a unit after a number
    ("3.5 m. Next ...") ends the sentence before a capital. After other words
    ("Dragonball Z. The one ...") only a common sentence opener ends it.
    """
    if not following[:1].isupper():
        return False
    if len(following) >= 2 and following[0].isupper() and following[1] == ".":
        return False  # a chain of initials
    previous_end = token_start
    while previous_end > 0 and caption[previous_end - 1].isspace():
        previous_end -= 1
    previous_word = _previous_token(caption, previous_end).lstrip(_OPENERS).lower()
    if previous_word in LETTER_CONTEXT or previous_word[-1:].isdigit():
        return True  # a named letter ("the S.") or a unit after a number ("3.5 m.")
    return starts_sentence
