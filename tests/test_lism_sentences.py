import json
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lavis_goal.lism.sentences import sentence_offsets, split_sentences

REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "reference-data"
DOCCI_CAPTIONS = REFERENCE_DATA / "docci_test_captions.json"


def texts(caption):
    return [sentence.text for sentence in split_sentences(caption)]


@pytest.mark.parametrize(
    "caption,expected",
    [
        # plain sentences, final punctuation kept
        ("A dog sits. A cat sleeps.", ["A dog sits.", "A cat sleeps."]),
        ("Is it red? Yes! It is.", ["Is it red?", "Yes!", "It is."]),
        ("No final period", ["No final period"]),
        ("  Leading space.  Trailing space.  ", ["Leading space.", "Trailing space."]),
        ("", []),
        ("   ", []),
        # sentences that start lowercase, as some DOCCI captions do
        ("The dog faces left. its paw is raised. daytime.", ["The dog faces left.", "its paw is raised.", "daytime."]),
        # decimals
        ("The sign reads 3.5 m. Next to it is a pole.", ["The sign reads 3.5 m.", "Next to it is a pole."]),
        ("A sign reads 3.5 m. Next.", ["A sign reads 3.5 m.", "Next."]),
        ("The bar is 2 m. Green paint covers it.", ["The bar is 2 m.", "Green paint covers it."]),
        ("A bottle holds 0.75 l of water. It is green.", ["A bottle holds 0.75 l of water.", "It is green."]),
        ("The pieces are about 2ft -2. 5ft in height. A chair sits nearby.",
         ["The pieces are about 2ft -2. 5ft in height.", "A chair sits nearby."]),
        # abbreviations
        ("Mr. Smith waves. He is tall.", ["Mr. Smith waves.", "He is tall."]),
        ("Dr. No. 5 is here. It is late.", ["Dr. No. 5 is here.", "It is late."]),
        ("The box is approx. five feet wide. It is red.", ["The box is approx. five feet wide.", "It is red."]),
        ("Fruit, e.g. apples, sits in a bowl. The bowl is blue.", ["Fruit, e.g. apples, sits in a bowl.", "The bowl is blue."]),
        ("Cups, plates, etc. are on the table. The table is oak.", ["Cups, plates, etc. are on the table.", "The table is oak."]),
        ("There are cups, plates, etc. The table is oak.", ["There are cups, plates, etc.", "The table is oak."]),
        ("It sits on St. Augustine grass. A dog runs.", ["It sits on St. Augustine grass.", "A dog runs."]),
        ("The site is on San Antonio St. To the right is a crane.", ["The site is on San Antonio St.", "To the right is a crane."]),
        ("The clock shows 11:51 p. m. on both faces. Below it is a door.",
         ["The clock shows 11:51 p. m. on both faces.", "Below it is a door."]),
        ("The pole is 10 ft. tall and gray. The sign is 3 ft. It is red.",
         ["The pole is 10 ft. tall and gray.", "The sign is 3 ft.", "It is red."]),
        ("A statue of Martin Luther King Jr. He looks up.", ["A statue of Martin Luther King Jr.", "He looks up."]),
        ("The flag of the U.S. hangs there. It is old.", ["The flag of the U.S. hangs there.", "It is old."]),
        ("A sum (i. e., an area) is shown. Below it is a graph.", ["A sum (i. e., an area) is shown.", "Below it is a graph."]),
        # initials
        ("A statue of J. R. R. Tolkien stands here. It is bronze.", ["A statue of J. R. R. Tolkien stands here.", "It is bronze."]),
        ("A sculpture of William E. Dodge. It is gray.", ["A sculpture of William E. Dodge.", "It is gray."]),
        ("The skeleton of a T. rex stands under a tree. It is white.",
         ["The skeleton of a T. rex stands under a tree.", "It is white."]),
        # a letter named after a lowercase word ends the sentence
        ("The stripes form a Y shape on each side of the Y. The cheeks are white.",
         ["The stripes form a Y shape on each side of the Y.", "The cheeks are white."]),
        ("The figure is Goku from Dragonball Z. The one next to him is red.",
         ["The figure is Goku from Dragonball Z.", "The one next to him is red."]),
        # ellipses
        ("He waited... and waited. Then he left.", ["He waited... and waited.", "Then he left."]),
        ("He waited... Then he left.", ["He waited...", "Then he left."]),
        ("He waited\u2026 Then he left.", ["He waited\u2026", "Then he left."]),
        # quoted numbers and quoted text
        ('A sticker reads "6407" in black. A cat sits behind it.', ['A sticker reads "6407" in black.', "A cat sits behind it."]),
        ('The tiles spell "81." There are two tiles.', ['The tiles spell "81."', "There are two tiles."]),
        ('It says "$19. 95 / IN-TOWN" in green letters. Below it is a door.',
         ['It says "$19. 95 / IN-TOWN" in green letters.', "Below it is a door."]),
        ('A paper reads,"2. NO RUNNING / INSIDE! ", and a line is under it. The wall is white.',
         ['A paper reads,"2. NO RUNNING / INSIDE! ", and a line is under it.', "The wall is white."]),
        ('It reads "HAVE A / GREAT / SHOOT! " The dog faces forward.', ['It reads "HAVE A / GREAT / SHOOT! "', "The dog faces forward."]),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("It says \u201cNo. 5. Open.\u201d The door is red.", ["It says \u201cNo. 5. Open.\u201d", "The door is red."]),
        # a stray quote does not swallow the rest of the caption
        ('A wall in the shape of an upside-down "L. White paint drips on it. A circle is drawn.',
         ['A wall in the shape of an upside-down "L. White paint drips on it.', "A circle is drawn."]),
        ('Red picks show "1\', blue picks show "5". The wheel spins. It is lit.',
         ['Red picks show "1\', blue picks show "5".', "The wheel spins.", "It is lit."]),
        # brackets and paragraphs
        ("A dog (left.) A cat (right.) Both sleep.", ["A dog (left.)", "A cat (right.)", "Both sleep."]),
        ("First paragraph without a period\n\nSecond one.", ["First paragraph without a period", "Second one."]),
        # punctuation-only pieces join their neighbour
        ("It is red. . It is round.", ["It is red. .", "It is round."]),
        (". It is round.", [". It is round."]),
    ],
)
def test_split_hard_cases(caption, expected):
    assert texts(caption) == expected


def test_offsets_index_the_caption():
    caption = 'Mr. Lee stands. A sign reads "3.5 km." Next to it, etc.'
    for sentence in split_sentences(caption):
        assert caption[sentence.start : sentence.end] == sentence.text
    assert sentence_offsets(caption) == [(s.start, s.end) for s in split_sentences(caption)]


def check_rebuilds(caption):
    """The sentences and the whitespace between them rebuild the caption exactly."""
    offsets = sentence_offsets(caption)
    if not any(ch.isalnum() for ch in caption):
        assert offsets == []
        return
    position = 0
    for start, end in offsets:
        assert start >= position
        assert caption[position:start].strip() == ""
        piece = caption[start:end]
        assert piece == piece.strip()
        assert any(ch.isalnum() for ch in piece)
        position = end
    assert caption[position:].strip() == ""
    assert offsets


words = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8),
    st.integers(0, 10_000).map(str),
    st.sampled_from(["3.5", "Mr.", "e.g.", "T.", "etc.", '"6407"', '"81."', "...", '"', "(left.)", "St.", "U.S.", "--", "!", "?"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(words, max_size=40), st.sampled_from([" ", "  ", "\n", "\n\n", " \t"]))
def test_offsets_rebuild_any_text(tokens, separator):
    check_rebuilds(separator.join(tokens))


@pytest.mark.skipif(not DOCCI_CAPTIONS.is_file(), reason=f"{DOCCI_CAPTIONS} not found (DOCCI test captions)")
def test_docci_offsets_rebuild_every_caption():
    records = json.loads(DOCCI_CAPTIONS.read_text(encoding="utf-8"))
    assert len(records) == 5100
    counts = Counter()
    for record in records:
        check_rebuilds(record["caption"])
        counts[len(sentence_offsets(record["caption"]))] += 1
    # Every DOCCI caption has at least one sentence.
    assert 0 not in counts
    assert sum(counts.values()) == 5100


@pytest.mark.skipif(not DOCCI_CAPTIONS.is_file(), reason=f"{DOCCI_CAPTIONS} not found (DOCCI test captions)")
def test_docci_sentence_tokens_align_with_caption():
    """Each sentence's CLIP tokens sit unchanged inside the caption's tokens (what TSL pools)."""
    import lavis_goal  # noqa: F401  registers the tiny open_clip config
    from lavis_goal.datasets.builders import get_span_tokenizer

    tokenizer = get_span_tokenizer("goal-tiny-vit", 248)
    records = json.loads(DOCCI_CAPTIONS.read_text(encoding="utf-8"))
    step = 1 if os.environ.get("LAVIS_GOAL_FULL_DOCCI") == "1" else 10
    statuses = Counter()
    for record in records[::step]:
        caption = record["caption"]
        encoded = tokenizer.encode_caption(caption)
        for start, end in sentence_offsets(caption):
            statuses[tokenizer.sentence_span(encoded, caption, start, end)[2]] += 1
    assert statuses["misaligned"] == 0
    assert statuses["empty"] == 0
    assert statuses["ok"] > 0
