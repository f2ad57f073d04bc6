import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from lavis_goal.geometry import (
    box_iou,
    boxes_to_patch_mask,
    resize_center_crop_step,
    resized_crop_step,
    resized_size,
    transform_boxes,
)
from lavis_goal.processors import GoalImageEvalProcessor, GoalImageTrainProcessor


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (333, 500), (224, 224), (1000, 227), (225, 1601)])
def test_resized_size_matches_torchvision(size):
    image = Image.new("RGB", size)
    resized = T.Resize(224)(image)
    assert resized_size(*size, 224) == resized.size


def _painted(width, height, box):
    """A black image with a white rectangle at ``box`` (original pixels)."""
    image = Image.new("L", (width, height), 0)
    image.paste(255, tuple(int(v) for v in box))
    return image.convert("RGB")


@pytest.mark.parametrize(
    "size,box",
    [((640, 480), (100, 50, 300, 200)), ((480, 640), (40, 300, 200, 600)), ((500, 333), (0, 0, 120, 90))],
)
def test_box_follows_resize_and_center_crop(size, box):
    """The mapped box must land where the painted rectangle lands in the transformed image."""
    processor = GoalImageEvalProcessor(image_size=224)
    image = _painted(*size, box)
    step = resize_center_crop_step(*size, 224)
    mapped, valid = transform_boxes(torch.tensor([box], dtype=torch.float32), step)
    transformed = T.CenterCrop(224)(T.Resize(224, interpolation=T.InterpolationMode.NEAREST)(image))
    white = torch.nonzero(torch.from_numpy(np.array(transformed.convert("L"))) > 127)
    y_min, x_min = white.min(0).values.tolist()
    y_max, x_max = white.max(0).values.tolist()

    assert bool(valid[0])
    x1, y1, x2, y2 = mapped[0].tolist()
    assert abs(x1 - x_min) <= 1.5
    assert abs(y1 - y_min) <= 1.5
    assert abs(x2 - (x_max + 1)) <= 1.5
    assert abs(y2 - (y_max + 1)) <= 1.5
    # The processor reports the same boxes.
    _, processor_boxes, _ = processor.transform_with_boxes(image, torch.tensor([box], dtype=torch.float32))
    assert torch.allclose(processor_boxes, mapped)


def test_box_cropped_away_is_invalid():
    # A 448x224 image: the centre crop keeps x in [112, 336); a box at x < 100 vanishes.
    step = resize_center_crop_step(448, 224, 224)
    mapped, valid = transform_boxes(torch.tensor([[0.0, 0.0, 100.0, 50.0], [100.0, 0.0, 200.0, 50.0]]), step)
    assert not bool(valid[0])
    assert bool(valid[1])
    assert mapped[1].tolist() == pytest.approx([0.0, 0.0, 88.0, 50.0])


def test_hflip_mirrors_box():
    step = resize_center_crop_step(224, 224, 224)
    flipped = type(step)(**{**step.__dict__, "hflip": True})
    mapped, _ = transform_boxes(torch.tensor([[10.0, 20.0, 50.0, 60.0]]), flipped)
    assert mapped[0].tolist() == pytest.approx([174.0, 20.0, 214.0, 60.0])


def test_resized_crop_step_maps_crop_corners():
    step = resized_crop_step(top=100, left=50, crop_height=200, crop_width=400, image_size=224)
    mapped, valid = transform_boxes(torch.tensor([[50.0, 100.0, 450.0, 300.0]]), step)
    assert bool(valid[0])
    assert mapped[0].tolist() == pytest.approx([0.0, 0.0, 224.0, 224.0])


def test_train_processor_random_crop_keeps_box_on_content():
    torch.manual_seed(0)
    processor = GoalImageTrainProcessor(image_size=224, random_resized_crop=True, scale=(0.6, 1.0), hflip_prob=0.5)
    image = _painted(400, 300, (150, 100, 250, 200))
    for _ in range(5):
        tensor, boxes, valid = processor.transform_with_boxes(image, torch.tensor([[150.0, 100.0, 250.0, 200.0]]))
        if not bool(valid[0]):
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[0].tolist())
        inside = tensor[:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
        if inside.numel():
            # Inside the box the image is white: the largest normalized value of each channel.
            assert float(inside.min()) > 1.0


@pytest.mark.parametrize(
    "image_size,patch,box,expected_cells",
    [
        # ViT-B/16: a 14x14 grid of 16-pixel cells.
        (224, 16, (0, 0, 16, 16), {(0, 0)}),
        (224, 16, (0, 0, 16.5, 16), {(0, 0), (0, 1)}),
        (224, 16, (15.9, 15.9, 16.1, 16.1), {(0, 0), (0, 1), (1, 0), (1, 1)}),
        (224, 16, (208, 208, 224, 224), {(13, 13)}),
        # ViT-L/14: a 16x16 grid of 14-pixel cells.
        (224, 14, (14, 28, 42, 42), {(2, 1), (2, 2)}),
        (224, 14, (0, 0, 224, 14), {(0, c) for c in range(16)}),
        # ViT-L/14 at 336 px: 24x24 cells.
        (336, 14, (322, 0, 336, 1), {(0, 23)}),
    ],
)
def test_patch_mask_cells(image_size, patch, box, expected_cells):
    mask = boxes_to_patch_mask(torch.tensor([box], dtype=torch.float32), (image_size, image_size), (patch, patch))
    grid = image_size // patch
    assert mask.shape == (1, grid * grid)
    cells = {(i // grid, i % grid) for i in torch.nonzero(mask[0]).flatten().tolist()}
    assert cells == expected_cells


def test_patch_mask_empty_box_selects_nothing():
    mask = boxes_to_patch_mask(torch.tensor([[30.0, 30.0, 30.0, 60.0]]), (224, 224), (16, 16))
    assert not bool(mask.any())


@pytest.mark.parametrize("patch", [16, 14])
def test_patch_mask_after_transform_covers_painted_region(patch):
    """End to end: box in original pixels -> transform -> mask covers the painted patches."""
    box = (120, 80, 360, 300)
    image = _painted(640, 480, box)
    processor = GoalImageEvalProcessor(image_size=224)
    tensor, boxes, valid = processor.transform_with_boxes(image, torch.tensor([box], dtype=torch.float32))
    mask = boxes_to_patch_mask(boxes, (224, 224), (patch, patch))[0]
    grid = 224 // patch
    cells = tensor.mean(0).unfold(0, patch, patch).unfold(1, patch, patch).amax((-1, -2))  # (grid, grid)
    painted = (cells > 0.5).flatten()
    assert bool(valid[0])
    assert torch.equal(mask, painted), f"mask and painted cells differ on a {grid}x{grid} grid"


@pytest.mark.parametrize("a, b, expected", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),
    ((0, 0, 10, 10), (5, 0, 15, 10), 1 / 3),
    ((0, 0, 10, 10), (2, 2, 4, 4), 0.04),
    ((3, 3, 3, 3), (3, 3, 3, 3), 0.0),
])
def test_box_iou_cases(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected)
