"""Items and relevance of the global+local joint test.

The gallery contains every test image with its caption (a global item) and, for
each kept local pair, the region with its sentence (a local item). Image item
``i`` and text item ``i`` describe the same thing. Relevance follows the
record that items belong to, never their file names:

- a global image is relevant to its own caption and to the sentences of its local items;
- a local region is relevant to its own sentence and to its parent's caption;
- text queries likewise, so the relation is symmetric. Sibling regions are not relevant to each other.

Two inputs are accepted:

- LISM output in GOAL's training-list format (``original_filename``,
  ``original_caption``, ``segment`` with ``bbox_coordinates``), optionally
  merged into a test list: regions are cut from the image by their boxes;
- a reference joint list: a flat list of ``{"filename", "caption"}`` whose
  local entries are crop files stored in a folder named after the parent
  image, ``<parent file>_results/<crop file>``.
"""

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from lavis_goal.datasets.annotations import LoadOptions, Record, parse_records, resolve_image_path

logger = logging.getLogger(__name__)

# Reference joint lists store each crop under "<parent image file>_results/".
CROP_FOLDER_SUFFIX = "_results"


@dataclass
class JointItem:
    """One gallery entry: an image (or a region of it) and its text.

    ``pair_index`` is -1 for a global item and the pair's position among its
    record's local items otherwise. ``box`` is the region in original pixels,
    or None when ``image_path`` is the whole image or a crop file.
    """

    image_path: str
    text: str
    record_id: int
    pair_index: int
    box: Optional[Tuple[float, float, float, float]] = None


def is_lism_format(raw: Sequence) -> bool:
    """Return True if ``raw`` looks like a training list with local pairs rather than a flat list."""
    return any(isinstance(item, dict) and ("segment" in item or "original_filename" in item) for item in raw)


def items_from_records(records: Sequence[Record]) -> List[JointItem]:
    """Global items for every record, then local items for every kept pair, cut by box."""
    items = [JointItem(r.image_path, r.captions[0], record_id, -1) for record_id, r in enumerate(records)]
    for record_id, record in enumerate(records):
        for pair_index, pair in enumerate(record.pairs):
            items.append(JointItem(record.image_path, pair.sentence, record_id, pair_index, box=tuple(pair.box)))
    return items


def merge_test_list(test_raw: Sequence[dict], lism_raw: Sequence[dict], source: str) -> List[dict]:
    """Attach the LISM pairs of each test image, matched by image base name, in the test list's order.

    Returns training-list records with the test list's file names and
    captions. Test images without LISM output keep only their global item.
    """
    pairs_by_name: Dict[str, list] = {}
    for index, item in enumerate(lism_raw):
        name = item.get("original_filename", item.get("filename")) if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"Record {index} of the LISM pairs for {source} names no image (original_filename)")
        pairs_by_name[os.path.basename(name)] = item.get("segment") or []

    merged, without_pairs = [], 0
    for index, item in enumerate(test_raw):
        name = item.get("filename", item.get("image")) if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"Record {index} of the test list for {source} names no image (filename)")
        segments = pairs_by_name.pop(os.path.basename(name), [])
        without_pairs += not segments
        merged.append({"original_filename": name, "original_caption": item.get("caption"), "segment": segments})
    if without_pairs:
        logger.warning("%s: %d of %d test images have no LISM pairs and enter the gallery as global items only", source, without_pairs, len(merged))
    if pairs_by_name:
        logger.warning("%s: %d images of the LISM pairs are not in the test list and were left out", source, len(pairs_by_name))
    return merged


def items_from_lism(raw: Sequence[dict], source: str, options: LoadOptions) -> List[JointItem]:
    records, _ = parse_records(raw, source, options)
    return items_from_records(records)


def items_from_reference_list(
    raw: Sequence[dict],
    source: str,
    image_root: Optional[str],
    crop_root: Optional[str],
    caption_processor: Optional[Callable[[str], str]] = None,
    check_files: bool = True,
    skip_invalid_records: bool = False,
) -> List[JointItem]:
    """Read a reference joint list: global entries, and crop entries linked to them by their folder name."""
    process = caption_processor or (lambda text: text)
    globals_, locals_ = [], []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not isinstance(entry.get("caption"), str):
            raise ValueError(f"Record {index} of {source} needs a 'filename' and a 'caption' string")
        folder = os.path.basename(os.path.dirname(entry["filename"]))
        (locals_ if folder.endswith(CROP_FOLDER_SUFFIX) else globals_).append((index, entry))

    items, record_of = [], {}
    for index, entry in globals_:
        name = os.path.basename(entry["filename"])
        if name in record_of:
            raise ValueError(f"Record {index} of {source} repeats the global image {name}; every test image may appear once")
        record_of[name] = len(items)
        items.append(JointItem(resolve_image_path(entry["filename"], image_root), process(entry["caption"]), len(items), -1))

    skipped: Counter = Counter()
    pair_count: Counter = Counter()
    for index, entry in locals_:
        folder = os.path.basename(os.path.dirname(entry["filename"]))
        parent = parent_image_name(folder)
        if parent not in record_of:
            message = f"Record {index} of {source} is a crop of {parent}, which is not a global entry of the list"
            if not skip_invalid_records:
                raise ValueError(f"{message}; add the parent image or set skip_invalid_records: true")
            skipped["no parent"] += 1
            continue
        path = entry["filename"]
        if crop_root:
            path = os.path.join(crop_root, folder, os.path.basename(path))
        record_id = record_of[parent]
        items.append(JointItem(path, process(entry["caption"]), record_id, pair_count[record_id]))
        pair_count[record_id] += 1

    if check_files:
        items = _drop_missing_files(items, source, skip_invalid_records, skipped)
    if skipped:
        logger.warning("%s: skipped %s", source, ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())))
    return items


def parent_image_name(folder: str) -> str:
    """Return the parent image's file name for a crop folder ``<parent file>_results`` (".jpg" when it has no extension)."""
    name = folder[: -len(CROP_FOLDER_SUFFIX)]
    return name if os.path.splitext(name)[1] else name + ".jpg"


def _drop_missing_files(items: List[JointItem], source: str, skip: bool, skipped: Counter) -> List[JointItem]:
    missing = [item for item in items if not os.path.isfile(item.image_path)]
    if not missing:
        return items
    first = missing[0]
    kind = "crop" if first.pair_index >= 0 else "image"
    option = "crops" if first.pair_index >= 0 else "images"
    if not skip:
        raise FileNotFoundError(
            f"{len(missing)} file(s) of {source} not found, e.g. the {kind} {first.image_path}; set "
            f"build_info.annotations.<split>.{option} to the folder that holds them, or set skip_invalid_records: true"
        )
    dropped_records = {item.record_id for item in missing if item.pair_index < 0}
    kept = [item for item in items if os.path.isfile(item.image_path) and item.record_id not in dropped_records]
    skipped["missing file"] += len(items) - len(kept)
    return _renumber(kept)


def _renumber(items: List[JointItem]) -> List[JointItem]:
    """Make record ids consecutive again after items were dropped."""
    new_ids: Dict[int, int] = {}
    for item in items:
        if item.pair_index < 0:
            new_ids[item.record_id] = len(new_ids)
    return [JointItem(i.image_path, i.text, new_ids[i.record_id], i.pair_index, i.box) for i in items]


def relevance(items: Sequence[JointItem]) -> List[List[int]]:
    """Return, for each item, the indices of the items of the other modality relevant to it.

    The relation is symmetric, so the same lists serve image-to-text and
    text-to-image queries. Every item is relevant to itself.
    """
    members: Dict[int, List[int]] = {}
    parent: Dict[int, int] = {}
    for index, item in enumerate(items):
        members.setdefault(item.record_id, []).append(index)
        if item.pair_index < 0:
            if item.record_id in parent:
                raise ValueError(f"Record {item.record_id} has two global items; each record has one")
            parent[item.record_id] = index

    relevant = []
    for index, item in enumerate(items):
        if item.record_id not in parent:
            raise ValueError(f"Item {index} ({item.image_path}) belongs to record {item.record_id}, which has no global item")
        if item.pair_index < 0:
            relevant.append(list(members[item.record_id]))
        else:
            relevant.append([index, parent[item.record_id]])
    return relevant
