"""Bad annotations, images and configs fail with messages that name the file, the record and the fix.

With ``skip_invalid_records: true`` the same problems are skipped, counted by
reason and logged instead.
"""

import logging
from pathlib import Path
from types import SimpleNamespace

import lavis.models
import lavis.tasks
import pytest
import torch
import torch.nn as nn
from lavis.common.registry import registry
from omegaconf import OmegaConf
from PIL import ImageFile

import lavis_goal  # noqa: F401  registers goal_clip, goal_json and goal_retrieval
from lavis_goal.datasets.annotations import AnnotationError
from lavis_goal.models.goal_clip import GoalCLIP
from lavis_goal.tasks.goal_retrieval import GoalRetrievalTask

ANNOTATION_LOGGER = "lavis_goal.datasets.annotations"
SKIP_HINT = "skip_invalid_records: true"
DEMO_RUN_CONFIG = Path(__file__).resolve().parents[1] / "projects" / "goal" / "default.yaml"


def build(config):
    return registry.get_builder_class("goal_json")(config).build_datasets()


def build_error(config, error_type=Exception) -> str:
    with pytest.raises(error_type) as excinfo:
        build(config)
    return str(excinfo.value)


def image_names(dataset):
    return [record.image_path.rsplit("/", 1)[-1] for record in dataset.records]


# ----- 1. missing and unreadable images -------------------------------------


def test_missing_image_names_file_record_and_root(goal_lists, write_json, goal_json_config):
    records = goal_lists.train_records()
    records[1]["original_filename"] = "not_there.jpg"
    path = write_json("train_missing.json", records)

    message = build_error(goal_json_config(train=path), FileNotFoundError)

    assert "not_there.jpg" in message
    assert path.name in message
    assert "record 1 " in message
    assert "build_info.images.storage" in message
    assert SKIP_HINT in message


def test_unreadable_image_names_file_record_and_fix(goal_lists, write_json, goal_json_config):
    (goal_lists.image_dir / "garbage.jpg").write_bytes(b"this is not a JPEG file\x00\x01\x02" * 10)
    records = goal_lists.train_records()
    records[2]["original_filename"] = "garbage.jpg"
    path = write_json("train_garbage.json", records)

    message = build_error(goal_json_config(train=path), AnnotationError)

    assert "garbage.jpg" in message
    assert path.name in message
    assert "record 2 " in message
    assert "cannot be read" in message
    assert "replace the file" in message


@pytest.mark.parametrize(
    ("filename", "reason"),
    [("not_there.jpg", "missing image"), ("garbage.jpg", "unreadable image")],
)
def test_bad_image_skipped_when_allowed(goal_lists, write_json, goal_json_config, caplog, filename, reason):
    (goal_lists.image_dir / "garbage.jpg").write_bytes(b"\xff\xd8 truncated garbage")
    records = goal_lists.train_records()
    records[1]["original_filename"] = filename
    path = write_json("train_skip.json", records)

    with caplog.at_level(logging.WARNING, logger=ANNOTATION_LOGGER):
        datasets = build(goal_json_config(train=path, test=None, skip_invalid_records=True))

    assert len(datasets["train"]) == 2
    assert filename not in image_names(datasets["train"])
    assert f"skipped 1 {reason}" in caplog.text
    assert "record 1 " in caplog.text


def test_truncated_image_fails_when_loaded(goal_lists, write_json, goal_json_config, monkeypatch):
    # LAVIS 1.0.2 turns this Pillow flag on when its datasets are imported,
    # which decodes truncated files without an error.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    # The header is intact, so the build-time check passes and decoding fails later.
    data = (goal_lists.image_dir / "red.jpg").read_bytes()
    start_of_scan = data.index(b"\xff\xda")
    (goal_lists.image_dir / "cut.jpg").write_bytes(data[: start_of_scan + 20])
    records = goal_lists.eval_records()
    records[1]["filename"] = "cut.jpg"
    path = write_json("test_cut.json", records)
    dataset = build(goal_json_config(train=None, test=path))["test"]

    with pytest.raises(ValueError) as excinfo:
        dataset[1]
    message = str(excinfo.value)

    assert "cut.jpg" in message
    assert "record 1 of" in message
    assert path.name in message
    assert "replace it or remove the record" in message


# ----- 2. captions -------------------------------------------------------------


@pytest.mark.parametrize(
    "caption",
    [pytest.param(None, id="missing-key"), "", "   \n\t ", 123, [""]],
)
def test_training_record_without_caption(goal_lists, write_json, goal_json_config, caption):
    records = goal_lists.train_records()
    if caption is None:
        del records[0]["original_caption"]
    else:
        records[0]["original_caption"] = caption
    records[0]["segment"] = []
    path = write_json("train_caption.json", records)

    message = build_error(goal_json_config(train=path), AnnotationError)

    assert path.name in message
    assert "record 0 " in message
    assert "caption" in message
    assert SKIP_HINT in message


@pytest.mark.parametrize("caption", [pytest.param(None, id="missing-key"), ""])
def test_eval_record_without_caption(goal_lists, write_json, goal_json_config, caption):
    records = goal_lists.eval_records()
    if caption is None:
        del records[2]["caption"]
    else:
        records[2]["caption"] = caption
    path = write_json("test_caption.json", records)

    message = build_error(goal_json_config(train=None, test=path), AnnotationError)

    assert path.name in message
    assert "record 2 " in message
    assert "has no caption" in message
    assert SKIP_HINT in message


def test_record_without_caption_skipped(goal_lists, write_json, goal_json_config, caplog):
    records = goal_lists.eval_records()
    records[0]["caption"] = ""
    path = write_json("test_caption.json", records)

    with caplog.at_level(logging.WARNING, logger=ANNOTATION_LOGGER):
        datasets = build(goal_json_config(train=None, test=path, skip_invalid_records=True))

    assert len(datasets["test"]) == 2
    assert "red.jpg" not in image_names(datasets["test"])
    assert "skipped 1 no caption" in caplog.text


# ----- 3. boxes ------------------------------------------------------------------


def _with_box(goal_lists, write_json, coords, name="train_box.json"):
    records = goal_lists.train_records()
    records[1]["segment"][0]["bbox_coordinates"] = coords
    return write_json(name, records)


def test_box_outside_image(goal_lists, write_json, goal_json_config):
    # Boxes scaled by the crop's width and height land outside the 64x48 image.
    path = _with_box(goal_lists, write_json, {"x1": 10, "y1": 10, "x2": 300, "y2": 40, "width": 290, "height": 30})

    message = build_error(goal_json_config(train=path), AnnotationError)

    assert path.name in message
    assert "local pair 0 of record 1 " in message
    assert "outside the 64x48 image" in message
    assert "original pixels" in message


def test_box_of_zero_area(goal_lists, write_json, goal_json_config):
    path = _with_box(goal_lists, write_json, {"x1": 20, "y1": 5, "x2": 20, "y2": 30})

    message = build_error(goal_json_config(train=path), AnnotationError)

    assert path.name in message
    assert "local pair 0 of record 1 " in message
    assert "zero area" in message
    assert "x2 > x1" in message


@pytest.mark.parametrize(
    "coords",
    [pytest.param(None, id="no-bbox"), pytest.param({"x1": 1, "y1": 2, "y2": 9}, id="no-x2"), [1, 2, 3]],
)
def test_box_without_coordinates(goal_lists, write_json, goal_json_config, coords):
    records = goal_lists.train_records()
    if coords is None:
        del records[1]["segment"][0]["bbox_coordinates"]
    else:
        records[1]["segment"][0]["bbox_coordinates"] = coords
    path = write_json("train_box.json", records)

    message = build_error(goal_json_config(train=path), AnnotationError)

    assert path.name in message
    assert "local pair 0 of record 1 " in message
    assert "x1, y1, x2, y2" in message


@pytest.mark.parametrize(
    ("coords", "reason"),
    [
        ({"x1": 10, "y1": 10, "x2": 300, "y2": 40}, "local pair: box outside image"),
        ({"x1": 20, "y1": 5, "x2": 20, "y2": 30}, "local pair: empty box"),
        ({"x1": 20}, "local pair: bad box"),
    ],
)
def test_bad_box_pair_skipped(goal_lists, write_json, goal_json_config, caplog, coords, reason):
    path = _with_box(goal_lists, write_json, coords)

    with caplog.at_level(logging.WARNING, logger=ANNOTATION_LOGGER):
        train = build(goal_json_config(train=path, test=None, skip_invalid_records=True))["train"]

    # The pair is dropped and the record stays as a global-only sample.
    assert len(train) == 3
    assert train.records[1].pairs == []
    assert not bool(train[1]["local_valid"].any())
    assert f"skipped 1 {reason}" in caplog.text
    assert "local pair 0 of record 1 " in caplog.text


def test_non_numeric_score(goal_lists, write_json, goal_json_config):
    records = goal_lists.train_records()
    records[0]["segment"][0]["similarity_score"] = None
    path = write_json("train_score.json", records)

    message = build_error(goal_json_config(train=path), AnnotationError)

    assert path.name in message
    assert "local pair 0 of record 0 " in message
    assert "invalid similarity_score None" in message
    assert "write a number" in message


# ----- 4. local sentence not in its caption ------------------------------------


def test_local_sentence_not_in_caption(goal_lists, write_json, goal_json_config):
    records = goal_lists.train_records()
    records[2]["segment"][0]["caption"] = "A purple elephant dances on the shore."
    path = write_json("train_sentence.json", records)

    message = build_error(goal_json_config(train=path), AnnotationError)

    assert path.name in message
    assert "local pair 0 of record 2 " in message
    assert "purple elephant" in message
    assert "copied from their caption" in message


def test_local_sentence_not_in_caption_skipped(goal_lists, write_json, goal_json_config, caplog):
    records = goal_lists.train_records()
    records[2]["segment"][0]["caption"] = "A purple elephant dances on the shore."
    path = write_json("train_sentence.json", records)

    with caplog.at_level(logging.WARNING, logger=ANNOTATION_LOGGER):
        train = build(goal_json_config(train=path, test=None, skip_invalid_records=True))["train"]

    assert len(train) == 3
    assert train.records[2].pairs == []
    assert "skipped 1 local pair: sentence not in caption" in caplog.text


# ----- 5. captions without sentences -------------------------------------------


@pytest.mark.parametrize("caption", ["...", "?!", ". . .", " - -- ; ", "\u2026 \u2014"])
def test_caption_without_sentence(goal_lists, write_json, goal_json_config, caption):
    records = goal_lists.eval_records()
    records[1]["caption"] = caption
    path = write_json("test_sentence.json", records)

    message = build_error(goal_json_config(train=None, test=path), AnnotationError)

    assert path.name in message
    assert "record 1 " in message
    assert "no sentence" in message
    assert SKIP_HINT in message


# ----- 6. empty datasets ---------------------------------------------------------


def test_empty_list_rejected(write_json, goal_json_config):
    path = write_json("empty.json", [])

    message = build_error(goal_json_config(train=path), AnnotationError)

    assert path.name in message
    assert "No usable records" in message
    assert "0 in the file" in message
    assert "check the file" in message


def test_all_records_skipped_rejected(goal_lists, write_json, goal_json_config, caplog):
    records = goal_lists.train_records()
    for record in records:
        record["original_filename"] = "gone_" + record["original_filename"]
    path = write_json("train_gone.json", records)

    with caplog.at_level(logging.WARNING, logger=ANNOTATION_LOGGER):
        message = build_error(goal_json_config(train=path, skip_invalid_records=True), AnnotationError)

    assert path.name in message
    assert "No usable records" in message
    assert "3 missing image" in message
    assert "image root" in message
    assert caplog.text.count("Skipped: ") == 3


# ----- 7. unknown model type -----------------------------------------------------


def test_unknown_model_type_lists_valid_types():
    with pytest.raises(ValueError) as excinfo:  # not LAVIS's bare AssertionError
        lavis.models.load_model("goal_clip", "no_such_type")
    message = str(excinfo.value)

    assert "no_such_type" in message
    for model_type in GoalCLIP.PRETRAINED_MODEL_CONFIG_DICT:
        assert model_type in message


# ----- 8. config keys with typos -------------------------------------------------


def _tiny_model_config(**overrides):
    model = OmegaConf.load(GoalCLIP.PRETRAINED_MODEL_CONFIG_DICT["tiny"]).model
    return OmegaConf.merge(model, overrides)


def _assert_typo_reported(message: str, typo: str, correct: str):
    assert repr(typo) in message
    assert f"did you mean {correct!r}" in message


def test_run_key_typo():
    run = OmegaConf.load(DEMO_RUN_CONFIG).run
    run.max_epochs = run.pop("max_epoch")

    with pytest.raises(ValueError) as excinfo:
        lavis.tasks.setup_task(SimpleNamespace(run_cfg=run))
    message = str(excinfo.value)

    assert "run" in message
    _assert_typo_reported(message, "max_epochs", "max_epoch")


def test_model_key_typo():
    config = _tiny_model_config(contxt_length=248)

    with pytest.raises(ValueError) as excinfo:
        GoalCLIP.from_config(config)
    message = str(excinfo.value)

    assert "model" in message
    _assert_typo_reported(message, "contxt_length", "context_length")


def test_loss_key_typo():
    config = _tiny_model_config(loss={"local_wieght": 0.5})

    with pytest.raises(ValueError) as excinfo:
        GoalCLIP.from_config(config)
    message = str(excinfo.value)

    assert "model.loss" in message
    _assert_typo_reported(message, "local_wieght", "local_weight")


@pytest.mark.parametrize(
    ("overrides", "where", "typo", "correct"),
    [
        ({"skip_invalid_record": True}, "datasets.goal_json", "skip_invalid_record", "skip_invalid_records"),
        ({"local_pairs": {"topk": 2}}, "datasets.goal_json.local_pairs", "topk", "top_k"),
        ({"build_info": {"images": {"storge": "x"}}}, "datasets.goal_json.build_info.images", "storge", "storage"),
        ({"vis_processor": {"trian": {}}}, "datasets.goal_json.vis_processor", "trian", "train"),
        ({"vis_processor": {"train": {"image_sise": 64}}}, "goal_image_train", "image_sise", "image_size"),
        ({"vis_processor": {"eval": {"meen": [0.5] * 3}}}, "goal_image_eval", "meen", "mean"),
        ({"text_processor": {"eval": {"max_word": 20}}}, "goal_caption", "max_word", "max_words"),
    ],
)
def test_dataset_key_typo(goal_json_config, overrides, where, typo, correct):
    message = build_error(goal_json_config(**overrides), ValueError)

    assert where in message
    _assert_typo_reported(message, typo, correct)


def test_processor_name_mismatch(goal_json_config):
    config = goal_json_config(vis_processor={"train": {"name": "blip_image_train"}})

    message = build_error(config, ValueError)

    assert "datasets.goal_json.vis_processor.train.name" in message
    assert "'blip_image_train'" in message
    assert "set name: goal_image_train" in message


# ----- 9. non-finite loss ---------------------------------------------------------


class NanAtStepModel(nn.Module):
    """One parameter; the loss turns NaN at step ``nan_step``."""

    def __init__(self, nan_step: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.nan_step = nan_step
        self.calls = 0

    def forward(self, samples):
        local = torch.tensor(float("nan")) if self.calls == self.nan_step else torch.tensor(0.25)
        self.calls += 1
        loss_global = (self.weight * samples["x"]).sum()
        return {
            "loss": loss_global + local,
            "loss_global": loss_global.detach(),
            "loss_local": local,
            "logit_scale": torch.tensor(14.3),
        }


class ConstantLR:
    def step(self, cur_epoch, cur_step):
        return 0.1


def test_nan_loss_raises_with_epoch_step_and_terms():
    model = NanAtStepModel(nan_step=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = iter([{"x": torch.full((2,), 0.5)} for _ in range(5)])

    with pytest.raises(FloatingPointError) as excinfo:
        GoalRetrievalTask()._train_inner_loop(
            epoch=3, iters_per_epoch=5, model=model, data_loader=batches,
            optimizer=optimizer, lr_scheduler=ConstantLR(), log_freq=0,
        )
    message = str(excinfo.value)

    assert "epoch 3" in message
    assert "step 2 " in message
    assert "global step 17" in message
    assert "loss=nan" in message
    assert "loss_local=nan" in message
    assert "loss_global=" in message
    assert "Lower the learning rate" in message
    assert model.calls == 3
    # The NaN step must not reach the optimizer.
    assert bool(torch.isfinite(model.weight).all())


# ----- 10. annotation files that are not a JSON list -------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"filename,caption\nred.jpg,A red square.\n", id="csv"),
        pytest.param(b'{"filename": "red.jpg", "caption": "A."}\n{"filename": "blue.jpg", "caption": "B."}\n', id="json-lines"),
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", id="binary"),
        pytest.param(b"", id="empty-file"),
    ],
)
def test_file_not_json(tmp_path, goal_json_config, content):
    path = tmp_path / "broken.json"
    path.write_bytes(content)

    message = build_error(goal_json_config(train=None, test=path), AnnotationError)

    assert path.name in message
    assert "not valid UTF-8 JSON" in message
    assert "one JSON list of records" in message


@pytest.mark.parametrize("data", [{"records": []}, "red.jpg", 3])
def test_json_not_a_list(write_json, goal_json_config, data):
    path = write_json("not_list.json", data)

    message = build_error(goal_json_config(train=None, test=path), AnnotationError)

    assert path.name in message
    assert "must hold a JSON list of records" in message
    assert type(data).__name__ in message


def test_record_not_an_object(goal_lists, write_json, goal_json_config):
    records = goal_lists.eval_records()
    records[1] = "green.png"
    path = write_json("test_strings.json", records)

    message = build_error(goal_json_config(train=None, test=path), AnnotationError)

    assert path.name in message
    assert "record 1 " in message
    assert "expected a JSON object" in message


def test_missing_annotation_file(tmp_path, goal_json_config):
    path = tmp_path / "nowhere.json"

    message = build_error(goal_json_config(train=None, test=path), FileNotFoundError)

    assert path.name in message
    assert "build_info.annotations.<split>.storage" in message


# ----- images in other modes, and the skip summary ---------------------------------


@pytest.mark.parametrize(
    ("filename", "mode"),
    [
        ("gray.png", "L"),
        ("gray.jpg", "L"),
        ("alpha.png", "RGBA"),
        ("gray_alpha.png", "LA"),
        ("palette.png", "P"),
        ("palette.gif", "P"),
        ("deep.png", "I;16"),
        ("print.jpg", "CMYK"),
    ],
)
def test_image_modes_load(goal_lists, write_image, write_json, goal_json_config, filename, mode):
    write_image(filename, mode=mode)
    train = goal_lists.train_records()
    train[0]["original_filename"] = filename
    evaluation = goal_lists.eval_records()
    evaluation[0]["filename"] = filename
    train_path = write_json("train_modes.json", train)
    eval_path = write_json("test_modes.json", evaluation)

    datasets = build(goal_json_config(train=train_path, test=eval_path))
    train_item = datasets["train"][0]
    eval_item = datasets["test"][0]

    assert train_item["image"].shape == (3, 224, 224)
    assert bool(torch.isfinite(train_item["image"]).all())
    assert train_item["local_image"].shape == (1, 3, 224, 224)
    assert bool(train_item["local_valid"][0])
    assert eval_item["image"].shape == (3, 224, 224)


def test_skip_summary_counts_by_reason(goal_lists, write_image, write_json, goal_json_config, caplog):
    (goal_lists.image_dir / "garbage.jpg").write_bytes(b"not an image")
    write_image("extra1.jpg")
    write_image("extra2.jpg")
    records = goal_lists.train_records()
    records += goal_lists.train_records()
    records[0]["original_filename"] = "gone1.jpg"
    records[1]["original_filename"] = "gone2.jpg"
    records[2]["original_caption"] = ""
    records[3]["original_filename"] = "garbage.jpg"
    records[4]["original_filename"] = "extra1.jpg"
    records[4]["segment"][0]["bbox_coordinates"]["x2"] = 0
    records[5]["original_filename"] = "extra2.jpg"
    path = write_json("train_mixed.json", records)

    with caplog.at_level(logging.WARNING, logger=ANNOTATION_LOGGER):
        train = build(goal_json_config(train=path, test=None, skip_invalid_records=True))["train"]

    assert image_names(train) == ["extra1.jpg", "extra2.jpg"]
    assert train.records[0].pairs == []
    summary = [r.getMessage() for r in caplog.records if "kept" in r.getMessage()]
    assert len(summary) == 1
    assert "kept 2 of 6 records" in summary[0]
    assert "1 local pair: empty box" in summary[0]
    assert "2 missing image" in summary[0]
    assert "1 no caption" in summary[0]
    assert "1 unreadable image" in summary[0]
