"""Read the retrieval benchmarks from their official release layouts.

Each reader takes the folder the user downloaded (the root) and one part of
the benchmark, and returns evaluation records ``{"filename": absolute image
path, "caption": text or [texts]}`` in a stable order, ready for
``parse_records``. A missing file or folder raises ``ReleaseLayoutError``
(a ``FileNotFoundError``) whose message shows the layout the reader expects.

| name | parts | caption |
|---|---|---|
| ``docci`` | train, test (5,000), qual_dev, qual_test, test_5100 (test + qual_test) | ``description`` |
| ``dci`` | test (the 2,000-image list), train (the other images), all | ``extra_caption`` |
| ``urban1k`` | test (1,000) | ``caption/N.txt`` |
| ``sharegpt4v_1k`` | test (the first 1,000 ShareCaptioner records) | the gpt turn |
| ``coco_5k`` | test (Karpathy, 5,000 images) | 5 per image |
| ``flickr30k_1k`` | test (1,000 images) | 5 per image |
"""

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SHAREGPT4V_FILE = "share-captioner_coco_lcs_sam_1246k_1107.json"
# Bytes read at a time when streaming the first records of a large JSON list.
STREAM_CHUNK = 1 << 20


class ReleaseLayoutError(FileNotFoundError):
    """A file or folder of a benchmark release is missing; the message shows the expected layout."""


@dataclass(frozen=True)
class Release:
    """A benchmark release: its layout under the root, its parts and its reader.

    ``read(root, part, **options)`` returns the part's evaluation records;
    ``options`` names the extra ``build_info`` keys the reader accepts.
    """

    name: str
    layout: str
    parts: Tuple[str, ...]
    read: Callable[..., List[dict]]
    options: Tuple[str, ...] = ()

    def missing(self, path, description: str) -> ReleaseLayoutError:
        return ReleaseLayoutError(
            f"{description} {path} not found. The {self.name} root (build_info.root) must have this layout:\n{self.layout}"
        )


def read_release(name: str, root, part: str, **options) -> List[dict]:
    """Return the evaluation records of ``part`` of release ``name`` under ``root``."""
    if name not in RELEASES:
        raise ValueError(f"Unknown benchmark release {name!r}; known: {', '.join(sorted(RELEASES))}")
    release = RELEASES[name]
    if part not in release.parts:
        raise ValueError(f"{name} has no part {part!r}; valid parts: {', '.join(release.parts)}")
    unknown = sorted(set(options) - set(release.options))
    if unknown:
        raise ValueError(f"{name} takes no option(s) {', '.join(unknown)}; valid options: {', '.join(release.options) or 'none'}")
    root = Path(os.path.expanduser(str(root))).resolve()
    if not root.is_dir():
        raise release.missing(root, "Root folder")
    records = release.read(release, root, part, **options)
    logger.info("%s %s: %d records from %s", name, part, len(records), root)
    return records


def missing_images(records: Sequence[dict]) -> List[int]:
    """Return the indices of ``records`` whose image file does not exist."""
    return [i for i, record in enumerate(records) if not os.path.isfile(record["filename"])]


# ----- DOCCI -------------------------------------------------------------------

DOCCI_LAYOUT = """\
  docci_descriptions.jsonlines   one JSON object per line: example_id, split, image_file, description
  images/                        the images, named by image_file"""

DOCCI_PARTS = {
    "train": ("train",),
    "test": ("test",),
    "qual_dev": ("qual_dev",),
    "qual_test": ("qual_test",),
    "test_5100": ("test", "qual_test"),
}


def _read_docci(release: Release, root: Path, part: str) -> List[dict]:
    descriptions = root / "docci_descriptions.jsonlines"
    if not descriptions.is_file():
        raise release.missing(descriptions, "DOCCI descriptions file")
    images = root / "images"
    if not images.is_dir():
        raise release.missing(images, "DOCCI image folder")

    splits = DOCCI_PARTS[part]
    by_split: Dict[str, List[dict]] = {split: [] for split in splits}
    for line_number, entry in _json_lines(descriptions):
        for key in ("split", "image_file", "description"):
            if key not in entry:
                raise ValueError(f"{descriptions} line {line_number} has no {key!r} field; every line needs split, image_file and description")
        if entry["split"] in by_split:
            by_split[entry["split"]].append({"filename": str(images / entry["image_file"]), "caption": entry["description"]})

    records = [record for split in splits for record in by_split[split]]
    if not records:
        raise ValueError(f"{descriptions} has no line with split {' or '.join(splits)}; check that the file is DOCCI's")
    return records


def _json_lines(path: Path) -> Iterator[Tuple[int, dict]]:
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {line_number} is not valid JSON ({error}); the file must hold one JSON object per line") from error
            if not isinstance(entry, dict):
                raise ValueError(f"{path} line {line_number} is a {type(entry).__name__}, expected a JSON object")
            yield line_number, entry


# ----- DCI ---------------------------------------------------------------------

DCI_LAYOUT = """\
  densely_captioned_images/annotations/<name>.json   one file per image: image, short_caption, extra_caption, ...
  densely_captioned_images/photos/                   the images, named by each annotation's image field
  (the root may also be the densely_captioned_images folder itself)
The test and train parts also need build_info.test_list: the 2,000-image test list of GOAL's
release (DCI_test.json, records with filename) or a text file with one image file name per line."""


class DciAnnotations:
    """The per-image annotation files of a DCI release, looked up by image file name.

    NOTE: DCI's loader (facebookresearch/DCI, ``dense_image.py``) reads each
    file of ``annotations/`` and the photo named by its ``image`` field. It
    does not fix the annotation file names, so the lookup first tries
    ``annotations/<image stem>.json`` (an assumed naming) and falls back to
    reading every file once.
    """

    def __init__(self, folder: Path, fields: Sequence[str]):
        self.folder = folder
        self.fields = tuple(fields)
        self._index: Optional[Dict[str, dict]] = None

    def _load(self, path: Path) -> dict:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"DCI annotation {path} is not valid JSON ({error}); replace it from the release") from error
        if not isinstance(data, dict) or not isinstance(data.get("image"), str):
            raise ValueError(f"DCI annotation {path} has no 'image' field naming its photo; is {self.folder} DCI's annotations folder?")
        return {"image": data["image"], **{field: data.get(field) for field in self.fields}, "path": str(path)}

    def index(self) -> Dict[str, dict]:
        """Map every photo's base name to its annotation (reads every file once)."""
        if self._index is None:
            files = sorted(p for p in self.folder.iterdir() if p.suffix == ".json")
            logger.info("Reading %d DCI annotation files in %s", len(files), self.folder)
            self._index = {}
            for path in files:
                entry = self._load(path)
                self._index[os.path.basename(entry["image"])] = entry
        return self._index

    def get(self, image_name: str) -> Optional[dict]:
        if self._index is None:
            candidate = self.folder / (Path(image_name).stem + ".json")
            if candidate.is_file():
                entry = self._load(candidate)
                if os.path.basename(entry["image"]) == image_name:
                    return entry
        return self.index().get(image_name)


def _dci_base(release: Release, root: Path) -> Path:
    for base in (root / "densely_captioned_images", root):
        if (base / "annotations").is_dir():
            if not (base / "photos").is_dir():
                raise release.missing(base / "photos", "DCI photo folder")
            return base
    raise release.missing(root / "densely_captioned_images" / "annotations", "DCI annotation folder")


def _read_dci(release: Release, root: Path, part: str, test_list=None, caption_fields=("extra_caption",)) -> List[dict]:
    base = _dci_base(release, root)
    annotations = DciAnnotations(base / "annotations", list(caption_fields))

    if part == "all":
        names = sorted(annotations.index())
    else:
        if test_list is None:
            raise ValueError(f"The DCI {part} part needs build_info.test_list: the 2,000-image test list (GOAL's DCI_test.json) or a text file of image names")
        test_names = read_image_list(test_list)
        names = test_names if part == "test" else sorted(set(annotations.index()) - set(test_names))

    records, missing = [], []
    for name in names:
        entry = annotations.get(name)
        if entry is None:
            missing.append(name)
            continue
        caption = " ".join(str(entry.get(field) or "").strip() for field in caption_fields).strip()
        records.append({"filename": str(base / "photos" / entry["image"]), "caption": caption})
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of the DCI test list have no annotation in {base / 'annotations'}, "
            f"e.g. {', '.join(missing[:3])}; check build_info.test_list against the release"
        )
    return records


def read_image_list(path) -> List[str]:
    """Read image base names from a JSON list (records or strings) or a text file, one name per line."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"Image list {path} (build_info.test_list) not found")
    if path.suffix == ".json":
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, list):
            raise ValueError(f"Image list {path} must hold a JSON list, got {type(data).__name__}")
        names = [_image_name(item, index, path) for index, item in enumerate(data)]
    else:
        names = [os.path.basename(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"Image list {path} names {', '.join(duplicates[:3])} more than once")
    if not names:
        raise ValueError(f"Image list {path} is empty")
    return names


def _image_name(item, index: int, path: Path) -> str:
    name = item
    if isinstance(item, dict):
        name = item.get("filename") or item.get("image") or item.get("original_filename")
    if not isinstance(name, str) or not name:
        raise ValueError(f"Record {index} of image list {path} names no image (a string, or a record with filename or image)")
    return os.path.basename(name)


# ----- Urban1k -----------------------------------------------------------------

URBAN1K_LAYOUT = """\
  image/<N>.jpg     the images
  caption/<N>.txt   the long caption of image <N>
  (the root may also be the folder that contains Urban1k/)"""


def _read_urban1k(release: Release, root: Path, part: str, strict: bool = True) -> List[dict]:
    base = root / "Urban1k" if not (root / "image").is_dir() and (root / "Urban1k").is_dir() else root
    image_dir, caption_dir = base / "image", base / "caption"
    if not image_dir.is_dir():
        raise release.missing(image_dir, "Urban1k image folder")
    if not caption_dir.is_dir():
        raise release.missing(caption_dir, "Urban1k caption folder")

    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    captions = {p.stem: p for p in caption_dir.iterdir() if p.suffix == ".txt"}
    unpaired = sorted(set(images) ^ set(captions), key=_numeric_first)
    if unpaired:
        detail = (
            f"{len(unpaired)} Urban1k image(s) or caption(s) have no partner, e.g. "
            + ", ".join(f"{stem} ({'no caption' if stem in images else 'no image'})" for stem in unpaired[:3])
        )
        if strict:
            raise FileNotFoundError(f"{detail}; restore the files or set skip_invalid_records: true")
        logger.warning("%s; skipped", detail)

    records = []
    for stem in sorted(set(images) & set(captions), key=_numeric_first):
        try:
            caption = captions[stem].read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as error:
            raise ValueError(f"Urban1k caption {captions[stem]} is not UTF-8 text ({error})") from error
        records.append({"filename": str(images[stem]), "caption": caption})
    if not records:
        raise ValueError(f"No Urban1k image has a caption under {base}")
    return records


def _numeric_first(stem: str):
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


# ----- ShareGPT4V --------------------------------------------------------------

SHAREGPT4V_LAYOUT = f"""\
  {SHAREGPT4V_FILE}   the ShareCaptioner records (image, conversations),
      also found in sharegpt4v/; build_info.annotation names another file
  <the image of each record, at its image path under the root: coco/train2017/..., sam/images/..., llava/...>"""


def _read_sharegpt4v(release: Release, root: Path, part: str, annotation=None, num_records: int = 1000) -> List[dict]:
    if annotation is not None:
        candidates = [Path(os.path.expanduser(str(annotation)))]
        if not candidates[0].is_absolute():
            candidates = [root / candidates[0]]
    else:
        candidates = [root / SHAREGPT4V_FILE, root / "sharegpt4v" / SHAREGPT4V_FILE]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise release.missing(candidates[0], "ShareCaptioner file")

    records = []
    for index, item in enumerate(first_json_records(path, int(num_records))):
        where = f"record {index} of {path}"
        if not isinstance(item, dict) or not isinstance(item.get("image"), str):
            raise ValueError(f"{where} has no 'image' path; is this the ShareCaptioner file?")
        turns = item.get("conversations") or []
        caption = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
        if not isinstance(caption, str):
            raise ValueError(f"{where} has no gpt turn in 'conversations' to take the caption from")
        records.append({"filename": str(root / item["image"]), "caption": caption})
    if len(records) < int(num_records):
        logger.warning("%s contains only %d records, fewer than the %d requested", path, len(records), int(num_records))
    return records


def first_json_records(path: Path, count: int) -> List:
    """Return the first ``count`` elements of the JSON list in ``path`` without parsing the rest.

    The ShareCaptioner file is 1.5 GB; decoding it whole takes several GB of
    memory, so the list is decoded element by element from a stream.
    """
    decoder = json.JSONDecoder()
    items: List = []
    with open(path, encoding="utf-8") as handle:
        buffer, position, at_end = "", 0, False

        def fill() -> bool:
            nonlocal buffer, position
            chunk = handle.read(STREAM_CHUNK)
            buffer = buffer[position:] + chunk
            position = 0
            return bool(chunk)

        def skip(characters: str) -> str:
            # Skip whitespace and ``characters``; return the next character ("" at the end of the file).
            nonlocal position, at_end
            while True:
                while position < len(buffer) and (buffer[position].isspace() or buffer[position] in characters):
                    position += 1
                if position < len(buffer):
                    return buffer[position]
                if at_end or not fill():
                    at_end = True
                    return ""

        if skip("") != "[":
            raise ValueError(f"{path} does not start with a JSON list")
        position += 1
        while len(items) < count:
            if skip(",") in ("]", ""):
                break
            while True:
                try:
                    item, end = decoder.raw_decode(buffer, position)
                    break
                except json.JSONDecodeError as error:
                    if at_end or not fill():
                        raise ValueError(f"{path} is not a valid JSON list near element {len(items)} ({error})") from error
            items.append(item)
            position = end
    return items


# ----- COCO and Flickr30k (LAVIS's annotation files) ------------------------------

COCO_LAYOUT = """\
  annotations/coco_karpathy_test.json   LAVIS's Karpathy test list: [{"image": "val2014/<file>.jpg", "caption": [5 captions]}]
  images/                               the folder the image paths are relative to"""

FLICKR30K_LAYOUT = """\
  annotations/test.json   LAVIS's Flickr30k test list (flickr30k_test.json is also accepted):
                          [{"image": "flickr30k-images/<file>.jpg", "caption": [5 captions]}]
  images/                 the folder the image paths are relative to"""


def _read_lavis_retrieval(release: Release, root: Path, part: str, file_names: Sequence[str]) -> List[dict]:
    candidates = [root / "annotations" / name for name in file_names]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise release.missing(candidates[0], f"{release.name} annotation file")
    images = root / "images"
    if not images.is_dir():
        raise release.missing(images, f"{release.name} image folder")
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of {{'image', 'caption'}} records, got {type(data).__name__}")

    records = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("image"), str):
            raise ValueError(f"Record {index} of {path} has no 'image' path; the file must be in LAVIS's retrieval format")
        records.append({"filename": str(images / item["image"]), "caption": item.get("caption")})
    return records


def _read_coco(release: Release, root: Path, part: str) -> List[dict]:
    return _read_lavis_retrieval(release, root, part, ["coco_karpathy_test.json"])


def _read_flickr30k(release: Release, root: Path, part: str) -> List[dict]:
    return _read_lavis_retrieval(release, root, part, ["test.json", "flickr30k_test.json"])


RELEASES: Dict[str, Release] = {
    release.name: release
    for release in (
        Release("docci", DOCCI_LAYOUT, tuple(DOCCI_PARTS), _read_docci),
        Release("dci", DCI_LAYOUT, ("test", "train", "all"), _read_dci, ("test_list", "caption_fields")),
        Release("urban1k", URBAN1K_LAYOUT, ("test",), _read_urban1k, ("strict",)),
        Release("sharegpt4v_1k", SHAREGPT4V_LAYOUT, ("test",), _read_sharegpt4v, ("annotation", "num_records")),
        Release("coco_5k", COCO_LAYOUT, ("test",), _read_coco),
        Release("flickr30k_1k", FLICKR30K_LAYOUT, ("test",), _read_flickr30k),
    )
}
