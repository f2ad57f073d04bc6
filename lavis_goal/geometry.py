"""Box geometry: from original pixels through the image transform to patch masks.

Boxes are ``(x1, y1, x2, y2)`` float tensors of shape ``(..., 4)`` in pixel
coordinates with the origin at the top-left corner, x to the right and y down.
A box covers the continuous area ``[x1, x2) x [y1, y2)``.
"""

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch


@dataclass(frozen=True)
class ResizeCrop:
    """One geometric step of an image transform: scale, then crop.

    A resize by ``(scale_x, scale_y)`` followed by a crop whose top-left
    corner is ``(left, top)`` in the resized image and whose size is
    ``(width, height)``. Horizontal flip is applied after the crop.
    """

    scale_x: float
    scale_y: float
    left: float
    top: float
    width: float
    height: float
    hflip: bool = False


def resized_size(width: int, height: int, short_side: int) -> Tuple[int, int]:
    """Return ``(new_width, new_height)`` after resizing the short side to ``short_side``.

    Matches ``torchvision.transforms.Resize(int)``: the long side is truncated
    to an integer, not rounded.
    """
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def center_crop_offset(width: int, height: int, crop_width: int, crop_height: int) -> Tuple[int, int]:
    """Return the ``(left, top)`` offset used by ``torchvision``'s ``center_crop``."""
    left = int(round((width - crop_width) / 2.0))
    top = int(round((height - crop_height) / 2.0))
    return left, top


def resize_center_crop_step(width: int, height: int, image_size: int) -> ResizeCrop:
    """Describe CLIP's evaluation transform (resize short side, centre crop) for one image."""
    new_width, new_height = resized_size(width, height, image_size)
    left, top = center_crop_offset(new_width, new_height, image_size, image_size)
    return ResizeCrop(
        scale_x=new_width / width,
        scale_y=new_height / height,
        left=left,
        top=top,
        width=image_size,
        height=image_size,
    )


def resized_crop_step(
    top: int, left: int, crop_height: int, crop_width: int, image_size: int, hflip: bool = False
) -> ResizeCrop:
    """Describe ``torchvision``'s ``resized_crop`` (crop in original pixels, then resize).

    The crop is expressed as a scale of the whole image followed by a crop, so
    boxes go through the same arithmetic as for ``resize_center_crop_step``.
    """
    scale_x = image_size / crop_width
    scale_y = image_size / crop_height
    return ResizeCrop(
        scale_x=scale_x,
        scale_y=scale_y,
        left=left * scale_x,
        top=top * scale_y,
        width=image_size,
        height=image_size,
        hflip=hflip,
    )


def transform_boxes(boxes: torch.Tensor, step: ResizeCrop) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map boxes from original pixels to the transformed image.

    Args:
        boxes: ``(..., 4)`` boxes in original pixels.
        step: the transform that was applied to the image.

    Returns:
        ``(boxes_out, valid)``: ``boxes_out`` of shape ``(..., 4)`` clipped to
        the output image, and ``valid`` of shape ``(...,)``, False where the box
        has no area left inside the output image.
    """
    boxes = boxes.to(torch.float64)
    x1 = boxes[..., 0] * step.scale_x - step.left
    y1 = boxes[..., 1] * step.scale_y - step.top
    x2 = boxes[..., 2] * step.scale_x - step.left
    y2 = boxes[..., 3] * step.scale_y - step.top

    x1 = x1.clamp(0, step.width)
    x2 = x2.clamp(0, step.width)
    y1 = y1.clamp(0, step.height)
    y2 = y2.clamp(0, step.height)
    if step.hflip:
        x1, x2 = step.width - x2, step.width - x1

    out = torch.stack([x1, y1, x2, y2], dim=-1).to(torch.float32)
    valid = (x2 > x1) & (y2 > y1)
    return out, valid


def boxes_to_patch_mask(
    boxes: torch.Tensor, image_size: Tuple[int, int], patch_size: Tuple[int, int]
) -> torch.Tensor:
    """Mark the patches whose cells overlap each box with positive area.

    Args:
        boxes: ``(..., 4)`` boxes in the model's input pixels (after the transform).
        image_size: ``(height, width)`` of the model input.
        patch_size: ``(height, width)`` of one patch, 16 for ViT-B/16, 14 for ViT-L/14.

    Returns:
        Bool tensor ``(..., grid_h * grid_w)`` in the row-major order of the
        ViT's patch tokens. A box with no area gives an all-False mask.
    """
    grid_h = image_size[0] // patch_size[0]
    grid_w = image_size[1] // patch_size[1]
    device = boxes.device
    cell_x0 = torch.arange(grid_w, device=device, dtype=torch.float32) * patch_size[1]
    cell_y0 = torch.arange(grid_h, device=device, dtype=torch.float32) * patch_size[0]
    cell_x1 = cell_x0 + patch_size[1]
    cell_y1 = cell_y0 + patch_size[0]

    boxes = boxes.to(torch.float32)
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))
    cols = (cell_x0 < x2) & (cell_x1 > x1)  # (..., grid_w)
    rows = (cell_y0 < y2) & (cell_y1 > y1)  # (..., grid_h)
    has_area = ((x2 > x1) & (y2 > y1))[..., None]  # (..., 1, 1)
    mask = rows[..., :, None] & cols[..., None, :] & has_area  # (..., grid_h, grid_w)
    return mask.flatten(-2)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Return the intersection over union of two ``(x1, y1, x2, y2)`` boxes, or 0 when their union is empty."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
