import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import lavis_goal  # noqa: F401  registers builders and the tiny tokenizer config
from lavis_goal.common.lr_schedulers import IterCosineLRScheduler
from lavis_goal.datasets.annotations import LoadOptions, resolve_image_path
from lavis_goal.datasets.builders import GoalJsonBuilder
from lavis_goal.datasets.demo import demo_records, load_demo_annotations
from lavis_goal.paths import plugin_config


def _write_image(path, size=(320, 240), color=(200, 30, 30)):
    image = Image.new("RGB", size, (10, 10, 10))
    image.paste(color, (40, 40, 160, 120))
    image.save(path)
    return path


CAPTION = "A red block sits on black ground. The ground is dark and flat. Nothing else is visible."


def _builder(tmp_path, annotations, top_k=1, image_root=None):
    cfg = OmegaConf.load(plugin_config("datasets/goal_json/defaults.yaml")).datasets.goal_json
    cfg.build_info.annotations = {split: {"storage": str(path)} for split, path in annotations.items()}
    cfg.build_info.images.storage = str(image_root) if image_root else None
    cfg.local_pairs.top_k = top_k
    cfg.tokenizer = {"model_name": "goal-tiny-vit", "context_length": 248}
    return GoalJsonBuilder(cfg)


def test_train_item_has_crops_boxes_and_spans(tmp_path):
    _write_image(tmp_path / "a.png")
    records = [{
        "original_filename": "a.png",
        "original_caption": CAPTION,
        "segment": [
            {"caption": "The ground is dark and flat.", "similarity_score": 0.2,
             "bbox_coordinates": {"x1": 0, "y1": 150, "x2": 320, "y2": 240, "width": 320, "height": 90}},
            {"caption": "A red block sits on black ground.", "similarity_score": 0.9,
             "bbox_coordinates": {"x1": 40, "y1": 40, "x2": 160, "y2": 120, "width": 120, "height": 80}},
            {"caption": "Nothing else is visible.", "similarity_score": 0.5,
             "bbox_coordinates": {"x1": 200, "y1": 10, "x2": 300, "y2": 100, "width": 100, "height": 90}},
        ],
    }]
    (tmp_path / "train.json").write_text(json.dumps(records))
    dataset = _builder(tmp_path, {"train": tmp_path / "train.json"}, top_k=2, image_root=tmp_path).build_datasets()["train"]
    item = dataset[0]

    assert item["local_image"].shape == (2, 3, 224, 224)
    assert item["local_valid"].tolist() == [True, True]
    # Highest scores first: the red block (0.9), then "Nothing else" (0.5).
    # The span of the first pair, cut from the caption tokens, is the sentence's own tokens.
    first_sentence = item["text_input"][item["span"][0, 0] : item["span"][0, 1]]
    assert first_sentence.tolist() == item["local_text"][0][1 : 1 + len(first_sentence)].tolist()
    assert item["span_valid"].tolist() == [True, True]
    # The 320x240 image is resized to 298x224 and centre-cropped at x = 37.
    assert item["region_box"][0].tolist() == pytest.approx([40 * 224 / 240 - 37, 40 * 224 / 240, 160 * 224 / 240 - 37, 120 * 224 / 240], abs=0.5)
    # The crop is the red block: its centre is red after CLIP normalization.
    centre = item["local_image"][0][:, 100:124, 100:124].mean((1, 2))
    assert centre[0] > 1.0
    assert centre[1] < 0
    assert centre[2] < 0


def test_eval_list_with_several_captions(tmp_path):
    for name in ("a.png", "b.png"):
        _write_image(tmp_path / name)
    records = [
        {"filename": "a.png", "caption": ["First caption.", "Second caption."]},
        {"image": "b.png", "caption": "Only caption."},
    ]
    (tmp_path / "test.json").write_text(json.dumps(records))
    dataset = _builder(tmp_path, {"test": tmp_path / "test.json"}, image_root=tmp_path).build_datasets()["test"]
    assert dataset.img2txt == {0: [0, 1], 1: [2]}
    assert dataset.txt2img == {0: 0, 1: 0, 2: 1}
    assert len(dataset.text) == 3
    assert dataset[1]["image"].shape == (3, 224, 224)


def test_image_root_override():
    assert resolve_image_path("images/a.jpg", "/data") == "/data/images/a.jpg"
    assert resolve_image_path("/authors/home/a.jpg", "/data") == "/data/a.jpg"
    assert resolve_image_path("a.jpg", None) == "a.jpg"


def test_demo_annotations_are_complete():
    images = load_demo_annotations()["images"]
    assert len(images) == 20
    assert sum(1 for item in images if item["split"] == "test") == 6
    grayscale = 0
    for split in ("train", "test"):
        records, _ = demo_records(split)
        for record in records:
            with Image.open(record["original_filename"]) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.int16)
                grayscale += bool(np.all(array[..., 0] == array[..., 1]) and np.all(array[..., 1] == array[..., 2]))
            sentences = [s for s in record["original_caption"].split(". ") if s]
            assert len(sentences) >= 6
            assert len(record["segment"]) >= 2
    assert grayscale >= 3


def test_iteration_cosine_schedule():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    schedule = IterCosineLRScheduler(optimizer, max_epoch=2, init_lr=1.0, min_lr=0.0, iters_per_epoch=5)
    rates = [schedule.step(epoch, step) for epoch in range(2) for step in range(5)]
    assert rates[0] == pytest.approx(1.0)
    assert rates[5] == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.5)))
    assert all(a > b for a, b in zip(rates, rates[1:]))  # decays every iteration
    assert optimizer.param_groups[0]["lr"] == pytest.approx(rates[-1])


def test_iteration_schedule_warmup():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = IterCosineLRScheduler(optimizer, max_epoch=1, init_lr=1.0, iters_per_epoch=10, warmup_steps=4)
    assert [round(schedule.step(0, s), 3) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
