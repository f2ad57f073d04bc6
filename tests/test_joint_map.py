"""The global+local joint test: relevance by record id, and mAP@K against a brute-force reference."""

import json
import random

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

import lavis_goal  # noqa: F401  registers goal_joint
from lavis.common.registry import registry

from lavis_goal.data.joint import JointItem, items_from_reference_list, merge_test_list, parent_image_name, relevance
from lavis_goal.paths import plugin_config
from lavis_goal.tasks.joint_retrieval import joint_metrics, mean_average_precision


def brute_force_ap(row, relevant, k):
    """AP@K with a Python sort: descending score, irrelevant items first among equal scores."""
    order = sorted(range(len(row)), key=lambda i: (-row[i], i in relevant))
    hits, total = 0, 0.0
    for rank, item in enumerate(order[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / min(len(relevant), k)


def brute_force_map(scores, relevant, k):
    return 100.0 * float(np.mean([brute_force_ap(list(row), set(rel), k) for row, rel in zip(scores, relevant)]))


def hand_made_gallery():
    """Four test images: two, one, zero and one local items, so queries have 3, 2 or 1 relevant items."""
    items = [JointItem(f"img{r}.jpg", f"caption {r}.", r, -1) for r in range(4)]
    items += [
        JointItem("img0.jpg", "left part of 0.", 0, 0, box=(0, 0, 5, 5)),
        JointItem("img0.jpg", "right part of 0.", 0, 1, box=(5, 0, 10, 5)),
        JointItem("img1.jpg", "part of 1.", 1, 0, box=(1, 1, 4, 4)),
        JointItem("img3.jpg", "part of 3.", 3, 0, box=(2, 2, 6, 6)),
    ]
    return items


def test_relevance_links_parents_and_children():
    relevant = relevance(hand_made_gallery())
    assert relevant[0] == [0, 4, 5]  # image 0: its caption and both of its sentences
    assert relevant[4] == [4, 0]  # left part of 0: its sentence and the parent's caption
    assert 5 not in relevant[4]  # siblings are not relevant to each other
    assert relevant[1] == [1, 6]
    assert relevant[2] == [2]
    assert relevant[7] == [7, 3]
    for query, items in enumerate(relevant):
        for item in items:
            assert query in relevant[item]  # symmetric, so one list serves both directions


def test_relevance_rejects_orphan_local_item():
    items = [JointItem("a.jpg", "a.", 0, -1), JointItem("b.jpg", "b part.", 1, 0)]
    with pytest.raises(ValueError, match="has no global item"):
        relevance(items)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10])
def test_map_matches_brute_force_on_hand_made_gallery(k):
    relevant = relevance(hand_made_gallery())
    rng = np.random.default_rng(k)
    # One decimal place: many ties, which both implementations break against the model.
    scores = np.round(rng.uniform(0, 1, size=(8, 8)), 1)
    assert mean_average_precision(scores, relevant, [k])[k] == pytest.approx(brute_force_map(scores, relevant, k), abs=1e-4)


def test_map_matches_brute_force_across_chunks():
    rng = random.Random(0)
    relevant = [rng.sample(range(60), rng.choice([1, 2, 3])) for _ in range(45)]
    scores = np.random.default_rng(1).integers(0, 6, size=(45, 60)).astype(np.float32)
    result = mean_average_precision(scores, relevant, [1, 5, 10], chunk=7)
    for k in (1, 5, 10):
        assert result[k] == pytest.approx(brute_force_map(scores, relevant, k), abs=1e-4)


def test_map_hand_computed_values():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    # Relevant items at ranks 1 and 3: AP = (1/1 + 2/3) / 2.
    assert mean_average_precision(scores, [[0, 2]], [10])[10] == pytest.approx(100 * (1 + 2 / 3) / 2)
    # With K = 2 only rank 1 counts, and the normalizer is min(|R|, K) = 2.
    assert mean_average_precision(scores, [[0, 2]], [2])[2] == pytest.approx(100 * 1 / 2)
    # Three relevant items at ranks 2, 3 and 5.
    assert mean_average_precision(scores, [[1, 2, 4]], [10])[10] == pytest.approx(100 * (1 / 2 + 2 / 3 + 3 / 5) / 3)


def test_map_ties_count_against_the_model():
    scores = np.zeros((1, 8))
    # Equal scores put the two relevant items last, at ranks 7 and 8.
    assert mean_average_precision(scores, [[0, 1]], [10])[10] == pytest.approx(100 * (1 / 7 + 2 / 8) / 2)
    assert mean_average_precision(scores, [[0, 1]], [5])[5] == 0.0


def test_map_perfect_ranking_is_100():
    relevant = relevance(hand_made_gallery())
    scores = np.zeros((8, 8))
    for query, items in enumerate(relevant):
        scores[query, items] = 1.0
    result = joint_metrics({"score_i2t": scores, "score_t2i": scores.T, "relevant": relevant, "n_global": 4, "n_local": 4}, [10])
    assert result["t2i_map10"] == pytest.approx(100.0)
    assert result["i2t_map10"] == pytest.approx(100.0)
    assert result["agg_metrics"] == pytest.approx(100.0)


def test_map_rejects_query_without_relevant_item():
    with pytest.raises(ValueError, match="Query 1 has no relevant item"):
        mean_average_precision(np.zeros((2, 3)), [[0], []], [10])


# ----- reference joint lists -------------------------------------------------------------


def reference_list():
    """Global and crop entries as GOAL's reference joint lists name them: the folders never match."""
    return [
        {"filename": "../DCI/dataset/densely_captioned_images/photos/sa_1.jpg", "caption": "A harbour. A boat is moored."},
        {"filename": "../DCI/dataset/densely_captioned_images/photos/sa_2.jpg", "caption": "A market street. Stalls sell fruit."},
        {"filename": "../pipline/segment_with_background_DCI_test_set_max_0.01/sa_2.jpg_results/original_image.jpg",
         "caption": "Stalls sell fruit", "similarity_score": 26.7},
        {"filename": "../pipline/segment_with_background_DCI_test_set_max_0.01/sa_1.jpg_results/sa_1_max_7.png",
         "caption": "A boat is moored", "similarity_score": 28.4},
    ]


def test_reference_list_links_crops_to_parents(tmp_path):
    images, crops = tmp_path / "photos", tmp_path / "crops"
    for name in ("sa_1.jpg", "sa_2.jpg"):
        images.mkdir(exist_ok=True)
        Image.new("RGB", (20, 10)).save(images / name)
    for folder, name in (("sa_2.jpg_results", "original_image.jpg"), ("sa_1.jpg_results", "sa_1_max_7.png")):
        (crops / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(crops / folder / name)

    items = items_from_reference_list(reference_list(), "joint.json", str(images), str(crops))
    assert [(i.record_id, i.pair_index) for i in items] == [(0, -1), (1, -1), (1, 0), (0, 0)]
    assert items[0].image_path == str(images / "sa_1.jpg")
    assert items[3].image_path == str(crops / "sa_1.jpg_results" / "sa_1_max_7.png")
    assert relevance(items)[0] == [0, 3]
    assert relevance(items)[2] == [2, 1]


def test_reference_list_missing_parent(tmp_path):
    entries = reference_list()[2:3]
    with pytest.raises(ValueError, match="crop of sa_2.jpg"):
        items_from_reference_list(entries, "joint.json", None, None, check_files=False)
    items = items_from_reference_list(reference_list()[1:], "joint.json", None, None, check_files=False, skip_invalid_records=True)
    assert [(i.record_id, i.pair_index) for i in items] == [(0, -1), (0, 0)]


def test_reference_list_missing_crop_file(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    Image.new("RGB", (20, 10)).save(images / "sa_2.jpg")
    entries = reference_list()[1:3]  # sa_2.jpg and its crop, which is not on disk
    with pytest.raises(FileNotFoundError, match="crops to the folder"):
        items_from_reference_list(entries, "joint.json", str(images), str(tmp_path / "crops"))
    items = items_from_reference_list(entries, "joint.json", str(images), str(tmp_path / "crops"), skip_invalid_records=True)
    assert [(i.record_id, i.pair_index) for i in items] == [(0, -1)]


def test_parent_image_name_adds_jpg():
    assert parent_image_name("sa_1552016.jpg_results") == "sa_1552016.jpg"
    assert parent_image_name("test_00042_results") == "test_00042.jpg"


# ----- LISM output through the goal_joint builder ----------------------------------------


def _joint_dataset(tmp_path, storage, **entry):
    defaults = OmegaConf.load(plugin_config("datasets/goal_joint/defaults.yaml")).datasets.goal_joint
    config = OmegaConf.merge(defaults, {
        "build_info": {"annotations": {"docci_joint": {"storage": str(storage), **entry}}},
        "tokenizer": {"model_name": "goal-tiny-vit", "context_length": 248},
    })
    return registry.get_builder_class("goal_joint")(config).build_datasets()["docci_joint"]


def test_lism_output_builds_gallery_with_boxes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("test_00000.jpg", "test_00001.jpg"):
        Image.new("RGB", (64, 48), (20, 120, 200)).save(images / name)
    pairs = [
        {"original_filename": "test_00000.jpg", "original_caption": "A blue wall. A small window sits at the top left.",
         "segment": [
             {"caption": "A small window sits at the top left.", "similarity_score": 0.31, "bbox_coordinates": {"x1": 2, "y1": 3, "x2": 22, "y2": 13, "width": 20, "height": 10}},
             {"caption": "A blue wall.", "similarity_score": 0.2, "bbox_coordinates": {"x1": 0, "y1": 0, "x2": 30, "y2": 30, "width": 30, "height": 30}},
         ]},
        {"original_filename": "test_00001.jpg", "original_caption": "Another blue wall.", "segment": []},
    ]
    storage = tmp_path / "lism_pairs.json"
    storage.write_text(json.dumps(pairs), encoding="utf-8")

    dataset = _joint_dataset(tmp_path, storage, images=str(images))
    assert dataset.protocol == "joint"
    assert dataset.map_k == (10,)
    # top_k 1: the best-scoring pair of image 0 is its only local item.
    assert [(i.record_id, i.pair_index, i.text) for i in dataset.items] == [
        (0, -1, "A blue wall. A small window sits at the top left."), (1, -1, "Another blue wall."), (0, 0, "A small window sits at the top left."),
    ]
    assert dataset.relevant == [[0, 2], [1], [2, 0]]
    assert len(dataset.text) == 3
    assert tuple(dataset[2]["image"].shape) == (3, 224, 224)

    dataset.vis_processor = lambda image: image.size
    assert dataset[2]["image"] == (20, 10)  # the crop is the box, cut from the image
    assert dataset[0]["image"] == (64, 48)


def test_lism_pairs_merged_into_test_list(tmp_path, caplog):
    test_list = [{"filename": "a.jpg", "caption": "A cat. A hat."}, {"filename": "b.jpg", "caption": "A dog."}]
    lism = [
        {"original_filename": "/elsewhere/a.jpg", "original_caption": "A cat. A hat.", "segment": [{"caption": "A hat.", "bbox_coordinates": [1, 1, 3, 3]}]},
        {"original_filename": "c.jpg", "original_caption": "A cow.", "segment": []},
    ]
    merged = merge_test_list(test_list, lism, "pairs.json")
    assert [m["original_filename"] for m in merged] == ["a.jpg", "b.jpg"]
    assert merged[0]["segment"] == lism[0]["segment"]
    assert merged[1]["segment"] == []
    assert "1 of 2 test images have no LISM pairs" in caplog.text
    assert "1 images of the LISM pairs are not in the test list" in caplog.text


def test_joint_builder_needs_a_storage(tmp_path):
    defaults = OmegaConf.load(plugin_config("datasets/goal_joint/defaults.yaml")).datasets.goal_joint
    config = OmegaConf.merge(defaults, {"tokenizer": {"model_name": "goal-tiny-vit", "context_length": 248}})
    with pytest.raises(ValueError, match="no split with a storage file"):
        registry.get_builder_class("goal_joint")(config).build_datasets()
