import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lavis_goal.lism.proposers import (
    FelzenszwalbProposer, SamProposer, SpatialProposer, build_proposer, downscale, mask_to_box, masks_to_boxes,
    merge_segments, scale_boxes,
)
from lavis_goal.lism.runner import region_boxes


def test_mask_to_box_is_tight_and_exclusive():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:7] = True
    mask[8, 1] = True
    assert mask_to_box(mask) == (1, 2, 7, 9)
    assert mask_to_box(np.zeros((4, 4), dtype=bool)) is None


@settings(max_examples=100, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 9))))
def test_masks_to_boxes_matches_single_masks(masks):
    boxes = masks_to_boxes(masks)
    for mask, box in zip(masks, boxes):
        single = mask_to_box(mask)
        if single is None:
            assert box.tolist() == [0, 0, 0, 0]
            continue
        assert tuple(box.tolist()) == single
        x1, y1, x2, y2 = single
        # The box contains every mask pixel, and each edge row or column contains at least one.
        assert mask[y1:y2, x1:x2].sum() == mask.sum()
        assert mask[y1, x1:x2].any()
        assert mask[y2 - 1, x1:x2].any()
        assert mask[y1:y2, x1].any()
        assert mask[y1:y2, x2 - 1].any()


def test_spatial_quadrants_and_centre():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    boxes = SpatialProposer().propose(image)
    assert boxes == [(0, 0, 100, 50), (100, 0, 200, 50), (0, 50, 100, 100), (100, 50, 200, 100), (50, 25, 150, 75)]


def test_whole_image_is_always_first_candidate():
    image = np.zeros((1, 1, 3), dtype=np.uint8)
    # A 1 x 1 image has no quadrants; the whole image stays.
    assert region_boxes(image, SpatialProposer()) == [(0, 0, 1, 1)]
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    assert region_boxes(image, SpatialProposer())[0] == (0, 0, 60, 40)


def scene(height=120, width=160):
    """A dark background with a red and a blue rectangle at known boxes."""
    image = np.full((height, width, 3), 20, dtype=np.uint8)
    image[10:50, 20:70] = (220, 30, 30)
    image[60:110, 90:150] = (30, 40, 220)
    return image, [(20, 10, 70, 50), (90, 60, 150, 110)]


def test_felzenszwalb_finds_the_objects():
    image, truth = scene()
    # sigma=0: no smoothing, so the segments are exactly the background and the two rectangles.
    boxes = FelzenszwalbProposer(max_regions=3, sigma=0.0, min_size=20).propose(image)
    for box in truth:
        assert box in boxes
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 <= 160
        assert 0 <= y1 < y2 <= 120


def test_felzenszwalb_boxes_scale_to_original_pixels():
    small, truth = scene()
    image = small.repeat(4, axis=0).repeat(4, axis=1)  # 480 x 640, rectangles at 4x the boxes
    truth = [tuple(4 * v for v in box) for box in truth]
    boxes = FelzenszwalbProposer(max_regions=3, sigma=0.0, min_size=20, working_size=160).propose(image)
    for box in truth:
        # Segmented at a quarter of the size: each side within one working pixel (4 px) of the truth.
        assert any(max(abs(a - b) for a, b in zip(found, box)) <= 4 for found in boxes), (box, boxes)


def test_felzenszwalb_area_filter():
    image, _ = scene()
    # The rectangles cover 10% and 16% of the image, the background 74%.
    boxes = FelzenszwalbProposer(max_regions=3, sigma=0.0, min_size=20, min_area=0.2, max_area=0.8).propose(image)
    assert boxes == [(0, 0, 160, 120)]
    boxes = FelzenszwalbProposer(max_regions=3, sigma=0.0, min_size=20, min_area=0.05, max_area=0.2).propose(image)
    assert sorted(boxes) == sorted([(20, 10, 70, 50), (90, 60, 150, 110)])


def test_merge_segments_caps_count_and_keeps_large_segments():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, size=(30, 30))
    labels[:15, :15] = 99  # one large segment
    merged = merge_segments(labels, 5)
    assert merged.max() + 1 <= 5
    assert merged.min() == 0
    # Merging only joins segments: a pixel pair with one label before still shares a label after.
    block = merged[:15, :15]
    assert (block == block[0, 0]).all()
    assert merge_segments(labels, 1000).max() + 1 == len(np.unique(labels))


def test_downscale_and_scale_back():
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    small, factor = downscale(image, 100)
    assert small.shape[:2] == (75, 100)
    assert factor == pytest.approx(4.0)
    assert scale_boxes(np.array([[0, 0, 100, 75]]), factor, 400, 300) == [(0, 0, 400, 300)]
    same, one = downscale(image, 1000)
    assert same is image
    assert one == 1.0


def test_unknown_proposer_and_bad_options():
    with pytest.raises(ValueError, match="Unknown region proposer 'grid'"):
        build_proposer("grid")
    with pytest.raises(ValueError, match="min_area"):
        FelzenszwalbProposer(min_area=0.9, max_area=0.5)
    with pytest.raises(ValueError, match="max_regions"):
        FelzenszwalbProposer(max_regions=0)


def test_sam_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ImportError, match=r"pip install 'lavis-goal\[sam\]'"):
        SamProposer(checkpoint="sam.pth")


def test_sam_checkpoint_missing(tmp_path):
    pytest.importorskip("segment_anything", reason="segment-anything is not installed (pip install 'lavis-goal[sam]')")
    with pytest.raises(FileNotFoundError, match="--sam-checkpoint"):
        SamProposer(checkpoint=None)
    with pytest.raises(FileNotFoundError, match="not found"):
        SamProposer(checkpoint=str(tmp_path / "sam_vit_b.pth"), model_type="vit_b")
    with pytest.raises(ValueError, match="Unknown SAM model type"):
        SamProposer(checkpoint=str(tmp_path / "sam.pth"), model_type="vit_x")


def tiny_sam(seed=3):
    """A randomly initialised SAM with a 64-pixel, one-block image encoder (about 75 k parameters).

    The mask decoder's two transposed convolutions copy channels, so each
    mask is a union of whole 4 x 4-pixel cells instead of random speckle.
    With seed 3, several masks of ``scene(96, 128)`` are smaller than the image.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    size, patch, dim = 64, 16, 32
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=dim, depth=1, num_heads=2,
                                      out_chans=dim, window_size=0, global_attn_indexes=()),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2)),
    )
    with torch.no_grad():
        for layer in sam.mask_decoder.output_upscaling:
            if isinstance(layer, torch.nn.ConvTranspose2d):
                layer.weight.zero_()
                layer.bias.zero_()
                for channel in range(layer.weight.shape[1]):
                    layer.weight[channel, channel] = 1.0
    return sam.eval()


def test_sam_boxes_come_from_masks():
    pytest.importorskip("segment_anything", reason="segment-anything is not installed (pip install 'lavis-goal[sam]')")
    image, _ = scene(96, 128)
    options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    proposer = SamProposer(model=tiny_sam(), working_size=64, generator_options=options)
    boxes = proposer.propose(image)

    # The same masks, boxed by SAM's own code (inclusive ends, XYWH), filtered and scaled here.
    small, factor = downscale(image, 64)
    assert factor == 2.0
    expected = []
    annotations = sorted(proposer.generator.generate(small), key=lambda a: -a["area"])
    for annotation in annotations:
        if not 0.01 <= annotation["area"] / small.shape[0] / small.shape[1] <= 0.8:
            continue
        x, y, w, h = annotation["bbox"]
        box = (int(x) * 2, int(y) * 2, min(128, int(x + w + 1) * 2), min(96, int(y + h + 1) * 2))
        if box not in expected:
            expected.append(box)
    assert boxes == expected
    assert any(box != (0, 0, 128, 96) for box in boxes)
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 <= 128
        assert 0 <= y1 < y2 <= 96

    settings_ = proposer.settings()
    assert settings_["name"] == "sam"
    assert settings_["min_area"] == 0.01
    assert settings_["max_area"] == 0.8


def test_sam_area_filter_can_drop_everything():
    pytest.importorskip("segment_anything", reason="segment-anything is not installed (pip install 'lavis-goal[sam]')")
    image, _ = scene(96, 128)
    options = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    proposer = SamProposer(model=tiny_sam(), working_size=64, min_area=0.0, max_area=0.001, generator_options=options)
    assert proposer.propose(image) == []
