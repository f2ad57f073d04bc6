"""Dataset builders for the benchmarks GOAL reports, read from their release layouts.

Registered builders (LAVIS already registers ``coco_retrieval`` and
``flickr30k``, so the short-caption sets use new names):

| builder | protocol | default split: part |
|---|---|---|
| ``docci`` | retrieval, R@1/5/25/50 | ``docci_test: test`` (5,000), ``docci_test_5100: test_5100`` |
| ``dci`` | retrieval, R@1/5/25/50 | ``dci_test: test`` (needs ``build_info.test_list``) |
| ``urban1k`` | retrieval, R@1/5/25/50 | ``urban1k_test: test`` |
| ``sharegpt4v_1k`` | retrieval, R@1/5/25/50 | ``sharegpt4v_1k_test: test`` |
| ``coco_5k`` | retrieval, R@1/5/10, 5 captions per image | ``coco_5k_test: test`` |
| ``flickr30k_1k`` | retrieval, R@1/5/10, 5 captions per image | ``flickr30k_1k_test: test`` |
| ``goal_joint`` | global+local joint test, mAP@10 | one split per entry of ``build_info.annotations`` |
| ``cifar10``, ``cifar100`` | zero-shot classification, top-1/5 | ``cifar10_test: test``, ``cifar100_test: test`` |
| ``imagenet_o`` | zero-shot classification, top-1/5 | ``imagenet_o_test: test`` |

Each release builder needs one folder from the user, ``build_info.root``.
``build_info.splits`` maps run split names to parts of the benchmark, and a
null part turns a default split off. Split names are prefixed with the
benchmark so that one run can evaluate several benchmarks. The reference
evaluation lists of GOAL's release load as they are through ``goal_json``.
"""

import logging
import os
from typing import Dict, List

import torch
from lavis.common.registry import registry
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import Dataset, default_collate

from lavis_goal.common.config_check import check_keys
from lavis_goal.data.classification import build_prompts, read_cifar, read_imagenet_o
from lavis_goal.data.joint import (
    JointItem, is_lism_format, items_from_lism, items_from_reference_list, merge_test_list, relevance,
)
from lavis_goal.data.releases import RELEASES, missing_images, read_release
from lavis_goal.datasets.annotations import parse_records, read_json_list
from lavis_goal.datasets.builders import DATASET_CONFIG_KEYS, GoalBuilderBase
from lavis_goal.datasets.goal_datasets import open_image
from lavis_goal.paths import plugin_config
from lavis_goal.text_spans import SpanTokenizer

logger = logging.getLogger(__name__)

LONG_CAPTION_RECALL_K = (1, 5, 25, 50)
SHORT_CAPTION_RECALL_K = (1, 5, 10)
DEFAULT_MAP_K = (10,)
DEFAULT_TOPK = (1, 5)


def _resolve_folder(value, where: str):
    if value is None:
        return None
    path = os.path.abspath(os.path.expanduser(str(value)))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{where} {path} is not a folder")
    return path


class _SplitsMixin:
    """``build_info.root`` and ``build_info.splits`` (run split name to benchmark part)."""

    @classmethod
    def is_configured(cls, cfg) -> bool:
        """Return True if the user set ``build_info.root``; a suite run skips the benchmark otherwise."""
        build_info = cfg.get("build_info", None)
        return build_info is not None and build_info.get("root", None) is not None

    def root(self) -> str:
        root = self.config.build_info.get("root", None)
        if root is None:
            raise ValueError(f"datasets.{self.name}.build_info.root is not set; set it to the folder of the {self.name} release")
        return os.path.abspath(os.path.expanduser(str(root)))

    def splits(self) -> Dict[str, str]:
        splits = self.config.build_info.get("splits", None) or {}
        active = {str(split): str(part) for split, part in splits.items() if part is not None}
        if not active:
            raise ValueError(f"datasets.{self.name}.build_info.splits maps no split to a part; valid parts: {', '.join(self.parts)}")
        for split, part in active.items():
            if part not in self.parts:
                raise ValueError(f"datasets.{self.name}.build_info.splits.{split} is {part!r}; valid parts: {', '.join(self.parts)}")
        return active

    def split_names(self):
        return list(self.splits())


class ReleaseRetrievalBuilder(_SplitsMixin, GoalBuilderBase):
    """Retrieval sets read from an official release with ``lavis_goal.data.releases``.

    A split named ``train`` becomes a ``GoalTrainDataset`` without local
    pairs (global-only training, or LISM input); the others become
    ``GoalRetrievalEvalDataset`` tagged with the benchmark's ``recall_k``.
    """

    release_name = ""
    default_recall_k = LONG_CAPTION_RECALL_K

    @property
    def release(self):
        return RELEASES[self.release_name]

    @property
    def parts(self):
        return self.release.parts

    def build_datasets(self):
        check_keys(self.config, DATASET_CONFIG_KEYS | {"recall_k"}, f"datasets.{self.name}")
        check_keys(self.config.build_info, {"root", "splits", *self.release.options} - {"strict"}, f"datasets.{self.name}.build_info")
        datasets = self.build()
        recall_k = tuple(int(k) for k in self.config.get("recall_k", None) or self.default_recall_k)
        for dataset in datasets.values():
            dataset.benchmark = self.name
            dataset.protocol = "retrieval"
            dataset.recall_k = recall_k
        return datasets

    def release_options(self) -> dict:
        build_info = self.config.build_info
        options = {}
        for key in self.release.options:
            value = build_info.get(key, None)
            if value is not None:
                options[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        return options

    def split_records(self, split, options):
        part = self.splits()[split]
        raw = read_release(self.release_name, self.root(), part, **self.release_options())
        source = f"{self.name}/{part} ({self.root()})"
        if options.check_images:
            raw = self._drop_missing_images(raw, part, options.skip_invalid_records)
        records, _ = parse_records(raw, source, options)
        return records, source

    def _drop_missing_images(self, raw: List[dict], part: str, skip: bool) -> List[dict]:
        missing = missing_images(raw)
        if not missing:
            return raw
        detail = f"{len(missing)} of {len(raw)} images of {self.name} {part} not found, e.g. {raw[missing[0]]['filename']}"
        if not skip:
            raise FileNotFoundError(
                f"{detail}. The {self.name} root (build_info.root) must have this layout:\n{self.release.layout}\n"
                "Restore the files, or set skip_invalid_records: true to leave them out"
            )
        logger.warning("%s; left out (skip_invalid_records)", detail)
        dropped = set(missing)
        return [record for i, record in enumerate(raw) if i not in dropped]


@registry.register_builder("docci")
class DocciBuilder(ReleaseRetrievalBuilder):
    """DOCCI from ``docci_descriptions.jsonlines`` and ``images/``; parts train, test, qual_dev, qual_test, test_5100."""

    name = release_name = "docci"
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/docci/defaults.yaml")}


@registry.register_builder("dci")
class DciBuilder(ReleaseRetrievalBuilder):
    """DCI from the release's per-image annotation files, ``extra_caption`` as the long caption.

    ``build_info.test_list`` names the 2,000-image test list (GOAL's
    ``DCI_test.json`` or one image name per line); part ``train`` is every
    other annotated image and ``all`` every image. ``build_info.caption_fields``
    (default ``[extra_caption]``) lists the annotation fields joined into the caption.
    """

    name = release_name = "dci"
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/dci/defaults.yaml")}


@registry.register_builder("urban1k")
class Urban1kBuilder(ReleaseRetrievalBuilder):
    """Urban1k from ``image/N.jpg`` and ``caption/N.txt``."""

    name = release_name = "urban1k"
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/urban1k/defaults.yaml")}

    def release_options(self) -> dict:
        return {"strict": not bool(self.config.get("skip_invalid_records", False))}


@registry.register_builder("sharegpt4v_1k")
class ShareGPT4VBuilder(ReleaseRetrievalBuilder):
    """The first 1,000 records of the ShareCaptioner file, the caption being the gpt turn.

    ``build_info.annotation`` names another records file; ``build_info.num_records`` changes the count.
    """

    name = release_name = "sharegpt4v_1k"
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/sharegpt4v_1k/defaults.yaml")}


@registry.register_builder("coco_5k")
class Coco5kBuilder(ReleaseRetrievalBuilder):
    """COCO's 5,000-image Karpathy test split in LAVIS's annotation format, five captions per image."""

    name = release_name = "coco_5k"
    default_recall_k = SHORT_CAPTION_RECALL_K
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/coco_5k/defaults.yaml")}


@registry.register_builder("flickr30k_1k")
class Flickr30k1kBuilder(ReleaseRetrievalBuilder):
    """Flickr30k's 1,000-image test split in LAVIS's annotation format, five captions per image."""

    name = release_name = "flickr30k_1k"
    default_recall_k = SHORT_CAPTION_RECALL_K
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/flickr30k_1k/defaults.yaml")}


# ----- global+local joint test ---------------------------------------------------


class JointRetrievalDataset(Dataset):
    """The joint test gallery: global and local items, and their relevance lists.

    Follows ``GoalRetrievalEvalDataset`` (``image``, ``text``, ``img2txt``,
    ``txt2img``; items ``{"image", "index"}``), so a model's
    ``compute_sim_matrix`` scores it. ``relevant[i]`` lists the items of the
    other modality relevant to item ``i``, for queries in either direction.
    """

    protocol = "joint"

    def __init__(self, items: List[JointItem], vis_processor, tokenizer: SpanTokenizer, source: str = ""):
        self.items = items
        self.source = source
        self.vis_processor = vis_processor
        self.image = [item.image_path for item in items]
        self.text = [tokenizer.encode_caption(item.text).tokens for item in items]
        self.img2txt = {i: [i] for i in range(len(items))}
        self.txt2img = {i: i for i in range(len(items))}
        self.relevant = relevance(items)
        n_local = sum(item.pair_index >= 0 for item in items)
        logger.info("%s: joint gallery of %d global and %d local items", source, len(items) - n_local, n_local)

    def __len__(self) -> int:
        return len(self.items)

    def collater(self, samples):
        return default_collate(samples)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        item = self.items[index]
        image = open_image(item.image_path, item.record_id, self.source)
        if item.box is not None:
            x1, y1, x2, y2 = (float(v) for v in item.box)
            x1, y1 = max(0, int(x1)), max(0, int(y1))
            x2 = min(image.width, max(int(round(x2)), x1 + 1))
            y2 = min(image.height, max(int(round(y2)), y1 + 1))
            image = image.crop((x1, y1, x2, y2))
        return {"image": self.vis_processor(image), "index": index}


JOINT_SPLIT_KEYS = {"storage", "test_list", "images", "crops"}


@registry.register_builder("goal_joint")
class GoalJointBuilder(GoalBuilderBase):
    """The global+local joint test; one split per entry of ``build_info.annotations``.

    Each entry takes four keys. ``storage`` is LISM output in GOAL's
    training-list format or a reference joint list. ``test_list`` is an
    evaluation list that LISM output is merged into, by image base name.
    ``images`` is the folder of the test images, and ``crops`` the folder of
    a reference list's crop folders. Entries without ``storage`` are left out. ``local_pairs.top_k``
    local items per image enter the gallery (1 by default, the best-scoring pair).
    """

    name = "goal_joint"
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/goal_joint/defaults.yaml")}

    @classmethod
    def is_configured(cls, cfg) -> bool:
        annotations = (cfg.get("build_info", None) or {}).get("annotations", None) or {}
        return any((entry or {}).get("storage", None) is not None for entry in annotations.values())

    def build_datasets(self):
        check_keys(self.config, DATASET_CONFIG_KEYS | {"map_k"}, f"datasets.{self.name}")
        check_keys(self.config.build_info, {"annotations"}, f"datasets.{self.name}.build_info")
        datasets = self.build()
        map_k = tuple(int(k) for k in self.config.get("map_k", None) or DEFAULT_MAP_K)
        for dataset in datasets.values():
            dataset.benchmark = self.name
            dataset.map_k = map_k
        return datasets

    def _entries(self) -> Dict[str, dict]:
        annotations = self.config.build_info.get("annotations", None) or {}
        entries = {}
        for split, entry in annotations.items():
            entry = entry or OmegaConf.create()
            check_keys(entry, JOINT_SPLIT_KEYS, f"datasets.{self.name}.build_info.annotations.{split}")
            if entry.get("storage", None) is None:
                logger.info("datasets.%s: split %s has no storage and is left out", self.name, split)
                continue
            entries[str(split)] = entry
        if not entries:
            raise ValueError(f"datasets.{self.name}.build_info.annotations has no split with a storage file; add e.g. docci_joint: {{storage: pairs.json, images: /data/docci/images}}")
        return entries

    def build(self):
        _, vis_eval, _, text_eval = self._processors()
        tokenizer = self._tokenizer()
        datasets = {}
        for split, entry in self._entries().items():
            items = self._items(split, entry, text_eval)
            datasets[split] = JointRetrievalDataset(items, vis_eval, tokenizer, source=f"{self.name}/{split}")
        return datasets

    def _items(self, split: str, entry, caption_processor) -> List[JointItem]:
        where = f"datasets.{self.name}.build_info.annotations.{split}"
        storage = os.path.abspath(os.path.expanduser(str(entry.storage)))
        images = _resolve_folder(entry.get("images", None), f"{where}.images")
        crops = _resolve_folder(entry.get("crops", None), f"{where}.crops")
        raw = read_json_list(storage)
        options = self._options(caption_processor, images)

        test_list = entry.get("test_list", None)
        if test_list is not None:
            raw = merge_test_list(read_json_list(os.path.abspath(os.path.expanduser(str(test_list)))), raw, storage)
        if test_list is not None or is_lism_format(raw):
            return items_from_lism(raw, storage, options)
        return items_from_reference_list(
            raw, storage, images, crops, caption_processor,
            check_files=options.check_images, skip_invalid_records=options.skip_invalid_records,
        )


# ----- zero-shot classification ----------------------------------------------------


class ZeroShotClassificationDataset(Dataset):
    """Images with class labels, and the prompts of every class.

    ``images`` holds ``(N, H, W, 3)`` uint8 arrays (CIFAR) or file paths;
    items are ``{"image", "label", "index"}``. ``prompts[c]`` lists the
    prompts of class ``c``; a classifier averages their text embeddings.
    """

    protocol = "classification"

    def __init__(self, images, labels: List[int], class_names: List[str], prompts: List[List[str]], vis_processor, source: str = ""):
        if len(images) != len(labels):
            raise ValueError(f"{source}: {len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.class_names = list(class_names)
        self.prompts = prompts
        self.vis_processor = vis_processor
        self.source = source
        logger.info("%s: %d images, %d classes, %d prompts per class", source, len(labels), len(class_names), len(prompts[0]))

    def __len__(self) -> int:
        return len(self.labels)

    def collater(self, samples):
        return default_collate(samples)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        image = self.images[index]
        image = open_image(image, index, self.source) if isinstance(image, str) else Image.fromarray(image)
        return {"image": self.vis_processor(image), "label": self.labels[index], "index": index}


class ClassificationBuilder(_SplitsMixin, GoalBuilderBase):
    """Zero-shot classification sets; ``templates`` picks the prompt set (see ``build_prompts``)."""

    parts = ("test",)
    build_info_keys = {"root", "splits"}

    def build_datasets(self):
        check_keys(self.config, DATASET_CONFIG_KEYS | {"templates", "topk"}, f"datasets.{self.name}")
        check_keys(self.config.build_info, self.build_info_keys, f"datasets.{self.name}.build_info")
        datasets = self.build()
        topk = tuple(int(k) for k in self.config.get("topk", None) or DEFAULT_TOPK)
        for dataset in datasets.values():
            dataset.benchmark = self.name
            dataset.topk = topk
        return datasets

    def read(self, part: str):
        raise NotImplementedError

    def build(self):
        _, vis_eval, _, _ = self._processors()
        templates = self.config.get("templates", "openai")
        templates = OmegaConf.to_container(templates) if OmegaConf.is_config(templates) else templates
        datasets = {}
        for split, part in self.splits().items():
            data = self.read(part)
            prompts = build_prompts(data.class_names, templates)
            datasets[split] = ZeroShotClassificationDataset(
                data.images, data.labels, data.class_names, prompts, vis_eval, source=f"{self.name}/{part} ({self.root()})"
            )
        return datasets


class _CifarBuilder(ClassificationBuilder):
    parts = ("test", "train")
    build_info_keys = {"root", "splits", "verify_checksums"}

    def read(self, part: str):
        verify = self.config.build_info.get("verify_checksums", True)
        return read_cifar(self.name, self.root(), part, verify_checksums=bool(verify))


@registry.register_builder("cifar10")
class Cifar10Builder(_CifarBuilder):
    """CIFAR-10 from torchvision's ``cifar-10-batches-py`` files in ``build_info.root``."""

    name = "cifar10"
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/cifar10/defaults.yaml")}


@registry.register_builder("cifar100")
class Cifar100Builder(_CifarBuilder):
    """CIFAR-100 (fine labels) from torchvision's ``cifar-100-python`` files in ``build_info.root``."""

    name = "cifar100"
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/cifar100/defaults.yaml")}


@registry.register_builder("imagenet_o")
class ImageNetOBuilder(ClassificationBuilder):
    """ImageNet-O's image folder; ``build_info.class_names`` names the WordNet-id to class name file."""

    name = "imagenet_o"
    build_info_keys = {"root", "splits", "class_names"}
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/imagenet_o/defaults.yaml")}

    def read(self, part: str):
        return read_imagenet_o(self.root(), self.config.build_info.get("class_names", None))
