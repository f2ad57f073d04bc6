"""Read and check the annotation lists GOAL uses.

Accepted record formats (a JSON list of records per file):

- evaluation list: ``{"filename": path, "caption": text or [texts]}``;
- LAVIS retrieval list: ``{"image": path, "caption": text or [texts]}``;
- training list: ``{"original_filename", "original_caption", "segment": [{"caption",
  "similarity_score", "bbox_coordinates": {"x1", "y1", "x2", "y2", ...}}]}``.
  ``x2, y2`` are original pixels; ``width`` and ``height`` there are the crop's
  size and are ignored.

Every problem names the file, the record index and the fix. With
``skip_invalid_records`` a bad record (or a bad local pair) is skipped, counted
and logged instead.
"""

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from lavis_goal.text_spans import split_sentence_offsets

logger = logging.getLogger(__name__)

# A box that covers at least this share of the image is the whole image, which
# TSL cannot learn from (the pooled tokens would be all patches).
WHOLE_IMAGE_AREA = 0.95
# Boxes may exceed the image by rounding; beyond this many pixels they are errors.
BOX_TOLERANCE_PX = 1.0
MAX_LOGGED_SKIPS = 20


class AnnotationError(ValueError):
    """A record that cannot be used; the message names the file, record and fix."""


@dataclass
class LocalPair:
    sentence: str
    box: Tuple[float, float, float, float]
    score: float
    char_start: int = -1
    char_end: int = -1


@dataclass
class Record:
    index: int
    image_path: str
    captions: List[str]
    pairs: List[LocalPair] = field(default_factory=list)
    image_size: Optional[Tuple[int, int]] = None  # (width, height)


@dataclass
class LoadOptions:
    image_root: Optional[str] = None
    skip_invalid_records: bool = False
    top_k: int = 1
    min_score: Optional[float] = None
    drop_whole_image: bool = True
    check_images: bool = True
    caption_processor: Optional[Callable[[str], str]] = None


class SkipCounter:
    """Count and log skipped records and pairs by reason."""

    def __init__(self, source: str):
        self.source = source
        self.counts: Counter = Counter()

    def skip(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        total = sum(self.counts.values())
        if total <= MAX_LOGGED_SKIPS:
            logger.warning("Skipped: %s", message)
        elif total == MAX_LOGGED_SKIPS + 1:
            logger.warning("More skips in %s; further ones are only counted", self.source)

    def summary(self) -> str:
        return ", ".join(f"{count} {reason}" for reason, count in sorted(self.counts.items())) or "none"


def resolve_image_path(filename: str, image_root: Optional[str]) -> str:
    """Join ``filename`` to ``image_root``.

    Relative names are joined as they are, unless that file does not exist
    and ``image_root / basename`` does. Absolute names keep only their base
    name. Both cases serve the reference lists, which carry the authors'
    folders or a placeholder folder in front of each file name.
    """
    if not image_root:
        return filename
    if os.path.isabs(filename):
        return os.path.join(image_root, os.path.basename(filename))
    joined = os.path.join(image_root, filename)
    flat = os.path.join(image_root, os.path.basename(filename))
    if not os.path.exists(joined) and os.path.exists(flat):
        return flat
    return joined


def read_json_list(path: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file {path} not found; set build_info.annotations.<split>.storage to an existing file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        # A binary file fails UTF-8 decoding before the JSON parser reads it.
        raise AnnotationError(
            f"Annotation file {path} is not valid UTF-8 JSON: {error}; it must contain one JSON list of "
            "records (convert JSON Lines files to a list)"
        ) from error
    if not isinstance(data, list):
        raise AnnotationError(f"Annotation file {path} must hold a JSON list of records, got {type(data).__name__}")
    return data


def load_records(path: str, options: LoadOptions) -> Tuple[List[Record], SkipCounter]:
    """Parse and check every record of ``path``; see the module docstring for formats."""
    raw = read_json_list(path)
    return parse_records(raw, path, options)


def parse_records(raw: Sequence[dict], source: str, options: LoadOptions) -> Tuple[List[Record], SkipCounter]:
    skips = SkipCounter(source)
    records = []
    for index, item in enumerate(raw):
        try:
            record = _parse_record(item, index, source, options, skips)
        except (AnnotationError, FileNotFoundError) as error:
            if not options.skip_invalid_records:
                raise
            skips.skip(_reason(error), str(error))
            continue
        records.append(record)

    if skips.counts:
        logger.warning("%s: kept %d of %d records; skipped %s", source, len(records), len(raw), skips.summary())
    if not records:
        raise AnnotationError(
            f"No usable records in {source} ({len(raw)} in the file, skipped: {skips.summary()}); "
            "check the file and the image root"
        )
    return records, skips


def _reason(error: Exception) -> str:
    return getattr(error, "reason", type(error).__name__)


def _error(kind, reason: str, message: str):
    error = kind(message)
    error.reason = reason
    return error


def _parse_record(item, index: int, source: str, options: LoadOptions, skips: SkipCounter) -> Record:
    where = f"record {index} of {source}"
    if not isinstance(item, dict):
        raise _error(AnnotationError, "not an object", f"{where} is a {type(item).__name__}, expected a JSON object")

    filename = item.get("original_filename", item.get("filename", item.get("image")))
    if not filename:
        raise _error(AnnotationError, "no image", f"{where} has no image file ('original_filename', 'filename' or 'image'); add it or set skip_invalid_records: true")
    captions = item.get("original_caption", item.get("caption"))
    if isinstance(captions, str):
        captions = [captions]
    if captions is not None and not isinstance(captions, list):
        raise _error(AnnotationError, "invalid caption", f"{where} has a caption of type {type(captions).__name__}; write the caption as a string or a list of strings, or set skip_invalid_records: true")
    if options.caption_processor is not None and captions:
        captions = [options.caption_processor(c) if isinstance(c, str) else c for c in captions]
    if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise _error(AnnotationError, "no caption", f"{where} has no caption ('original_caption' or 'caption'); add one or set skip_invalid_records: true")
    for caption in captions:
        if not any(any(ch.isalnum() for ch in caption[a:b]) for a, b in split_sentence_offsets(caption)):
            raise _error(AnnotationError, "no sentence", f"{where} has a caption with no sentence (no letters or digits): {caption[:80]!r}; fix the caption or set skip_invalid_records: true")

    image_path = resolve_image_path(str(filename), options.image_root)
    image_size = _image_size(image_path, where) if options.check_images else None
    record = Record(index=index, image_path=image_path, captions=list(captions), image_size=image_size)

    segments = item.get("segment", [])
    if segments is None:
        segments = []
    if not isinstance(segments, list):
        raise _error(AnnotationError, "bad segments", f"{where}: 'segment' must be a list of local pairs")
    pairs = []
    for pair_index, segment in enumerate(segments):
        try:
            pairs.append(_parse_pair(segment, f"local pair {pair_index} of {where}", record))
        except AnnotationError as error:
            if not options.skip_invalid_records:
                raise
            skips.skip(f"local pair: {_reason(error)}", str(error))
    record.pairs = select_pairs(pairs, record, options)
    return record


def _image_size(path: str, where: str) -> Tuple[int, int]:
    if not os.path.isfile(path):
        raise _error(FileNotFoundError, "missing image", f"Image {path} of {where} not found; set the image root (build_info.images.storage) to the folder that holds it, or set skip_invalid_records: true")
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise _error(AnnotationError, "unreadable image", f"Image {path} of {where} cannot be read ({error}); replace the file or set skip_invalid_records: true") from error


def _parse_pair(segment, where: str, record: Record) -> LocalPair:
    if not isinstance(segment, dict):
        raise _error(AnnotationError, "bad pair", f"{where} is not a JSON object")
    sentence = segment.get("caption")
    if not isinstance(sentence, str) or not sentence.strip():
        raise _error(AnnotationError, "no sentence", f"{where} has no sentence ('caption'); add it or set skip_invalid_records: true")
    sentence = " ".join(sentence.split())
    caption = record.captions[0]
    start = caption.find(sentence)
    if start < 0:
        raise _error(AnnotationError, "sentence not in caption", f"{where}: the sentence {sentence[:60]!r} does not occur in the caption; local sentences must be copied from their caption (or set skip_invalid_records: true)")

    coords = segment.get("bbox_coordinates", segment.get("box"))
    try:
        if isinstance(coords, dict):
            box = tuple(float(coords[k]) for k in ("x1", "y1", "x2", "y2"))
        else:
            box = tuple(float(v) for v in coords)
            if len(box) != 4:
                raise ValueError
    except (KeyError, TypeError, ValueError):
        raise _error(AnnotationError, "bad box", f"{where} needs bbox_coordinates with x1, y1, x2, y2 in original pixels, got {coords!r}") from None
    box = _check_box(box, where, record)

    score = segment.get("similarity_score", segment.get("score", 0.0))
    try:
        score = float(score)
    except (TypeError, ValueError):
        raise _error(AnnotationError, "bad score", f"{where} has an invalid similarity_score {score!r}; write a number, or remove the key to use 0") from None
    return LocalPair(sentence=sentence, box=box, score=score, char_start=start, char_end=start + len(sentence))


def _check_box(box, where: str, record: Record):
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise _error(AnnotationError, "empty box", f"{where}: box {box} has zero area (needs x2 > x1 and y2 > y1 in original pixels)")
    if record.image_size is None:
        return box
    width, height = record.image_size
    if x1 < -BOX_TOLERANCE_PX or y1 < -BOX_TOLERANCE_PX or x2 > width + BOX_TOLERANCE_PX or y2 > height + BOX_TOLERANCE_PX:
        raise _error(AnnotationError, "box outside image", f"{where}: box {box} lies outside the {width}x{height} image {record.image_path}; boxes are in original pixels (do not scale by the crop's width and height)")
    return (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))


def select_pairs(pairs: List[LocalPair], record: Record, options: LoadOptions) -> List[LocalPair]:
    """Keep the ``top_k`` pairs by score, without whole-image boxes when ``drop_whole_image``."""
    kept = pairs
    if options.drop_whole_image and record.image_size is not None:
        width, height = record.image_size
        kept = [p for p in kept if (p.box[2] - p.box[0]) * (p.box[3] - p.box[1]) < WHOLE_IMAGE_AREA * width * height]
    if options.min_score is not None:
        kept = [p for p in kept if p.score >= options.min_score]
    kept = sorted(kept, key=lambda p: p.score, reverse=True)
    return kept[: options.top_k] if options.top_k > 0 else kept
