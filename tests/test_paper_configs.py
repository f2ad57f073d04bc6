"""Checks of the run configs in projects/goal/train.

Those configs reproduce the fine-tuning runs of GOAL (Choi, Jang, Eom; CVPR
2025) on DOCCI and DCI. Each config loads through LAVIS's ``Config`` with
the data paths pointed at tiny files written here and
``model.pretrained=null``, so nothing is downloaded. Models are built with
random weights, once per backbone.
"""

import argparse
import itertools
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import lavis_goal  # noqa: F401  registers the plugin before LAVIS reads a config
import lavis.tasks as tasks
from lavis.common.config import Config
from omegaconf import OmegaConf

from lavis_goal.datasets.goal_datasets import GoalRetrievalEvalDataset, GoalTrainDataset
from lavis_goal.losses import GoalLossConfig
from lavis_goal.tasks.goal_retrieval import GoalRetrievalTask

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "projects" / "goal" / "train"

DATASETS = ("docci", "dci")
BACKBONES = {"vitb16": ("ViT-B-16", 16), "vitl14": ("ViT-L-14", 14)}
VARIANT_WEIGHTS = {
    "goal": {"global_weight": 1.0, "local_weight": 0.5, "tsl_image_weight": 1.0, "tsl_text_weight": 1.0},
    "global_only": {"global_weight": 1.0, "local_weight": 0.0, "tsl_image_weight": 0.0, "tsl_text_weight": 0.0},
    "local_only": {"global_weight": 0.0, "local_weight": 0.5, "tsl_image_weight": 0.0, "tsl_text_weight": 0.0},
    "wo_tsl": {"global_weight": 1.0, "local_weight": 0.5, "tsl_image_weight": 0.0, "tsl_text_weight": 0.0},
}
CONFIG_NAMES = [f"{d}_{b}_{v}" for d, b, v in itertools.product(DATASETS, BACKBONES, VARIANT_WEIGHTS)]
GROUPS = [f"{d}_{b}" for d, b in itertools.product(DATASETS, BACKBONES)]

# The GOAL fine-tuning recipe: AdamW at 5e-6 with a per-iteration cosine to 0,
# no warm-up, weight decay 0.05, 16 images per GPU, 10 epochs, bf16 autocast.
EXPECTED_RUN = {
    "task": "goal_retrieval",
    "runner": "runner_goal",
    "lr_sched": "goal_cosine_iter",
    "init_lr": 5e-6,
    "min_lr": 0,
    "warmup_steps": 0,
    "weight_decay": 0.05,
    "batch_size_train": 16,
    "max_epoch": 10,
    "device": "cuda",
    "amp": True,
    "amp_dtype": "bfloat16",
    "train_splits": ["train"],
    "valid_splits": [],
    "test_splits": ["test"],
    "recall_k": [1, 5, 10, 25, 50],
    "best_metric": "mean_r1",
    "use_dist_eval_sampler": False,
}

# Training images as file name, (width, height), long caption and local pairs.
# Each pair is a sentence, a box (x1, y1, x2, y2) in pixels and a similarity score.
# The last pair of the first image covers the whole image and must be dropped.
TRAIN_IMAGES = [
    ("red_square.png", (96, 64), "A red square sits on a white card. A blue dot is in the top left corner.",
     [("A blue dot is in the top left corner.", (2, 2, 30, 24), 0.31),
      ("A red square sits on a white card.", (0, 0, 96, 64), 0.40)]),
    ("green_bar.png", (64, 80), "A green bar crosses a grey field. The bar is thick. It ends near the bottom.",
     [("The bar is thick.", (10, 20, 54, 60), 0.28),
      ("It ends near the bottom.", (10, 50, 54, 80), 0.22)]),
    ("yellow_disc.png", (72, 72), "A yellow disc on black. Its edge is soft.",
     [("Its edge is soft.", (12, 12, 60, 60), 0.27)]),
]
EVAL_IMAGES = [
    ("red_square.png", "A red square on a card with a dot."),
    ("green_bar.png", "A thick green bar on a grey field."),
    ("yellow_disc.png", "A soft yellow disc on a black background."),
]


def _write_image(path: Path, size, index: int) -> None:
    image = Image.new("RGB", size, color=(255, 255, 255))
    draw = ImageDraw.Draw(image)
    width, height = size
    color = [(220, 30, 30), (30, 160, 60), (230, 210, 40)][index]
    draw.rectangle((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=color)
    image.save(path)


@pytest.fixture(scope="module")
def data_options(tmp_path_factory):
    """Write three images, a training list with local pairs and an evaluation list.

    Returns the ``--options`` overrides that point the configs at them.
    """
    root = tmp_path_factory.mktemp("paper_config_data")
    images = root / "images"
    images.mkdir()
    train_records = []
    for index, (name, size, caption, pairs) in enumerate(TRAIN_IMAGES):
        _write_image(images / name, size, index)
        segments = [
            {
                "caption": sentence,
                "similarity_score": score,
                "filename": f"{name}_crop{k}.png",
                "bbox_coordinates": {"x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3],
                                     "width": box[2] - box[0], "height": box[3] - box[1]},
            }
            for k, (sentence, box, score) in enumerate(pairs)
        ]
        train_records.append({"original_filename": name, "original_caption": caption, "segment": segments})
    eval_records = [{"filename": name, "caption": caption} for name, caption in EVAL_IMAGES]

    train_path = root / "train.json"
    test_path = root / "test.json"
    train_path.write_text(json.dumps(train_records))
    test_path.write_text(json.dumps(eval_records))
    return [
        f"datasets.goal_json.build_info.annotations.train.storage={train_path}",
        f"datasets.goal_json.build_info.annotations.test.storage={test_path}",
        f"datasets.goal_json.build_info.images.storage={images}",
        "model.pretrained=null",
    ]


def load_config(name: str, options=None) -> Config:
    path = CONFIG_DIR / f"{name}.yaml"
    return Config(argparse.Namespace(cfg_path=str(path), options=options))


def flatten(node, prefix=""):
    """Map dotted keys to the leaf values of a nested dict."""
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def parse_config_name(name: str):
    dataset, backbone, variant = name.split("_", 2)
    return dataset, backbone, variant


def test_config_folder_has_sixteen_clip_files():
    found = sorted(path.stem for path in CONFIG_DIR.glob("*_vit*.yaml"))
    assert found == sorted(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_builds_task_and_datasets(name, data_options):
    dataset_name, backbone, _ = parse_config_name(name)
    cfg = load_config(name, data_options)

    task = tasks.setup_task(cfg)
    assert isinstance(task, GoalRetrievalTask)
    assert task.recall_k == (1, 5, 10, 25, 50)
    assert task.amp_dtype == torch.bfloat16

    datasets = task.build_datasets(cfg)
    assert set(datasets) == {"goal_json"}
    built = datasets["goal_json"]
    assert set(built) == {"train", "test"}
    train, test = built["train"], built["test"]
    assert isinstance(train, GoalTrainDataset)
    assert isinstance(test, GoalRetrievalEvalDataset)
    assert len(train) == len(TRAIN_IMAGES)
    assert len(test) == len(EVAL_IMAGES)
    assert cfg.datasets_cfg.goal_json.tokenizer.model_name == BACKBONES[backbone][0]

    # top_k 1 keeps the best-scoring pair that is not the whole image.
    assert train.top_k == 1
    assert [p.sentence for p in train.records[0].pairs] == ["A blue dot is in the top left corner."]
    assert [p.sentence for p in train.records[1].pairs] == ["The bar is thick."]

    item = train[0]
    assert tuple(item["image"].shape) == (3, 224, 224)
    # Global-only training needs no crops, so its items carry none.
    if "global_only" in name:
        assert "local_image" not in item
    else:
        assert tuple(item["local_image"].shape) == (1, 3, 224, 224)
    assert tuple(item["text_input"].shape) == (248,)
    assert tuple(test.text[0].shape) == (248,)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_follows_recipe(name):
    dataset_name, backbone, _ = parse_config_name(name)
    cfg = load_config(name)
    run = OmegaConf.to_container(cfg.run_cfg, resolve=True)

    for key, expected in EXPECTED_RUN.items():
        assert run[key] == expected, f"run.{key}"
    assert isinstance(run["init_lr"], float)
    assert run["output_dir"] == f"output/goal/{name}"

    model = cfg.model_cfg
    assert model.arch == "goal_clip"
    assert model.model_type == backbone
    assert model.model_name == BACKBONES[backbone][0]
    assert model.context_length == 248

    data = cfg.datasets_cfg.goal_json
    assert data.local_pairs.top_k == 1
    assert data.vis_processor.train.image_size == 224
    assert data.vis_processor.eval.image_size == 224
    for storage in (data.build_info.annotations.train.storage,
                    data.build_info.annotations.test.storage,
                    data.build_info.images.storage):
        assert storage.startswith(f"/path/to/{dataset_name}/")


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_loss_weights(name):
    _, _, variant = parse_config_name(name)
    loss = OmegaConf.to_container(load_config(name).model_cfg.loss, resolve=True)

    for key, expected in VARIANT_WEIGHTS[variant].items():
        assert loss[key] == expected, f"model.loss.{key}"
    assert loss["tsl_target"] == "diagonal"
    GoalLossConfig.from_dict(loss)


@pytest.mark.parametrize("group", GROUPS)
def test_variants_differ_only_in_loss_and_output(group):
    flat = {}
    for variant in VARIANT_WEIGHTS:
        merged = load_config(f"{group}_{variant}").config
        flat[variant] = flatten(OmegaConf.to_container(merged, resolve=True))

    reference = flat["goal"]
    for variant, values in flat.items():
        assert set(values) == set(reference), variant
        differing = {key for key in reference if values[key] != reference[key]}
        unexpected = {key for key in differing if not key.startswith("model.loss.") and key != "run.output_dir"}
        assert not unexpected, f"{group}_{variant} differs from {group}_goal in {sorted(unexpected)}"
        if variant != "goal":
            assert "run.output_dir" in differing, variant


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_model_builds_with_248_positions(backbone, data_options):
    name = f"docci_{backbone}_goal"
    model_name, patch = BACKBONES[backbone]
    cfg = load_config(name, data_options)
    task = tasks.setup_task(cfg)

    model = task.build_model(cfg)
    assert model.model_name == model_name
    assert model.context_length == 248
    assert model.clip.positional_embedding.shape[0] == 248
    assert tuple(model.clip.attn_mask.shape) == (248, 248)
    assert model.patch_size == (patch, patch)
    assert model.image_size == (224, 224)
    assert model.loss_cfg == GoalLossConfig(**VARIANT_WEIGHTS["goal"])
