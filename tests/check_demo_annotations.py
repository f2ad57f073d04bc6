"""Validate lavis_goal/datasets/demo/demo_annotations.json and draw its boxes.

Run it with the Python that has scikit-image and matplotlib installed:

    python tests/check_demo_annotations.py [--annotations PATH] [--out-dir DIR]

The file name does not start with ``test_``, so pytest does not collect it.
It prints every problem it finds and exits with status 1 if there is any.
It also writes each image with its local boxes drawn on it to ``--out-dir``
so that a person can check that each box sits on the object its sentence
describes.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ANNOTATIONS = REPO_ROOT / "lavis_goal" / "datasets" / "demo" / "demo_annotations.json"
DEFAULT_OUT_DIR = Path("/tmp/demo_view/boxes")

PACKAGES = ("skimage", "matplotlib")
SPLITS = ("train", "test")
EXPECTED_SPLIT_COUNTS = {"train": 14, "test": 6}
MIN_GRAYSCALE = 5
MIN_GRAYSCALE_TEST = 2
MIN_SENTENCES = 6
MIN_LOCAL_PAIRS = 2
MAX_BOX_AREA_FRACTION = 0.8
# Expected caption length in words for this demo file. Captions outside this range only get a warning.
TYPICAL_WORDS = (90, 200)
SENTENCE_SEPARATOR = ". "
GRAYSCALE_MODES = ("L", "1", "I;16", "I", "LA")
BOX_COLORS = [(255, 0, 0), (0, 200, 0), (0, 120, 255), (255, 160, 0), (200, 0, 200), (0, 200, 200)]


def package_dir(package):
    """Return the installed folder of a top-level package without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package!r} is not installed in {sys.executable}. Install it and rerun.")
    return Path(list(spec.submodule_search_locations)[0])


def split_sentences(caption):
    """Split a caption after every '. ', keeping the period on each sentence."""
    pieces = caption.split(SENTENCE_SEPARATOR)
    return [piece + "." for piece in pieces[:-1]] + [pieces[-1]]


def sentence_starts(caption):
    """Return the character offsets at which the sentences of a caption start."""
    starts = [0]
    index = caption.find(SENTENCE_SEPARATOR)
    while index != -1:
        starts.append(index + len(SENTENCE_SEPARATOR))
        index = caption.find(SENTENCE_SEPARATOR, index + 1)
    return starts


def is_grayscale(image):
    """Return True for single-channel images and for RGB(A) images whose color channels are equal."""
    if image.mode in GRAYSCALE_MODES:
        return True
    if image.mode in ("RGB", "RGBA"):
        pixels = np.asarray(image)
        return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())
    return False


def check_caption(image_id, caption, errors, warnings):
    if not isinstance(caption, str) or not caption:
        errors.append(f"{image_id}: caption is missing or not a string")
        return
    if caption.startswith("This image"):
        errors.append(f"{image_id}: caption starts with 'This image'; start with the subject instead")
    if caption != caption.strip() or "  " in caption:
        errors.append(f"{image_id}: caption has leading, trailing or double spaces")

    sentences = split_sentences(caption)
    if len(sentences) < MIN_SENTENCES:
        errors.append(f"{image_id}: caption has {len(sentences)} sentences, expected at least {MIN_SENTENCES}")
    for number, sentence in enumerate(sentences):
        if not sentence.endswith("."):
            errors.append(f"{image_id}: sentence {number} does not end with '.': {sentence!r}")
        if not sentence[:1].isupper():
            errors.append(f"{image_id}: sentence {number} does not start with a capital letter: {sentence!r}")

    words = len(caption.split())
    if not TYPICAL_WORDS[0] <= words <= TYPICAL_WORDS[1]:
        warnings.append(f"{image_id}: caption has {words} words, outside the typical {TYPICAL_WORDS[0]}-{TYPICAL_WORDS[1]}")


def check_local_pair(image_id, number, pair, caption, width, height, errors):
    label = f"{image_id}: local_pairs[{number}]"
    sentence = pair.get("sentence")
    if not isinstance(sentence, str) or not sentence:
        errors.append(f"{label}: sentence is missing or not a string")
    elif not sentence.endswith("."):
        errors.append(f"{label}: sentence does not end with '.': {sentence!r}")
    elif caption.find(sentence) == -1:
        errors.append(f"{label}: sentence is not a substring of the caption: {sentence!r}")
    elif caption.find(sentence) not in sentence_starts(caption):
        errors.append(f"{label}: sentence does not start at a sentence start of the caption: {sentence!r}")
    elif sentence not in split_sentences(caption):
        # Reached when the text starts at a sentence start but does not end where that sentence ends.
        errors.append(f"{label}: sentence is not exactly one whole sentence of the caption: {sentence!r}")

    box = pair.get("box")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        errors.append(f"{label}: box must be a list of 4 numbers [x1, y1, x2, y2], got {box!r}")
    else:
        x1, y1, x2, y2 = box
        if not (x2 > x1 and y2 > y1):
            errors.append(f"{label}: box {box} needs x2 > x1 and y2 > y1")
        if not (0 <= x1 and 0 <= y1 and x2 <= width and y2 <= height):
            errors.append(f"{label}: box {box} is outside the image of size {width}x{height}")
        area_fraction = (x2 - x1) * (y2 - y1) / (width * height)
        if area_fraction > MAX_BOX_AREA_FRACTION:
            errors.append(
                f"{label}: box {box} covers {area_fraction:.0%} of the image, "
                f"more than {MAX_BOX_AREA_FRACTION:.0%}; box the object, not the whole image"
            )

    score = pair.get("score")
    if not isinstance(score, (int, float)) or not 0 < score <= 1:
        errors.append(f"{label}: score must be a number in (0, 1], got {score!r}")


def draw_boxes(image, entry, out_dir):
    """Save a copy of the image with every local box and its pair index drawn on it."""
    if image.mode in ("RGBA", "LA"):
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        canvas.alpha_composite(image.convert("RGBA"))
        canvas = canvas.convert("RGB")
    else:
        canvas = image.convert("RGB")
    line_width = max(2, round(max(image.size) / 300))
    draw = ImageDraw.Draw(canvas)
    for number, pair in enumerate(entry.get("local_pairs", [])):
        box = pair.get("box")
        # Invalid boxes are already reported by check_local_pair, and PIL cannot draw them.
        if not (isinstance(box, list) and len(box) == 4 and box[2] > box[0] and box[3] > box[1]):
            continue
        color = BOX_COLORS[number % len(BOX_COLORS)]
        draw.rectangle(box, outline=color, width=line_width)
        draw.text((box[0] + line_width + 1, box[1] + line_width + 1), str(number), fill=color)
    out_path = out_dir / f"{entry['id']}.png"
    canvas.save(out_path)
    return out_path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=Path, default=DEFAULT_ANNOTATIONS, help="annotation JSON file to check")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="folder for the images with boxes drawn")
    args = parser.parse_args()

    with open(args.annotations, encoding="utf-8") as f:
        document = json.load(f)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    package_dirs = {package: package_dir(package) for package in PACKAGES}

    errors = []
    warnings = []
    if not isinstance(document.get("description"), str) or not document["description"]:
        errors.append("top level: 'description' is missing or empty")
    entries = document.get("images")
    if not isinstance(entries, list) or not entries:
        raise SystemExit(f"{args.annotations}: 'images' is missing or empty. Expected a non-empty list of image entries.")

    split_counts = {split: 0 for split in SPLITS}
    grayscale_counts = {split: 0 for split in SPLITS}
    seen_ids = set()
    for entry in entries:
        image_id = entry.get("id", "<no id>")
        if image_id in seen_ids:
            errors.append(f"{image_id}: duplicate id")
        seen_ids.add(image_id)

        package = entry.get("package")
        if package not in PACKAGES:
            errors.append(f"{image_id}: package must be one of {PACKAGES}, got {package!r}")
            continue
        split = entry.get("split")
        if split not in SPLITS:
            errors.append(f"{image_id}: split must be one of {SPLITS}, got {split!r}")
        else:
            split_counts[split] += 1

        image_path = package_dirs[package] / entry.get("path", "")
        if not image_path.is_file():
            errors.append(f"{image_id}: image file not found: {image_path}")
            continue
        with Image.open(image_path) as image:
            image.load()
            width, height = image.size
            if (entry.get("width"), entry.get("height")) != (width, height):
                errors.append(
                    f"{image_id}: width/height are {entry.get('width')}x{entry.get('height')}, "
                    f"but the file is {width}x{height}"
                )
            grayscale = is_grayscale(image)
            if grayscale and split in grayscale_counts:
                grayscale_counts[split] += 1

            caption = entry.get("caption", "")
            check_caption(image_id, caption, errors, warnings)
            pairs = entry.get("local_pairs", [])
            if len(pairs) < MIN_LOCAL_PAIRS:
                errors.append(f"{image_id}: has {len(pairs)} local pairs, expected at least {MIN_LOCAL_PAIRS}")
            for number, pair in enumerate(pairs):
                check_local_pair(image_id, number, pair, caption if isinstance(caption, str) else "", width, height, errors)
            out_path = draw_boxes(image, entry, args.out_dir)

        print(
            f"{image_id:28s} {split:5s} {width}x{height} mode={image.mode:4s} "
            f"{'grayscale' if grayscale else 'color':9s} sentences={len(split_sentences(caption)):2d} "
            f"words={len(caption.split()):3d} pairs={len(pairs)} -> {out_path}"
        )

    for split, expected in EXPECTED_SPLIT_COUNTS.items():
        if split_counts[split] != expected:
            errors.append(f"split {split!r} has {split_counts[split]} images, expected {expected}")
    total_grayscale = sum(grayscale_counts.values())
    if total_grayscale < MIN_GRAYSCALE:
        errors.append(f"{total_grayscale} grayscale images, expected at least {MIN_GRAYSCALE}")
    if grayscale_counts["test"] < MIN_GRAYSCALE_TEST:
        errors.append(f"{grayscale_counts['test']} grayscale images in test, expected at least {MIN_GRAYSCALE_TEST}")

    print(f"images: {len(entries)}, splits: {split_counts}, grayscale per split: {grayscale_counts}")
    for warning in warnings:
        print(f"WARNING: {warning}")
    for error in errors:
        print(f"ERROR: {error}")
    if errors:
        print(f"FAILED: {len(errors)} problems in {args.annotations}")
        return 1
    print(f"OK: {args.annotations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
