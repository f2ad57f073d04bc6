"""Benchmark builders on miniature copies of each release layout, and the prepare command.

Every test writes a few real images and the release's annotation files with
their real names and fields under pytest's tmp_path. The reference DOCCI
caption list in ../shared/reference-data is loaded as it ships.
"""

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

import lavis_goal  # noqa: F401  registers the builders
from lavis.common.registry import registry

from lavis_goal.data import prepare, releases
from lavis_goal.data.releases import ReleaseLayoutError, first_json_records, read_release
from lavis_goal.paths import plugin_config

REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "reference-data"
TOKENIZER = {"model_name": "goal-tiny-vit", "context_length": 248}


def _image(path: Path, color=(90, 60, 30), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _build(name: str, **overrides):
    defaults = OmegaConf.load(plugin_config(f"datasets/{name}/defaults.yaml")).datasets[name]
    config = OmegaConf.merge(defaults, {"tokenizer": TOKENIZER}, overrides)
    return registry.get_builder_class(name)(config).build_datasets()


# ----- DOCCI -----------------------------------------------------------------------

DOCCI_ENTRIES = [
    ("test_00000", "test", "A wooden bench faces a lake. Two ducks swim near the shore."),
    ("test_00001", "test", "A red bicycle leans on a brick wall. Its front wheel is turned left."),
    ("qual_test_00000", "qual_test", "A bowl of green apples on a white table."),
    ("train_00000", "train", "A cat sleeps on a blue sofa. Sunlight falls across its back."),
    ("qual_dev_00000", "qual_dev", "A yellow taxi waits at a crossing."),
]


@pytest.fixture
def docci_root(tmp_path) -> Path:
    root = tmp_path / "docci"
    lines = []
    for index, (example_id, split, description) in enumerate(DOCCI_ENTRIES):
        _image(root / "images" / f"{example_id}.jpg", color=(40 * index, 90, 30))
        lines.append(json.dumps({"example_id": example_id, "split": split, "image_file": f"{example_id}.jpg", "description": description}))
    (root / "docci_descriptions.jsonlines").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_docci_test_as_5000_and_5100(docci_root):
    datasets = _build("docci", build_info={"root": str(docci_root)})
    assert sorted(datasets) == ["docci_test", "docci_test_5100"]

    test = datasets["docci_test"]
    assert [os.path.basename(p) for p in test.image] == ["test_00000.jpg", "test_00001.jpg"]
    assert test.records[1].captions == [DOCCI_ENTRIES[1][2]]
    assert test.recall_k == (1, 5, 25, 50)
    assert test.protocol == "retrieval"

    with_qual = datasets["docci_test_5100"]
    assert [os.path.basename(p) for p in with_qual.image] == ["test_00000.jpg", "test_00001.jpg", "qual_test_00000.jpg"]
    assert len(with_qual.text) == 3


def test_docci_train_split_is_training_set(docci_root):
    datasets = _build("docci", build_info={"root": str(docci_root), "splits": {"train": "train", "docci_test": None, "docci_test_5100": None}})
    assert list(datasets) == ["train"]
    assert type(datasets["train"]).__name__ == "GoalTrainDataset"
    assert len(datasets["train"]) == 1


def test_docci_wrong_root_shows_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        _build("docci", build_info={"root": str(tmp_path)})
    assert "docci_descriptions.jsonlines" in str(error.value)
    assert "images/" in str(error.value)


def test_docci_missing_root_setting():
    with pytest.raises(ValueError, match="build_info.root is not set"):
        _build("docci")


def test_docci_missing_image_error_and_skip(docci_root):
    (docci_root / "images" / "test_00001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 images of docci test not found"):
        _build("docci", build_info={"root": str(docci_root)})

    datasets = _build("docci", build_info={"root": str(docci_root)}, skip_invalid_records=True)
    assert len(datasets["docci_test"]) == 1


def test_docci_bad_line_names_line(docci_root):
    path = docci_root / "docci_descriptions.jsonlines"
    path.write_text(path.read_text() + "{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 6 is not valid JSON"):
        read_release("docci", docci_root, "test")


def test_docci_unknown_part_rejected(docci_root):
    with pytest.raises(ValueError, match="valid parts"):
        _build("docci", build_info={"root": str(docci_root), "splits": {"docci_test": "val"}})


# ----- DCI -------------------------------------------------------------------------

DCI_IMAGES = {
    "sa_1543972.jpg": ("An indoor mall.", "Three escalators rise between planters. The floor is polished."),
    "sa_1543973.jpg": ("A pagoda roof.", "The roof is tiered and has pointed tips."),
    "sa_1543977.jpg": ("A stone fountain.", "Statues stand around a stone fountain in a square."),
}


def _dci_release(tmp_path, annotation_name=lambda image: image.replace(".jpg", ".json")) -> Path:
    base = tmp_path / "dci" / "densely_captioned_images"
    (base / "annotations").mkdir(parents=True)
    for index, (image, (short, extra)) in enumerate(DCI_IMAGES.items()):
        _image(base / "photos" / image, color=(60 * index, 20, 90))
        annotation = {"image": image, "short_caption": short, "extra_caption": extra, "mask_data": {}, "mask_keys": []}
        (base / "annotations" / annotation_name(image)).write_text(json.dumps(annotation), encoding="utf-8")
    return base.parent


def _dci_test_list(tmp_path, names) -> Path:
    # GOAL's DCI_test.json names images under the authors' folders.
    records = [{"filename": f"../DCI/dataset/densely_captioned_images/photos/{n}", "caption": DCI_IMAGES[n][1]} for n in names]
    path = tmp_path / "DCI_test.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_dci_test_list_and_extra_caption(tmp_path):
    root = _dci_release(tmp_path)
    test_list = _dci_test_list(tmp_path, ["sa_1543977.jpg", "sa_1543972.jpg"])
    datasets = _build("dci", build_info={"root": str(root), "test_list": str(test_list), "splits": {"dci_train": "train"}})

    test = datasets["dci_test"]
    assert [os.path.basename(p) for p in test.image] == ["sa_1543977.jpg", "sa_1543972.jpg"]
    assert test.records[1].captions == [DCI_IMAGES["sa_1543972.jpg"][1]]
    assert [os.path.basename(p) for p in datasets["dci_train"].image] == ["sa_1543973.jpg"]


def test_dci_caption_fields_join_short_and_extra(tmp_path):
    root = _dci_release(tmp_path)
    records = read_release("dci", root, "all", caption_fields=["short_caption", "extra_caption"])
    assert records[0]["caption"] == "An indoor mall. Three escalators rise between planters. The floor is polished."


def test_dci_annotation_names_need_not_match_images(tmp_path):
    root = _dci_release(tmp_path, annotation_name=lambda image: f"entry_{image[3:-4]}.json")
    test_list = _dci_test_list(tmp_path, ["sa_1543973.jpg"])
    records = read_release("dci", root, "test", test_list=str(test_list))
    assert records == [{"filename": str(root / "densely_captioned_images" / "photos" / "sa_1543973.jpg"), "caption": DCI_IMAGES["sa_1543973.jpg"][1]}]


def test_dci_test_part_needs_test_list(tmp_path):
    root = _dci_release(tmp_path)
    with pytest.raises(ValueError, match="build_info.test_list"):
        _build("dci", build_info={"root": str(root)})


def test_dci_unknown_test_image_rejected(tmp_path):
    root = _dci_release(tmp_path)
    test_list = tmp_path / "test_list.txt"
    test_list.write_text("sa_1543972.jpg\nsa_9999999.jpg\n", encoding="utf-8")
    with pytest.raises(ValueError, match="sa_9999999.jpg"):
        read_release("dci", root, "test", test_list=str(test_list))


def test_dci_wrong_root_shows_layout(tmp_path):
    with pytest.raises(ReleaseLayoutError) as error:
        read_release("dci", tmp_path, "all")
    assert "densely_captioned_images/annotations" in str(error.value)


# ----- Urban1k -----------------------------------------------------------------------


@pytest.fixture
def urban1k_root(tmp_path) -> Path:
    root = tmp_path / "data" / "Urban1k"
    for n in (1, 2, 10):
        _image(root / "image" / f"{n}.jpg", color=(20 * n, 40, 40))
        (root / "caption").mkdir(exist_ok=True)
        (root / "caption" / f"{n}.txt").write_text(f"A street at dusk, view {n}. Cars wait at a red light.\n", encoding="utf-8")
    return root


def test_urban1k_pairs_in_numeric_order(urban1k_root):
    # The parent folder works too: the reader looks inside Urban1k/.
    datasets = _build("urban1k", build_info={"root": str(urban1k_root.parent)})
    test = datasets["urban1k_test"]
    assert [os.path.basename(p) for p in test.image] == ["1.jpg", "2.jpg", "10.jpg"]
    assert test.records[2].captions == ["A street at dusk, view 10. Cars wait at a red light."]


def test_urban1k_unpaired_image(urban1k_root):
    _image(urban1k_root / "image" / "11.jpg")
    with pytest.raises(FileNotFoundError, match="11 \\(no caption\\)"):
        _build("urban1k", build_info={"root": str(urban1k_root)})
    datasets = _build("urban1k", build_info={"root": str(urban1k_root)}, skip_invalid_records=True)
    assert len(datasets["urban1k_test"]) == 3


def test_urban1k_wrong_root_shows_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        _build("urban1k", build_info={"root": str(tmp_path)})
    assert "caption/<N>.txt" in str(error.value)


# ----- ShareGPT4V ---------------------------------------------------------------------

SHARE_IMAGES = ["coco/train2017/000000000009.jpg", "sam/images/sa_545504.jpg", "llava/llava_pretrain/images/00013/000136434.jpg", "coco/train2017/000000000025.jpg"]


@pytest.fixture
def sharegpt4v_root(tmp_path) -> Path:
    root = tmp_path / "ShareGPT4V" / "data"
    records = []
    for index, image in enumerate(SHARE_IMAGES):
        _image(root / image, color=(50 * index, 50, 50))
        records.append({
            "id": Path(image).stem,
            "image": image,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat do you see happening in this image?"},
                {"from": "gpt", "value": f"The image shows scene {index} with {{braces}} and \"quotes\".\nA second paragraph follows."},
            ],
        })
    (root / "sharegpt4v").mkdir()
    (root / "sharegpt4v" / releases.SHAREGPT4V_FILE).write_text(json.dumps(records, indent=2), encoding="utf-8")
    return root


def test_sharegpt4v_keeps_first_records(sharegpt4v_root):
    datasets = _build("sharegpt4v_1k", build_info={"root": str(sharegpt4v_root), "num_records": 3})
    test = datasets["sharegpt4v_1k_test"]
    assert test.image == [str(sharegpt4v_root / image) for image in SHARE_IMAGES[:3]]
    # The caption is the gpt turn, its line break collapsed by the caption processor.
    assert test.records[1].captions == ['The image shows scene 1 with {braces} and "quotes". A second paragraph follows.']


def test_sharegpt4v_default_count_is_1000(sharegpt4v_root):
    records = read_release("sharegpt4v_1k", sharegpt4v_root, "test")
    assert len(records) == 4  # fewer records than 1,000 in the file: all of them, with a warning


def test_streamed_records_match_json_load(tmp_path, monkeypatch):
    records = [{"image": f"{i}.jpg", "conversations": [{"from": "gpt", "value": "x" * (i * 7) + "]},{"}]} for i in range(30)]
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    monkeypatch.setattr(releases, "STREAM_CHUNK", 5)  # refill the buffer inside every element
    assert first_json_records(path, 12) == records[:12]
    assert first_json_records(path, 100) == records


def test_sharegpt4v_wrong_root_shows_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        _build("sharegpt4v_1k", build_info={"root": str(tmp_path)})
    assert releases.SHAREGPT4V_FILE in str(error.value)


# ----- COCO and Flickr30k ----------------------------------------------------------------


def _lavis_release(tmp_path, folder: str, annotation: str, images) -> Path:
    root = tmp_path / folder
    records = []
    for index, image in enumerate(images):
        _image(root / "images" / image, color=(30, 30 * index, 60))
        records.append({"image": image, "caption": [f"caption {c} of picture {index}." for c in range(5)]})
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / annotation).write_text(json.dumps(records), encoding="utf-8")
    return root


def test_coco_five_captions_per_image(tmp_path):
    root = _lavis_release(tmp_path, "coco", "coco_karpathy_test.json",
                          ["val2014/COCO_val2014_000000391895.jpg", "val2014/COCO_val2014_000000060623.jpg"])
    test = _build("coco_5k", build_info={"root": str(root)})["coco_5k_test"]
    assert len(test.image) == 2
    assert len(test.text) == 10
    assert test.img2txt[1] == [5, 6, 7, 8, 9]
    assert test.txt2img[7] == 1
    assert test.recall_k == (1, 5, 10)


def test_flickr30k_accepts_lavis_file_name(tmp_path):
    root = _lavis_release(tmp_path, "flickr30k", "test.json", ["flickr30k-images/1007129816.jpg"])
    test = _build("flickr30k_1k", build_info={"root": str(root)})["flickr30k_1k_test"]
    assert test.image == [str(root / "images" / "flickr30k-images" / "1007129816.jpg")]
    assert len(test.text) == 5


def test_coco_wrong_root_shows_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        _build("coco_5k", build_info={"root": str(tmp_path)})
    assert "annotations/coco_karpathy_test.json" in str(error.value)


def test_flickr30k_wrong_root_shows_layout(tmp_path):
    (tmp_path / "annotations").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        _build("flickr30k_1k", build_info={"root": str(tmp_path)})
    assert "annotations/test.json" in str(error.value)


def test_unknown_build_info_key_rejected(docci_root):
    with pytest.raises(ValueError, match="did you mean 'root'"):
        _build("docci", build_info={"roots": str(docci_root)})


# ----- the reference DOCCI caption list ------------------------------------------------------


@pytest.mark.skipif(not (REFERENCE_DATA / "docci_test_captions.json").is_file(), reason="../shared/reference-data/docci_test_captions.json is absent")
def test_reference_docci_list_loads_with_image_root(tmp_path):
    reference = REFERENCE_DATA / "docci_test_captions.json"
    captions = json.loads(reference.read_text(encoding="utf-8"))

    # One real JPEG, hard-linked under all 5,100 base names: every record's
    # image is checked on disk in well under a second.
    image_root = tmp_path / "docci_images"
    image_root.mkdir()
    source = _image(tmp_path / "one.jpg")
    for record in captions:
        target = image_root / os.path.basename(record["filename"])
        try:
            os.link(source, target)
        except OSError:
            target.write_bytes(source.read_bytes())

    datasets = _build("goal_json", build_info={"annotations": {"test": {"storage": str(reference)}}, "images": {"storage": str(image_root)}})
    test = datasets["test"]
    assert len(test.image) == 5100
    assert len(test.text) == 5100
    assert test.image[0] == str(image_root / "qual_test_00000.jpg")
    assert all(path.startswith(str(image_root)) for path in test.image)
    assert test.records[0].captions[0] == " ".join(captions[0]["caption"].split())
    assert test.img2txt[5099] == [5099]


# ----- prepare -------------------------------------------------------------------------------


def test_prepare_writes_lists_with_counts(docci_root, tmp_path, capsys):
    out = tmp_path / "lists"
    assert prepare.main(["docci", "--root", str(docci_root), "--out", str(out), "--parts", "test", "test_5100"]) == 0
    printed = capsys.readouterr().out
    assert "docci test: 2 images, 2 captions" in printed
    assert "docci test_5100: 3 images, 3 captions" in printed

    written = json.loads((out / "docci_test_5100.json").read_text(encoding="utf-8"))
    assert [os.path.basename(r["filename"]) for r in written] == ["test_00000.jpg", "test_00001.jpg", "qual_test_00000.jpg"]
    assert written[2]["caption"] == DOCCI_ENTRIES[2][2]

    # The written list loads through goal_json as it is.
    test = _build("goal_json", build_info={"annotations": {"test": {"storage": str(out / "docci_test.json")}}})["test"]
    assert len(test.image) == 2


def test_prepare_reports_missing_images(docci_root, tmp_path, capsys):
    (docci_root / "images" / "test_00000.jpg").unlink()
    assert prepare.main(["docci", "--root", str(docci_root), "--out", str(tmp_path / "lists"), "--parts", "test"]) == 0
    assert "1 image files missing" in capsys.readouterr().out


def test_prepare_wrong_root_fails_with_layout(tmp_path, capsys):
    assert prepare.main(["urban1k", "--root", str(tmp_path), "--out", str(tmp_path / "lists")]) == 1
    assert "caption/<N>.txt" in capsys.readouterr().err


def test_prepare_dci_without_test_list_writes_all(tmp_path, capsys):
    root = _dci_release(tmp_path)
    assert prepare.main(["dci", "--root", str(root), "--out", str(tmp_path / "lists")]) == 0
    assert "dci all: 3 images, 3 captions" in capsys.readouterr().out
    assert not (tmp_path / "lists" / "dci_test.json").exists()
