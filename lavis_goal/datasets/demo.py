"""The demo set: photos that scikit-image and matplotlib ship, read from the installed packages.

The photos are not copied into this repository; ``demo_annotations.json``
names each one by package and path and adds a long caption written for this
project with hand-made local (box, sentence) pairs.
"""

import importlib
import json
import os
from pathlib import Path
from typing import List, Tuple

ANNOTATIONS = Path(__file__).resolve().parent / "demo" / "demo_annotations.json"
PACKAGES = {"skimage": "skimage", "matplotlib": "matplotlib"}


def package_file(package: str, relative: str) -> str:
    """Return the absolute path of ``relative`` inside an installed package."""
    if package not in PACKAGES:
        raise ValueError(f"Demo photos come from {sorted(PACKAGES)}, got package {package!r}")
    try:
        module = importlib.import_module(PACKAGES[package])
    except ImportError as error:
        raise ImportError(f"The demo needs the {package} package for its photos: pip install {package}") from error
    path = os.path.join(os.path.dirname(module.__file__), relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Demo photo {relative} is missing from the installed {package} package ({path})")
    return path


def load_demo_annotations() -> dict:
    with open(ANNOTATIONS, encoding="utf-8") as f:
        return json.load(f)


def demo_records(split: str) -> Tuple[List[dict], str]:
    """Return the demo's ``split`` as a training list (GOAL's reference format) and its source name."""
    records = []
    for item in load_demo_annotations()["images"]:
        if item["split"] != split:
            continue
        records.append(
            {
                "original_filename": package_file(item["package"], item["path"]),
                "original_caption": item["caption"],
                "segment": [
                    {
                        "caption": pair["sentence"],
                        "similarity_score": pair.get("score", 1.0),
                        "bbox_coordinates": dict(zip(("x1", "y1", "x2", "y2"), pair["box"])),
                    }
                    for pair in item["local_pairs"]
                ],
            }
        )
    if not records:
        raise ValueError(f"The demo has no {split!r} split; use 'train' or 'test'")
    return records, f"{ANNOTATIONS} [{split}]"
