"""Read the image / caption lists that LISM mines.

Three inputs are recognised:

- a JSON list: evaluation style ``{"filename": path, "caption": text or [texts]}``,
  LAVIS style ``{"image", "caption"}``, or a training list
  (``original_filename``, ``original_caption``), which is mined again;
- DOCCI's ``docci_descriptions.jsonlines`` (any ``.jsonl``/``.jsonlines``
  file): one JSON object per line with ``image_file`` and ``description``,
  filtered by ``split`` when splits are given. The image root defaults to
  the ``images`` folder next to the file;
- an Urban1k folder: ``image/N.jpg`` with ``caption/N.txt``. The image root is
  the folder, and file names are ``image/N.jpg``.

A record with several captions becomes one work item per caption. Records that
cannot be used are counted by reason and skipped; an input with no usable
record is an error.
"""

import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from lavis_goal.datasets.annotations import resolve_image_path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
JSON_LINES_EXTENSIONS = (".jsonl", ".jsonlines")
MAX_LOGGED_SKIPS = 20


@dataclass(frozen=True)
class WorkItem:
    """One image and one caption to mine.

    Attributes:
        index: position in the list of work items (chunks are ranges of it).
        filename: the file name as written in the input; the output keeps it.
        image_path: the file on disk (``filename`` joined to the image root).
        caption: the long caption.
        where: the input record, for messages (``record 12 of list.json``).
    """

    index: int
    filename: str
    image_path: str
    caption: str
    where: str


@dataclass
class InputList:
    """Work items read from an input, with the records that were skipped."""

    items: List[WorkItem]
    image_root: Optional[str]
    source: str
    kind: str
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: List[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Return a SHA-256 over every item's file name and caption, to detect a changed input on resume."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(json.dumps([item.filename, item.caption], ensure_ascii=False).encode("utf-8"))
        return digest.hexdigest()


class _Reader:
    def __init__(self, source: str, kind: str, image_root: Optional[str]):
        self.source = source
        self.kind = kind
        self.image_root = image_root
        self.items: List[WorkItem] = []
        self.skipped: Counter = Counter()
        self.examples: List[str] = []

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_LOGGED_SKIPS:
            self.examples.append(message)
            logger.warning("Skipped input record: %s", message)

    def add(self, filename, captions, where: str) -> None:
        if not isinstance(filename, str) or not filename.strip():
            self.skip("no image file", f"{where} has no image file name; add 'filename' (or 'image')")
            return
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list) or not captions:
            self.skip("no caption", f"{where} has no caption; add 'caption' as a string or a list of strings")
            return
        path = resolve_image_path(filename, self.image_root)
        for number, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                self.skip("no caption", f"caption {number} of {where} is empty or not a string")
                continue
            self.items.append(WorkItem(len(self.items), filename, path, caption, where))

    def finish(self) -> InputList:
        if not self.items:
            summary = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common()) or "the input is empty"
            raise ValueError(f"No usable image / caption pair in {self.source} ({summary}); check the file and --split")
        if self.skipped:
            logger.warning("%s: %d work items, skipped %s", self.source, len(self.items), dict(self.skipped))
        return InputList(self.items, self.image_root, self.source, self.kind, self.skipped, self.examples)


def read_input(path: str, image_root: Optional[str] = None, splits: Optional[Sequence[str]] = None) -> InputList:
    """Read work items from a JSON list, a DOCCI JSON Lines file or an Urban1k folder (see the module docstring)."""
    path = os.path.abspath(os.path.expanduser(path))
    if image_root is not None:
        image_root = os.path.abspath(os.path.expanduser(image_root))
        if not os.path.isdir(image_root):
            raise FileNotFoundError(f"Image root {image_root} (--image-root) is not a folder")
    if os.path.isdir(path):
        if splits:
            raise ValueError("--split applies to DOCCI JSON Lines files only; remove it for an Urban1k folder")
        return _read_urban1k(path, image_root)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Input {path} not found; pass a JSON list, a DOCCI .jsonlines file or an Urban1k folder")
    if path.lower().endswith(JSON_LINES_EXTENSIONS):
        return _read_json_lines(path, image_root, splits)
    if splits:
        raise ValueError(f"--split applies to DOCCI JSON Lines files only, but {path} is a JSON list")
    return _read_json_list(path, image_root)


def _read_json_list(path: str, image_root: Optional[str]) -> InputList:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"Input {path} is not valid UTF-8 JSON ({error}); pass a JSON list of records, or name a JSON Lines "
            "file .jsonl or .jsonlines"
        ) from error
    if not isinstance(data, list):
        raise ValueError(f"Input {path} must contain a JSON list of records, got a {type(data).__name__}")

    reader = _Reader(path, "json list", image_root)
    for index, record in enumerate(data):
        where = f"record {index} of {path}"
        if not isinstance(record, dict):
            reader.skip("not an object", f"{where} is a {type(record).__name__}, expected a JSON object")
            continue
        filename = record.get("original_filename", record.get("filename", record.get("image")))
        captions = record.get("original_caption", record.get("caption"))
        reader.add(filename, captions, where)
    return reader.finish()


def _read_json_lines(path: str, image_root: Optional[str], splits: Optional[Sequence[str]]) -> InputList:
    if image_root is None:
        candidate = os.path.join(os.path.dirname(path), "images")
        if os.path.isdir(candidate):
            image_root = candidate
            logger.info("Image root: %s (the images folder next to %s)", image_root, path)
    wanted = set(splits) if splits else None
    reader = _Reader(path, "docci jsonlines", image_root)
    split_counts: Dict[str, int] = Counter()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"line {number} of {path}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                reader.skip("invalid JSON line", f"{where} is not valid JSON ({error})")
                continue
            if not isinstance(record, dict):
                reader.skip("not an object", f"{where} is a {type(record).__name__}, expected a JSON object")
                continue
            split = record.get("split")
            split_counts[str(split)] += 1
            if wanted is not None and split not in wanted:
                continue
            filename = record.get("image_file", record.get("filename", record.get("image")))
            reader.add(filename, record.get("description", record.get("caption")), where)
    if wanted is not None:
        unknown = wanted - set(split_counts)
        if unknown:
            raise ValueError(f"--split {', '.join(sorted(unknown))} not found in {path}; its splits are {dict(split_counts)}")
    return reader.finish()


def _read_urban1k(folder: str, image_root: Optional[str]) -> InputList:
    image_dir = os.path.join(folder, "image")
    caption_dir = os.path.join(folder, "caption")
    if not os.path.isdir(image_dir) or not os.path.isdir(caption_dir):
        raise FileNotFoundError(
            f"Input folder {folder} is not an Urban1k folder: it needs image/ and caption/ subfolders "
            "(image/N.jpg with caption/N.txt)"
        )
    reader = _Reader(folder, "urban1k folder", image_root or folder)
    names = [n for n in os.listdir(image_dir) if n.lower().endswith(IMAGE_EXTENSIONS)]
    for name in sorted(names, key=_natural_key):
        stem = os.path.splitext(name)[0]
        caption_path = os.path.join(caption_dir, stem + ".txt")
        where = f"image/{name} of {folder}"
        if not os.path.isfile(caption_path):
            reader.skip("no caption", f"{where} has no caption file caption/{stem}.txt")
            continue
        with open(caption_path, encoding="utf-8", errors="replace") as f:
            caption = f.read().strip()
        reader.add(f"image/{name}", caption, where)
    return reader.finish()


def _natural_key(name: str):
    """Sort ``2.jpg`` before ``10.jpg``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
