"""Image and text processors for long captions and box-aware transforms.

``goal_image_eval`` is CLIP's preprocessing: bicubic resize of the short
side, centre crop, CLIP mean and std. ``goal_image_train`` adds optional
random resized crop and horizontal flip, and can return the boxes of local
regions mapped through the exact transform it applied. ``goal_caption``
keeps the whole caption (LAVIS's ``blip_caption`` cuts at 50 words).
"""

import random
import re
from typing import Optional, Tuple

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from lavis.common.registry import registry
from lavis.processors.base_processor import BaseProcessor
from omegaconf import OmegaConf
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from lavis_goal.common.config_check import check_keys
from lavis_goal.geometry import resize_center_crop_step, resized_crop_step, transform_boxes


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert grayscale, palette, 16-bit and RGBA images to 8-bit RGB; alpha is dropped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Integer gray above 8 bits: scale by the image's peak instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = max(float(array.max()), 1.0)
        image = Image.fromarray(np.round(array / peak * 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


class _ClipImageBase(BaseProcessor):
    CONFIG_KEYS = {"name", "image_size", "mean", "std"}

    def __init__(self, image_size: int = 224, mean=None, std=None):
        super().__init__()
        self.image_size = int(image_size)
        self.normalize = T.Normalize(
            mean if mean is not None else OPENAI_DATASET_MEAN,
            std if std is not None else OPENAI_DATASET_STD,
        )

    def _finish(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(TF.to_tensor(image))

    def eval_transform(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)
        image = TF.resize(image, self.image_size, interpolation=T.InterpolationMode.BICUBIC)
        image = TF.center_crop(image, self.image_size)
        return self._finish(image)


@registry.register_processor("goal_image_eval")
class GoalImageEvalProcessor(_ClipImageBase):
    """CLIP evaluation preprocessing; ``transform_with_boxes`` also maps boxes."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.eval_transform(image)

    def transform_with_boxes(self, image: Image.Image, boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(image_tensor, boxes_in_input_pixels, valid)`` for ``(K, 4)`` boxes in original pixels."""
        step = resize_center_crop_step(image.width, image.height, self.image_size)
        boxes_out, valid = transform_boxes(boxes, step)
        return self.eval_transform(image), boxes_out, valid

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        check_keys(cfg, cls.CONFIG_KEYS, "vis_processor (goal_image_eval)")
        return cls(image_size=cfg.get("image_size", 224), mean=cfg.get("mean", None), std=cfg.get("std", None))


@registry.register_processor("goal_image_train")
class GoalImageTrainProcessor(_ClipImageBase):
    """Training preprocessing: CLIP's by default, random resized crop and flip as options.

    Args:
        random_resized_crop: sample a crop of ``scale`` of the image area (GOAL's recipe uses none).
        scale: area range for the random crop.
        hflip_prob: probability of a horizontal flip. Sentences that say "left"
            or "right" no longer match a flipped image, so the default is 0.
    """

    CONFIG_KEYS = _ClipImageBase.CONFIG_KEYS | {"random_resized_crop", "scale", "hflip_prob"}

    def __init__(self, image_size=224, mean=None, std=None, random_resized_crop=False, scale=(0.5, 1.0), hflip_prob=0.0):
        super().__init__(image_size, mean, std)
        self.random_resized_crop = random_resized_crop
        self.scale = tuple(scale)
        self.hflip_prob = float(hflip_prob)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        tensor, _, _ = self.transform_with_boxes(image, torch.zeros(0, 4))
        return tensor

    def transform_with_boxes(self, image: Image.Image, boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(image_tensor, boxes_in_input_pixels, valid)`` for ``(K, 4)`` boxes in original pixels."""
        image = to_rgb(image)
        flip = random.random() < self.hflip_prob
        if self.random_resized_crop:
            top, left, height, width = T.RandomResizedCrop.get_params(image, self.scale, (3 / 4, 4 / 3))
            step = resized_crop_step(top, left, height, width, self.image_size, hflip=flip)
            out = TF.resized_crop(image, top, left, height, width, [self.image_size, self.image_size],
                                  interpolation=T.InterpolationMode.BICUBIC)
        else:
            step = resize_center_crop_step(image.width, image.height, self.image_size)
            step = type(step)(**{**step.__dict__, "hflip": flip})
            out = TF.center_crop(TF.resize(image, self.image_size, interpolation=T.InterpolationMode.BICUBIC), self.image_size)
        if flip:
            out = TF.hflip(out)
        boxes_out, valid = transform_boxes(boxes, step)
        return self._finish(out), boxes_out, valid

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        check_keys(cfg, cls.CONFIG_KEYS, "vis_processor (goal_image_train)")
        return cls(
            image_size=cfg.get("image_size", 224),
            mean=cfg.get("mean", None),
            std=cfg.get("std", None),
            random_resized_crop=bool(cfg.get("random_resized_crop", False)),
            scale=tuple(cfg.get("scale", (0.5, 1.0))),
            hflip_prob=cfg.get("hflip_prob", 0.0),
        )


@registry.register_processor("goal_caption")
class GoalCaptionProcessor(BaseProcessor):
    """Keep the whole caption: strip it and collapse runs of whitespace to one space.

    Args:
        prompt: text put before every caption.
        max_words: cut after this many words; None (the default) keeps all.
    """

    CONFIG_KEYS = {"name", "prompt", "max_words"}

    def __init__(self, prompt: str = "", max_words: Optional[int] = None):
        super().__init__()
        self.prompt = prompt
        self.max_words = max_words

    def __call__(self, caption: str) -> str:
        caption = re.sub(r"\s+", " ", caption).strip()
        if self.max_words is not None:
            caption = " ".join(caption.split(" ")[: self.max_words])
        return self.prompt + caption

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        check_keys(cfg, cls.CONFIG_KEYS, "text_processor (goal_caption)")
        max_words = cfg.get("max_words", None)
        return cls(prompt=cfg.get("prompt", ""), max_words=int(max_words) if max_words is not None else None)
