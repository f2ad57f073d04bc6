"""Region proposers for LISM: candidate boxes of an image, in its own pixels.

Every proposer takes an ``(H, W, 3)`` uint8 RGB array and returns boxes
``(x1, y1, x2, y2)`` as integers with exclusive ends, so ``image[y1:y2, x1:x2]``
is the region. The whole image is not among them: the miner always adds it as
the first candidate. Masks become boxes directly (``mask_to_box``), never by
searching for a saved crop in the image.

- ``spatial``: the four quadrants and a centre box of half the width and height.
- ``felzenszwalb``: scikit-image's graph segmentation at a reduced working size,
  segments merged smallest-first into their neighbours until at most
  ``max_regions`` are left.
- ``sam``: Segment Anything's automatic mask generator (the ``segment-anything``
  package and a checkpoint from the user).

The mask-based proposers keep masks covering ``min_area`` to ``max_area`` of
the image (1% to 80% by default).
"""

import heapq
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

Box = Tuple[int, int, int, int]

DEFAULT_MIN_AREA = 0.01
DEFAULT_MAX_AREA = 0.8
SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b")


def mask_to_box(mask: np.ndarray) -> Optional[Box]:
    """Return the tight ``(x1, y1, x2, y2)`` box of a ``(H, W)`` boolean mask, ends exclusive; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Return ``(N, 4)`` int64 tight boxes of ``(N, H, W)`` boolean masks; empty masks give zero boxes."""
    masks = np.asarray(masks, dtype=bool)
    boxes = np.zeros((masks.shape[0], 4), dtype=np.int64)
    if masks.shape[0] == 0:
        return boxes
    rows = masks.any(axis=2)  # (N, H)
    cols = masks.any(axis=1)  # (N, W)
    nonempty = rows.any(axis=1)
    height, width = masks.shape[1:]
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = width - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = height - rows[:, ::-1].argmax(axis=1)
    boxes[~nonempty] = 0
    return boxes


def whole_image_box(width: int, height: int) -> Box:
    return 0, 0, int(width), int(height)


def unique_boxes(boxes: Sequence[Box]) -> List[Box]:
    """Drop empty boxes and repeats, keeping the first occurrence's order."""
    seen = set()
    kept = []
    for box in boxes:
        box = tuple(int(v) for v in box)
        if box[2] <= box[0] or box[3] <= box[1] or box in seen:
            continue
        seen.add(box)
        kept.append(box)
    return kept


def downscale(image: np.ndarray, max_side: Optional[int]) -> Tuple[np.ndarray, float]:
    """Shrink ``image`` so its longer side is at most ``max_side``; return it and the factor to original pixels."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image, 1.0
    factor = max(height, width) / float(max_side)
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.BOX))
    return small, width / float(size[0])


def scale_boxes(boxes: np.ndarray, factor: float, width: int, height: int) -> List[Box]:
    """Map boxes from a downscaled working image to original pixels, rounding outwards and clipping."""
    scaled = []
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        scaled.append((
            max(0, int(math.floor(x1 * factor))),
            max(0, int(math.floor(y1 * factor))),
            min(width, int(math.ceil(x2 * factor))),
            min(height, int(math.ceil(y2 * factor))),
        ))
    return scaled


def _check_area_range(min_area: float, max_area: float) -> None:
    if not 0.0 <= min_area < max_area <= 1.0:
        raise ValueError(
            f"The mask area range must satisfy 0 <= min_area < max_area <= 1 (fractions of the image), "
            f"got min_area={min_area}, max_area={max_area}"
        )


class RegionProposer:
    """Interface of the proposers: ``propose(image) -> list of boxes``.

    A proposer with ``uses_model_device`` runs a network, so the miner calls
    ``propose`` in the main process on the model's device. Other proposers
    run in the image-decoding workers.
    """

    name = "base"
    uses_model_device = False

    def propose(self, image: np.ndarray) -> List[Box]:
        raise NotImplementedError

    def settings(self) -> Dict:
        """Return the options that change the proposals (stored with the results to detect changed settings)."""
        return {"name": self.name}

    def to(self, device) -> "RegionProposer":
        return self


class SpatialProposer(RegionProposer):
    """The four quadrants and a centre box of half the image's width and height."""

    name = "spatial"

    def propose(self, image: np.ndarray) -> List[Box]:
        height, width = image.shape[:2]
        half_w, half_h = width // 2, height // 2
        quarter_w, quarter_h = width // 4, height // 4
        boxes = [
            (0, 0, half_w, half_h),
            (half_w, 0, width, half_h),
            (0, half_h, half_w, height),
            (half_w, half_h, width, height),
            (quarter_w, quarter_h, quarter_w + half_w, quarter_h + half_h),
        ]
        return unique_boxes(boxes)


class FelzenszwalbProposer(RegionProposer):
    """Felzenszwalb-Huttenlocher graph segmentation merged down to ``max_regions`` boxes.

    Args:
        max_regions: segments left after merging; each becomes one box.
        scale, sigma, min_size: ``skimage.segmentation.felzenszwalb`` options,
            applied at the working size.
        working_size: longer side, in pixels, that the image is shrunk to
            before segmenting. Boxes are scaled back to original pixels,
            rounded outwards.
        min_area, max_area: kept mask areas, as fractions of the image.
    """

    name = "felzenszwalb"

    def __init__(self, max_regions: int = 16, scale: float = 200.0, sigma: float = 0.8, min_size: int = 50,
                 working_size: int = 320, min_area: float = DEFAULT_MIN_AREA, max_area: float = DEFAULT_MAX_AREA):
        if max_regions < 1:
            raise ValueError(f"felzenszwalb max_regions must be at least 1, got {max_regions}")
        if working_size < 16:
            raise ValueError(f"felzenszwalb working_size must be at least 16 pixels, got {working_size}")
        _check_area_range(min_area, max_area)
        self.max_regions = int(max_regions)
        self.scale = float(scale)
        self.sigma = float(sigma)
        self.min_size = int(min_size)
        self.working_size = int(working_size)
        self.min_area = float(min_area)
        self.max_area = float(max_area)

    def settings(self) -> Dict:
        return {
            "name": self.name, "max_regions": self.max_regions, "scale": self.scale, "sigma": self.sigma,
            "min_size": self.min_size, "working_size": self.working_size,
            "min_area": self.min_area, "max_area": self.max_area,
        }

    def propose(self, image: np.ndarray) -> List[Box]:
        from skimage.segmentation import felzenszwalb

        height, width = image.shape[:2]
        small, factor = downscale(image, self.working_size)
        labels = felzenszwalb(small, scale=self.scale, sigma=self.sigma, min_size=self.min_size)
        labels = merge_segments(labels, self.max_regions)

        count = int(labels.max()) + 1
        areas = np.bincount(labels.ravel(), minlength=count) / float(labels.size)
        keep = np.flatnonzero((areas >= self.min_area) & (areas <= self.max_area))
        boxes = _label_boxes(labels, count)[keep]
        # Larger segments first, so a cap on regions downstream keeps the big ones.
        boxes = boxes[np.argsort(-areas[keep], kind="stable")]
        return unique_boxes(scale_boxes(boxes, factor, width, height))


def _label_boxes(labels: np.ndarray, count: int) -> np.ndarray:
    """Return ``(count, 4)`` tight boxes of each label of a ``(H, W)`` label image."""
    height, width = labels.shape
    ys, xs = np.indices(labels.shape)
    flat = labels.ravel()
    boxes = np.zeros((count, 4), dtype=np.int64)
    boxes[:, 0] = width
    boxes[:, 1] = height
    np.minimum.at(boxes[:, 0], flat, xs.ravel())
    np.minimum.at(boxes[:, 1], flat, ys.ravel())
    np.maximum.at(boxes[:, 2], flat, xs.ravel() + 1)
    np.maximum.at(boxes[:, 3], flat, ys.ravel() + 1)
    return boxes


def merge_segments(labels: np.ndarray, max_regions: int) -> np.ndarray:
    """Merge the segments of a ``(H, W)`` label image until at most ``max_regions`` remain.

    The smallest segment is merged into the neighbour it shares the longest
    border with, repeatedly. Returns labels renumbered ``0 .. n-1`` in order of
    first appearance in raster order.
    """
    shape = labels.shape
    _, inverse = np.unique(labels, return_inverse=True)
    labels = inverse.reshape(shape)
    count = int(labels.max()) + 1 if labels.size else 0
    if count <= max_regions:
        return _renumber(labels)

    sizes = np.bincount(labels.ravel(), minlength=count).astype(np.int64)
    borders: List[Dict[int, int]] = [dict() for _ in range(count)]
    for first, second in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = first != second
        a, b = first[differ], second[differ]
        low, high = np.minimum(a, b), np.maximum(a, b)
        pairs, lengths = np.unique(low.astype(np.int64) * count + high, return_counts=True)
        for pair, length in zip(pairs.tolist(), lengths.tolist()):
            u, v = divmod(pair, count)
            borders[u][v] = borders[u].get(v, 0) + length
            borders[v][u] = borders[v].get(u, 0) + length

    parent = list(range(count))
    alive = count
    heap = [(int(size), label) for label, size in enumerate(sizes)]
    heapq.heapify(heap)
    while alive > max_regions and heap:
        size, label = heapq.heappop(heap)
        if parent[label] != label or size != sizes[label]:
            continue  # merged away, or an outdated heap entry
        if not borders[label]:
            continue  # an isolated segment cannot merge
        target = max(borders[label].items(), key=lambda item: (item[1], -item[0]))[0]
        parent[label] = target
        sizes[target] += sizes[label]
        for neighbour, length in borders[label].items():
            del borders[neighbour][label]
            if neighbour != target:
                borders[target][neighbour] = borders[target].get(neighbour, 0) + length
                borders[neighbour][target] = borders[neighbour].get(target, 0) + length
        borders[label] = {}
        alive -= 1
        heapq.heappush(heap, (int(sizes[target]), target))

    root = np.arange(count)
    for label in range(count):
        node = label
        while parent[node] != node:
            node = parent[node]
        root[label] = node
    return _renumber(root[labels])


def _renumber(labels: np.ndarray) -> np.ndarray:
    _, first_index, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first_index))
    return order[inverse].reshape(labels.shape)


class SamProposer(RegionProposer):
    """Boxes of Segment Anything's automatic masks.

    Args:
        checkpoint: a SAM checkpoint file (``sam_vit_h_4b8939.pth`` and the
            like), read with ``weights_only=True``. Ignored when ``model`` is given.
        model_type: ``vit_h``, ``vit_l`` or ``vit_b``, matching the checkpoint.
        model: a built ``segment_anything.modeling.Sam``, instead of a checkpoint.
        working_size: longer side the image is shrunk to before mask generation.
            SAM resizes its input to 1024 pixels anyway, and masks come back
            at the input size, so shrinking large photos saves memory.
        min_area, max_area: kept mask areas, as fractions of the image.
        generator_options: keyword arguments of ``SamAutomaticMaskGenerator``
            (``points_per_side``, ``pred_iou_thresh``, ...).
    """

    name = "sam"
    uses_model_device = True

    def __init__(self, checkpoint: Optional[str] = None, model_type: str = "vit_h", model=None,
                 working_size: int = 1024, min_area: float = DEFAULT_MIN_AREA, max_area: float = DEFAULT_MAX_AREA,
                 generator_options: Optional[Dict] = None):
        _check_area_range(min_area, max_area)
        try:
            from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        except ImportError as error:
            raise ImportError(
                "The sam proposer needs the segment-anything package: pip install 'lavis-goal[sam]' "
                "(or pip install segment-anything), or choose --proposer spatial or felzenszwalb"
            ) from error

        if model is None:
            model = self._load_model(sam_model_registry, checkpoint, model_type)
        self.checkpoint = checkpoint
        self.model_type = model_type
        self.model = model.eval()
        self.working_size = int(working_size)
        self.min_area = float(min_area)
        self.max_area = float(max_area)
        self.generator_options = dict(generator_options or {})
        self.generator = SamAutomaticMaskGenerator(self.model, output_mode="binary_mask", **self.generator_options)

    @staticmethod
    def _load_model(registry, checkpoint: Optional[str], model_type: str):
        from lavis_goal.models.checkpoints import extract_state_dict, load_checkpoint_file

        if model_type not in SAM_MODEL_TYPES:
            raise ValueError(f"Unknown SAM model type {model_type!r}; choose one of {', '.join(SAM_MODEL_TYPES)} to match the checkpoint")
        if not checkpoint:
            raise FileNotFoundError(
                "The sam proposer needs a checkpoint: pass --sam-checkpoint PATH (for example sam_vit_h_4b8939.pth "
                "from the segment-anything release) and the matching --sam-model-type"
            )
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"SAM checkpoint {checkpoint} not found; check --sam-checkpoint")
        model = registry[model_type]()
        state_dict = extract_state_dict(load_checkpoint_file(checkpoint), checkpoint)
        result = model.load_state_dict(state_dict, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"SAM checkpoint {checkpoint} does not match model type {model_type!r}: missing keys "
                f"{result.missing_keys[:5]}, unexpected keys {result.unexpected_keys[:5]}; set --sam-model-type "
                "to the checkpoint's type"
            )
        logger.info("Loaded SAM %s from %s", model_type, checkpoint)
        return model

    def settings(self) -> Dict:
        checkpoint = None
        if self.checkpoint and os.path.isfile(self.checkpoint):
            stat = os.stat(self.checkpoint)
            checkpoint = {"path": os.path.abspath(self.checkpoint), "bytes": stat.st_size, "mtime": int(stat.st_mtime)}
        return {
            "name": self.name, "checkpoint": checkpoint, "model_type": self.model_type,
            "working_size": self.working_size, "min_area": self.min_area, "max_area": self.max_area,
            "generator_options": self.generator_options,
        }

    def to(self, device) -> "SamProposer":
        self.model.to(device)
        return self

    def propose(self, image: np.ndarray) -> List[Box]:
        height, width = image.shape[:2]
        small, factor = downscale(image, self.working_size)
        annotations = self.generator.generate(small)
        if not annotations:
            return []
        masks = np.stack([annotation["segmentation"] for annotation in annotations])
        areas = masks.reshape(masks.shape[0], -1).mean(axis=1)
        keep = (areas >= self.min_area) & (areas <= self.max_area)
        boxes = masks_to_boxes(masks[keep])
        boxes = boxes[np.argsort(-areas[keep], kind="stable")]
        return unique_boxes(scale_boxes(boxes, factor, width, height))


PROPOSERS = {
    SpatialProposer.name: SpatialProposer,
    FelzenszwalbProposer.name: FelzenszwalbProposer,
    SamProposer.name: SamProposer,
}


def build_proposer(name: str, **options) -> RegionProposer:
    """Build a proposer by name (``spatial``, ``felzenszwalb`` or ``sam``) with its keyword options."""
    if name not in PROPOSERS:
        raise ValueError(f"Unknown region proposer {name!r}; choose one of {', '.join(PROPOSERS)}")
    return PROPOSERS[name](**options)
