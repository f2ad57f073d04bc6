"""Dataset builders registered with LAVIS: ``goal_json`` and ``goal_demo``.

The split named ``train`` becomes a ``GoalTrainDataset``; every other split
becomes a ``GoalRetrievalEvalDataset``. Relative paths in the config resolve
against the working directory, not LAVIS's cache folder.
"""

import logging
import os
from typing import Dict

from lavis.common.registry import registry
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from omegaconf import OmegaConf

from lavis_goal.common.config_check import check_keys
from lavis_goal.datasets.annotations import LoadOptions, load_records, parse_records
from lavis_goal.datasets.demo import demo_records
from lavis_goal.datasets.goal_datasets import GoalRetrievalEvalDataset, GoalTrainDataset
from lavis_goal.paths import plugin_config
from lavis_goal.processors import GoalCaptionProcessor, GoalImageEvalProcessor, GoalImageTrainProcessor
from lavis_goal.text_spans import SpanTokenizer

logger = logging.getLogger(__name__)

DATASET_CONFIG_KEYS = {
    "data_type", "build_info", "vis_processor", "text_processor", "local_pairs", "skip_invalid_records",
    "check_images", "tokenizer", "type", "load_local_pairs",
}
LOCAL_PAIR_KEYS = {"top_k", "min_score", "drop_whole_image"}
PROCESSOR_SPLIT_KEYS = {"train", "eval"}
# tokenizer.kind "open_clip" (the default) reads tokenizer.model_name, a CLIP BPE
# tokenizer. "bert" reads tokenizer.bert, the WordPiece vocabulary of BLIP-2's Q-Former.
TOKENIZER_KINDS = ("open_clip", "bert")
_TOKENIZERS: Dict[tuple, SpanTokenizer] = {}


def get_span_tokenizer(model_name: str, context_length: int) -> SpanTokenizer:
    key = (model_name, int(context_length))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = SpanTokenizer.from_open_clip(model_name, int(context_length))
    return _TOKENIZERS[key]


def get_bert_span_tokenizer(bert: str, context_length: int) -> SpanTokenizer:
    """Return the span tokenizer of a BLIP-2 Q-Former BERT (``bert-base-uncased``, ``goal-tiny-bert`` or a folder)."""
    from lavis_goal.models.blip2.backbones import build_bert_tokenizer

    key = ("bert", bert, int(context_length))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = SpanTokenizer.from_bert(build_bert_tokenizer(bert), int(context_length))
    return _TOKENIZERS[key]


class GoalBuilderBase(BaseDatasetBuilder):
    """Shared building logic; subclasses provide the raw records of each split."""

    name = "goal"

    def build_datasets(self):
        # LAVIS's default downloads annotations into its cache; these builders
        # read the user's files in place.
        check_keys(self.config, DATASET_CONFIG_KEYS, f"datasets.{self.name}")
        return self.build()

    def _processors(self):
        vis_cfg = self.config.get("vis_processor", OmegaConf.create())
        text_cfg = self.config.get("text_processor", OmegaConf.create())
        check_keys(vis_cfg, PROCESSOR_SPLIT_KEYS, f"datasets.{self.name}.vis_processor")
        check_keys(text_cfg, PROCESSOR_SPLIT_KEYS, f"datasets.{self.name}.text_processor")
        vis_train = self._processor(vis_cfg, "vis_processor", "train", GoalImageTrainProcessor, "goal_image_train")
        vis_eval = self._processor(vis_cfg, "vis_processor", "eval", GoalImageEvalProcessor, "goal_image_eval")
        text_train = self._processor(text_cfg, "text_processor", "train", GoalCaptionProcessor, "goal_caption")
        text_eval = self._processor(text_cfg, "text_processor", "eval", GoalCaptionProcessor, "goal_caption")
        return vis_train, vis_eval, text_train, text_eval

    def _processor(self, section, section_name: str, split: str, processor_cls, expected_name: str):
        # The datasets always use the box-aware GOAL processors. Another
        # processor name would be silently ignored, so it is rejected.
        cfg = section.get(split, None)
        name = cfg.get("name", None) if cfg is not None else None
        if name is not None and name != expected_name:
            raise ValueError(
                f"datasets.{self.name}.{section_name}.{split}.name is {name!r}, but the {self.name} datasets "
                f"only work with {expected_name!r}; set name: {expected_name} or remove the key"
            )
        return processor_cls.from_config(cfg)

    def _tokenizer(self) -> SpanTokenizer:
        cfg = self.config.get("tokenizer", None)
        kind = cfg.get("kind", "open_clip") if cfg is not None else "open_clip"
        if kind not in TOKENIZER_KINDS:
            raise ValueError(f"datasets.{self.name}.tokenizer.kind is {kind!r}; use one of {', '.join(TOKENIZER_KINDS)}")
        if kind == "bert":
            return get_bert_span_tokenizer(str(cfg.get("bert", "bert-base-uncased")), int(cfg.get("context_length", 512)))
        if cfg is None or cfg.get("model_name", None) is None:
            raise ValueError(
                f"datasets.{self.name}.tokenizer.model_name is not set; the goal_retrieval task fills it from "
                "the model config, so build datasets through the task or set it yourself"
            )
        return get_span_tokenizer(cfg.model_name, int(cfg.get("context_length", 248)))

    def _options(self, caption_processor, image_root) -> LoadOptions:
        pairs = self.config.get("local_pairs", OmegaConf.create())
        check_keys(pairs, LOCAL_PAIR_KEYS, f"datasets.{self.name}.local_pairs")
        return LoadOptions(
            image_root=image_root,
            skip_invalid_records=bool(self.config.get("skip_invalid_records", False)),
            top_k=int(pairs.get("top_k", 1)),
            min_score=pairs.get("min_score", None),
            drop_whole_image=bool(pairs.get("drop_whole_image", True)),
            check_images=bool(self.config.get("check_images", True)),
            caption_processor=caption_processor,
        )

    def split_records(self, split: str, options: LoadOptions):
        raise NotImplementedError

    def split_names(self):
        raise NotImplementedError

    def build(self):
        vis_train, vis_eval, text_train, text_eval = self._processors()
        tokenizer = self._tokenizer()
        datasets = {}
        for split in self.split_names():
            is_train = split == "train"
            options = self._options(text_train if is_train else text_eval, self.image_root())
            records, source = self.split_records(split, options)
            if is_train:
                datasets[split] = GoalTrainDataset(
                    records, vis_train, vis_eval, tokenizer, options.top_k, source=source,
                    load_local=bool(self.config.get("load_local_pairs", True)),
                )
            else:
                datasets[split] = GoalRetrievalEvalDataset(records, vis_eval, tokenizer, source=source)
        return datasets

    def image_root(self):
        return None


@registry.register_builder("goal_json")
class GoalJsonBuilder(GoalBuilderBase):
    """Annotation lists in GOAL's reference formats, one JSON file per split."""

    name = "goal_json"
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/goal_json/defaults.yaml")}

    def split_names(self):
        annotations = self.config.build_info.get("annotations", None)
        if not annotations:
            raise ValueError(f"datasets.{self.name}.build_info.annotations lists no split; add e.g. train: {{storage: train.json}}")
        return list(annotations.keys())

    def image_root(self):
        check_keys(self.config.build_info, {"annotations", "images"}, f"datasets.{self.name}.build_info")
        images = self.config.build_info.get("images", None)
        if images is not None:
            check_keys(images, {"storage"}, f"datasets.{self.name}.build_info.images")
        root = images.get("storage", None) if images is not None else None
        if root is None:
            return None
        root = os.path.abspath(os.path.expanduser(str(root)))
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Image root {root} (datasets.{self.name}.build_info.images.storage) is not a folder")
        return root

    def split_records(self, split, options):
        storage = self.config.build_info.annotations[split].get("storage", None)
        if storage is None:
            raise ValueError(f"datasets.{self.name}.build_info.annotations.{split}.storage is not set")
        paths = [storage] if isinstance(storage, str) else list(storage)
        records = []
        for path in paths:
            path = os.path.abspath(os.path.expanduser(str(path)))
            part, _ = load_records(path, options)
            records.extend(part)
        return records, f"{self.name}/{split} ({', '.join(map(str, paths))})"


@registry.register_builder("goal_demo")
class GoalDemoBuilder(GoalBuilderBase):
    """About 20 photos shipped by scikit-image and matplotlib, with hand-written long captions.

    Splits: ``train`` (training images with hand-made local pairs), ``val``
    (the training images as a retrieval set, to watch the fit) and ``test``
    (held-out images).
    """

    name = "goal_demo"
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/goal_demo/defaults.yaml")}

    def split_names(self):
        return list(self.config.build_info.get("splits", ["train", "val", "test"]))

    def split_records(self, split, options):
        source_split = "train" if split in ("train", "val") else split
        raw, path = demo_records(source_split)
        records, _ = parse_records(raw, path, options)
        return records, f"{self.name}/{split}"
