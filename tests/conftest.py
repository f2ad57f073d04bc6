"""Shared fixtures: small real images and GOAL annotation lists under pytest's tmp_path."""

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List

import pytest
from PIL import Image

IMAGE_SIZE = (64, 48)  # (width, height) of the images the fixtures write

# Three images with long captions. Each training record has one local pair
# whose sentence is copied from its caption and whose box lies inside the image.
_SAMPLES = [
    {
        "filename": "red.jpg",
        "color": (200, 30, 30),
        "caption": "A red square fills the frame. A small blue circle sits in the top right corner. The light is soft.",
        "sentence": "A small blue circle sits in the top right corner.",
        "box": (40, 4, 60, 20),
    },
    {
        "filename": "green.png",
        "color": (30, 180, 60),
        "caption": "A green field under a grey sky. A white fence runs along the bottom edge.",
        "sentence": "A white fence runs along the bottom edge.",
        "box": (0, 30, 64, 46),
    },
    {
        "filename": "blue.jpg",
        "color": (20, 40, 200),
        "caption": "Deep blue water with no waves. A yellow buoy floats near the left side of the picture.",
        "sentence": "A yellow buoy floats near the left side of the picture.",
        "box": (2, 10, 20, 30),
    },
]


@pytest.fixture
def write_image(tmp_path) -> Callable[..., Path]:
    """Return a function that writes a small real image under ``tmp_path/images``.

    ``write_image(name, size=(64, 48), mode="RGB", color=...)`` picks the file
    format from the name's extension and returns the path.
    """
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)

    def write(name: str, size=IMAGE_SIZE, mode: str = "RGB", color=(120, 80, 40)) -> Path:
        image = Image.new("RGB", size, color)
        # A diagonal line, so crops and resizes see more than one colour.
        for i in range(min(size)):
            image.putpixel((i, i), (255, 255, 255))
        if mode == "P":
            image = image.quantize(colors=16)
        elif mode.startswith("I;16"):
            # Pillow has no direct RGB to 16-bit conversion; go through 8-bit gray.
            image = image.convert("L").convert(mode)
        elif mode != "RGB":
            image = image.convert(mode)
        path = image_dir / name
        image.save(path)
        return path

    return write


@pytest.fixture
def write_json(tmp_path) -> Callable[[str, object], Path]:
    """Return a function that writes ``data`` as JSON to ``tmp_path/name`` and returns the path."""

    def write(name: str, data) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")
        return path

    return write


@dataclass
class GoalLists:
    """Valid GOAL annotation lists for three images written to ``image_dir``.

    ``train_records()`` and ``eval_records()`` return fresh copies, so a test
    can break one record and write the list with ``write_json``.
    """

    image_dir: Path
    train_path: Path
    eval_path: Path
    _train: List[dict]
    _eval: List[dict]

    def train_records(self) -> List[dict]:
        return copy.deepcopy(self._train)

    def eval_records(self) -> List[dict]:
        return copy.deepcopy(self._eval)


@pytest.fixture
def goal_lists(write_image, write_json) -> GoalLists:
    """Write three images, a training list (``train.json``) and an evaluation list (``test.json``).

    The training list uses GOAL's reference format: ``original_filename``,
    ``original_caption`` and ``segment`` entries with ``bbox_coordinates`` in
    original pixels, where ``width`` and ``height`` are the crop's size. The
    evaluation list uses ``filename`` and ``caption``. File names are relative
    to ``image_dir``.
    """
    train, evaluation = [], []
    for sample in _SAMPLES:
        path = write_image(sample["filename"], color=sample["color"])
        x1, y1, x2, y2 = sample["box"]
        train.append({
            "original_filename": sample["filename"],
            "original_caption": sample["caption"],
            "segment": [{
                "caption": sample["sentence"],
                "similarity_score": 0.31,
                "filename": f"crop_{sample['filename']}",
                "bbox_coordinates": {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "width": x2 - x1, "height": y2 - y1},
            }],
        })
        evaluation.append({"filename": sample["filename"], "caption": sample["caption"]})
    return GoalLists(
        image_dir=path.parent,
        train_path=write_json("train.json", train),
        eval_path=write_json("test.json", evaluation),
        _train=train,
        _eval=evaluation,
    )


@pytest.fixture
def goal_json_config(goal_lists):
    """Return a function that builds a ``goal_json`` dataset config merged over the plugin defaults.

    ``goal_json_config(train=path, test=path, **overrides)`` takes the
    annotation file of each split (pass ``None`` to leave a split out) and
    ``overrides`` merged into the dataset section. The image root is
    ``goal_lists.image_dir`` and the tokenizer is the tiny test model's.
    """
    from omegaconf import OmegaConf

    from lavis_goal.paths import plugin_config

    defaults = OmegaConf.load(plugin_config("datasets/goal_json/defaults.yaml")).datasets.goal_json

    def build(train=goal_lists.train_path, test=goal_lists.eval_path, **overrides):
        splits = {name: {"storage": str(path)} for name, path in (("train", train), ("test", test)) if path is not None}
        config = {
            "build_info": {"annotations": splits, "images": {"storage": str(goal_lists.image_dir)}},
            "tokenizer": {"model_name": "goal-tiny-vit", "context_length": 248},
        }
        return OmegaConf.merge(defaults, config, overrides)

    return build
