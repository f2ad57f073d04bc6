"""Zero-shot classification: CIFAR files, ImageNet-O folders, prompts and top-K accuracy."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from torch.utils.data import DataLoader

import lavis_goal  # noqa: F401  registers the builders
from lavis.common.registry import registry

from lavis_goal.data.classification import build_prompts, read_cifar, read_imagenet_o
from lavis_goal.data.releases import ReleaseLayoutError
from lavis_goal.models import GoalCLIP
from lavis_goal.paths import plugin_config
from lavis_goal.tasks.zeroshot_classification import classification_metrics, topk_accuracy, zeroshot_evaluation

COLORS = ["red", "green", "blue"]
LABELS = [0, 1, 2, 2, 1, 0]


def _cifar_images(labels) -> np.ndarray:
    """``(N, 3072)`` rows in CIFAR's channel-first order; image i is pure red, green or blue by its label."""
    data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    for row, label in enumerate(labels):
        data[row, label] = 255
    return data.reshape(len(labels), -1)


def write_cifar10(root: Path, label_names=COLORS, labels=LABELS) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"batch_label": "testing batch 1 of 1", "data": _cifar_images(labels), "labels": list(labels)}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": list(label_names), "num_cases_per_batch": len(labels)}, handle)
    return root


def write_cifar100(root: Path, fine_names, labels) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    with open(folder / "test", "wb") as handle:
        pickle.dump({"data": _cifar_images([label % 3 for label in labels]), "fine_labels": list(labels), "coarse_labels": [0] * len(labels)}, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": list(fine_names), "coarse_label_names": ["things"]}, handle)
    return root


def _build(name: str, **overrides):
    defaults = OmegaConf.load(plugin_config(f"datasets/{name}/defaults.yaml")).datasets[name]
    return registry.get_builder_class(name)(OmegaConf.merge(defaults, overrides)).build_datasets()


class ColorModel(torch.nn.Module):
    """A stand-in model for colours: images embed as their mean (normalized) RGB, prompts as the colour they name."""

    device = torch.device("cpu")

    def extract_features(self, samples, mode="multimodal"):
        if mode == "image":
            return {"image_embeds": F.normalize(samples["image"].mean(dim=(2, 3)), dim=-1)}
        rows = torch.tensor([[float(color in text) for color in COLORS] for text in samples["text_input"]])
        return {"text_embeds": F.normalize(rows, dim=-1)}


def _evaluate(model, dataset, batch_size=4):
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collater)
    return zeroshot_evaluation(model, loader, OmegaConf.create({"batch_size_eval": batch_size}))


# ----- CIFAR ---------------------------------------------------------------------------


def test_cifar10_builder_classifies_by_prompts(tmp_path):
    root = write_cifar10(tmp_path / "cifar")
    datasets = _build("cifar10", build_info={"root": str(root), "verify_checksums": False}, templates=["a photo of a {}.", "a {} thing."])
    dataset = datasets["cifar10_test"]
    assert dataset.class_names == COLORS
    assert dataset.prompts[1] == ["a photo of a green.", "a green thing."]
    assert dataset.labels.tolist() == LABELS
    assert dataset.topk == (1, 5)
    assert tuple(dataset[0]["image"].shape) == (3, 224, 224)

    result = _evaluate(ColorModel(), dataset)
    assert result["scores"].shape == (6, 3)
    metrics = classification_metrics(result, dataset.topk)
    assert metrics["top1"] == pytest.approx(100.0)
    assert metrics["top5"] == pytest.approx(100.0)
    assert metrics["n_classes"] == 3


def test_cifar10_wrong_labels_score_zero(tmp_path):
    root = write_cifar10(tmp_path / "cifar")
    dataset = _build("cifar10", build_info={"root": str(root), "verify_checksums": False}, templates="simple")["cifar10_test"]
    # Labels shifted by one class no longer name the image's colour, so the colour model is always wrong.
    dataset.labels = torch.tensor([(label + 1) % 3 for label in LABELS])
    metrics = classification_metrics(_evaluate(ColorModel(), dataset), [1, 3])
    assert metrics["top1"] == 0.0
    assert metrics["top3"] == pytest.approx(100.0)


class TokenModel(ColorModel):
    """Returns one feature per query token, as BLIP-2's feature extractor does."""

    def extract_features(self, samples, mode="multimodal"):
        features = super().extract_features(samples, mode)
        return {key: value[:, None].expand(-1, 4, -1) for key, value in features.items()}


def test_per_token_features_rejected(tmp_path):
    root = write_cifar10(tmp_path / "cifar")
    dataset = _build("cifar10", build_info={"root": str(root), "verify_checksums": False}, templates="simple")["cifar10_test"]
    with pytest.raises(ValueError, match="one embedding per input"):
        _evaluate(TokenModel(), dataset)


def test_cifar_checksums_verified_by_default(tmp_path):
    root = write_cifar10(tmp_path / "cifar")
    with pytest.raises(ValueError, match="MD5 checksum"):
        read_cifar("cifar10", root)


def test_cifar_missing_file_shows_layout(tmp_path):
    root = write_cifar10(tmp_path / "cifar")
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(ReleaseLayoutError) as error:
        read_cifar("cifar10", root, verify_checksums=False)
    assert "cifar-10-batches-py/test_batch" in str(error.value)


def test_cifar_wrong_root_shows_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        _build("cifar10", build_info={"root": str(tmp_path / "missing")})
    assert "cifar-10-batches-py" in str(error.value)


def test_cifar100_with_tiny_goal_clip(tmp_path):
    root = write_cifar100(tmp_path / "c100", ["apple", "aquarium_fish", "maple_tree", "zebra"], labels=[0, 1, 2, 3, 3])
    # The root may also be the cifar-100-python folder itself.
    data = read_cifar("cifar100", root / "cifar-100-python", verify_checksums=False)
    assert data.class_names == ["apple", "aquarium fish", "maple tree", "zebra"]

    dataset = _build("cifar100", build_info={"root": str(root), "verify_checksums": False}, templates=["a photo of a {}."])["cifar100_test"]
    model = GoalCLIP.from_config(OmegaConf.load(GoalCLIP.default_config_path("tiny")).model).eval()
    result = _evaluate(model, dataset, batch_size=2)
    assert result["scores"].shape == (5, 4)
    assert np.all(np.abs(result["scores"]) <= 1.0 + 1e-5)  # cosine similarities
    metrics = classification_metrics(result, [1, 5])
    assert 0.0 <= metrics["top1"] <= 100.0
    assert metrics["top5"] == pytest.approx(100.0)  # four classes: every label is in the top 5


# ----- ImageNet-O -------------------------------------------------------------------------

WNIDS = ["n01443537", "n01704323"]


@pytest.fixture
def imagenet_o_root(tmp_path) -> Path:
    root = tmp_path / "imagenet-o"
    for index, wnid in enumerate(WNIDS):
        for n in range(2):
            (root / wnid).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (30, 20), (100 * index, 50, 50)).save(root / wnid / f"{wnid}_{n}.JPEG")
    (root / "README.txt").write_text("ImageNet-O\n", encoding="utf-8")
    return root


def test_imagenet_o_text_class_names(imagenet_o_root, tmp_path):
    names = tmp_path / "synset_words.txt"
    names.write_text("n01443537 goldfish, Carassius auratus\nn01704323 triceratops\nn99999999 unused_class\n", encoding="utf-8")
    data = read_imagenet_o(imagenet_o_root.parent, names)  # the parent that contains imagenet-o/ works too
    assert data.class_names == ["goldfish", "triceratops"]
    assert data.labels == [0, 0, 1, 1]
    assert data.images[2].endswith("n01704323/n01704323_0.JPEG")


def test_imagenet_o_json_class_names(imagenet_o_root, tmp_path):
    as_object = tmp_path / "names.json"
    as_object.write_text(json.dumps({"n01704323": "triceratops", "n01443537": ["goldfish"]}), encoding="utf-8")
    assert read_imagenet_o(imagenet_o_root, as_object).class_names == ["goldfish", "triceratops"]

    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(["gold fish", "dinosaur"]), encoding="utf-8")
    assert read_imagenet_o(imagenet_o_root, as_list).class_names == ["gold fish", "dinosaur"]


def test_imagenet_o_full_imagenet_file_gives_clip_names(imagenet_o_root, tmp_path):
    wnids = sorted(set(WNIDS) | {f"n0{i:07d}" for i in range(998)})
    names = tmp_path / "LOC_synset_mapping.txt"
    names.write_text("".join(f"{w} wordnet_name_{w}\n" for w in wnids), encoding="utf-8")
    data = read_imagenet_o(imagenet_o_root, names)
    assert data.class_names == [IMAGENET_CLASSNAMES[wnids.index(w)] for w in WNIDS]


def test_imagenet_o_needs_class_names(imagenet_o_root, tmp_path):
    with pytest.raises(ValueError, match="build_info.class_names"):
        read_imagenet_o(imagenet_o_root, None)
    partial = tmp_path / "partial.txt"
    partial.write_text("n01443537 goldfish\n", encoding="utf-8")
    with pytest.raises(ValueError, match="n01704323"):
        read_imagenet_o(imagenet_o_root, partial)


def test_imagenet_o_builder(imagenet_o_root, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("n01443537 goldfish\nn01704323 triceratops\n", encoding="utf-8")
    dataset = _build("imagenet_o", build_info={"root": str(imagenet_o_root), "class_names": str(names)})["imagenet_o_test"]
    assert len(dataset) == 4
    assert len(dataset.prompts[0]) == 80  # CLIP's ImageNet prompts by default
    assert dataset.prompts[0][0] == "a bad photo of a goldfish."
    assert tuple(dataset[3]["image"].shape) == (3, 224, 224)


def test_imagenet_o_wrong_root_shows_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReleaseLayoutError, match="one folder per WordNet id"):
        read_imagenet_o(tmp_path / "empty", None)


# ----- prompts and accuracy -----------------------------------------------------------------


def test_prompt_sets():
    assert len(build_prompts(["cat"], "openai")[0]) == 80
    assert build_prompts(["cat", "dog"], ["itap of a {}.", "a {}"]) == [["itap of a cat.", "a cat"], ["itap of a dog.", "a dog"]]
    with pytest.raises(ValueError, match="needs a {}"):
        build_prompts(["cat"], ["a photo of a cat."])
    with pytest.raises(ValueError, match="Unknown template set"):
        build_prompts(["cat"], "cifar")


def brute_force_topk(scores, labels, k):
    correct = 0
    for row, label in zip(scores, labels):
        better_or_equal = sum(1 for c, s in enumerate(row) if c != label and s >= row[label])
        correct += better_or_equal < k
    return 100.0 * correct / len(labels)


def test_topk_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 7)).astype(np.float32)  # many ties, counted against the model
    labels = rng.integers(0, 7, size=50)
    result = topk_accuracy(scores, labels, [1, 3, 5])
    for k in (1, 3, 5):
        assert result[k] == pytest.approx(brute_force_topk(scores, labels, k))


def test_topk_accuracy_rejects_bad_labels():
    with pytest.raises(ValueError, match="Labels must lie"):
        topk_accuracy(np.zeros((2, 3)), [0, 3])
