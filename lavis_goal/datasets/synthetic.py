"""Procedurally generated scenes with long captions and true object boxes.

Each scene is a small image with a few coloured shapes on a plain background.
Its caption has one global sentence, then one sentence per object in reading
order, for example::

    A picture of two shapes on a gray background. A large red circle is in the
    top left. A small blue square is in the centre.

Every object's sentence with its true box is a local pair (score 1.0). Scenes
are deterministic functions of a seed. Hard negatives come from
``vary_layout``: a copy of a scene with one attribute (colour, shape, size or
texture) of one object changed, rendered with the same noise, so that the twin
images and their captions differ in that object only.

``generate_scene`` is the entry point for other tools; the ``synthetic_scenes``
builder renders whole splits into an image folder and builds GOAL's datasets
from them.
"""

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from lavis.common.registry import registry
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from lavis_goal.common.config_check import check_keys
from lavis_goal.datasets.annotations import parse_records
from lavis_goal.datasets.builders import DATASET_CONFIG_KEYS, GoalBuilderBase
from lavis_goal.paths import plugin_config

logger = logging.getLogger(__name__)

# Bump when rendering or captions change, so cached image folders are not reused.
GENERATOR_VERSION = 1

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "cyan": (40, 205, 215),
}
BACKGROUNDS: Dict[str, Tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (95, 95, 95),
    "brown": (95, 65, 35),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
TEXTURES = ("plain", "striped")
# Object side as a share of the canvas side, before jitter.
SIZE_FRACTIONS = {"small": 0.15, "large": 0.28}
# Positions are the cells of a 3 x 3 grid, named as the captions write them.
POSITIONS = (
    "in the top left", "at the top", "in the top right",
    "on the left", "in the centre", "on the right",
    "in the bottom left", "at the bottom", "in the bottom right",
)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
ATTRIBUTES = ("colour", "shape", "size", "texture")
SCENE_CONFIG_KEYS = {
    "image_size", "min_objects", "max_objects", "colours", "shapes", "sizes", "textures", "backgrounds", "noise_std",
}
SPLIT_CONFIG_KEYS = {"num_scenes", "seed", "hard_negatives", "captions"}
# Caption kinds: a long caption has the global sentence and one sentence per
# object, and a short caption is one object's sentence.
CAPTION_KINDS = ("long", "short")
LOCAL_BOXES = ("object", "cell")


@dataclass(frozen=True)
class SceneConfig:
    """Attribute choices and limits of generated scenes.

    ``image_size`` is the side of the square canvas in pixels. Attribute lists
    are subsets of the module's ``COLOURS``, ``SHAPES``, ``SIZES``,
    ``TEXTURES`` and ``BACKGROUNDS``. ``noise_std`` is the standard deviation of
    the Gaussian pixel noise, in 8-bit levels.
    """

    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 4
    colours: Tuple[str, ...] = tuple(COLOURS)
    shapes: Tuple[str, ...] = SHAPES
    sizes: Tuple[str, ...] = SIZES
    textures: Tuple[str, ...] = ("plain",)
    backgrounds: Tuple[str, ...] = tuple(BACKGROUNDS)
    noise_std: float = 6.0

    def __post_init__(self):
        for name, known in (("colours", COLOURS), ("shapes", SHAPES), ("sizes", SIZES),
                            ("textures", TEXTURES), ("backgrounds", BACKGROUNDS)):
            values = getattr(self, name)
            object.__setattr__(self, name, tuple(values))
            unknown = [v for v in values if v not in known]
            if not values or unknown:
                raise ValueError(f"scene.{name} must be a non-empty subset of {list(known)}, got {list(values)}")
        if not 1 <= self.min_objects <= self.max_objects <= len(POSITIONS):
            raise ValueError(
                f"scene.min_objects and scene.max_objects must satisfy 1 <= min <= max <= {len(POSITIONS)}, "
                f"got {self.min_objects} and {self.max_objects}"
            )
        if self.image_size < 24:
            raise ValueError(f"scene.image_size must be at least 24 pixels, got {self.image_size}")
        if self.noise_std < 0:
            raise ValueError(f"scene.noise_std must be >= 0, got {self.noise_std}")

    @classmethod
    def from_dict(cls, cfg: Optional[dict]) -> "SceneConfig":
        cfg = dict(cfg or {})
        check_keys(cfg, SCENE_CONFIG_KEYS, "scene")
        return cls(**cfg)

    def variable_attributes(self) -> List[str]:
        """Attributes that take more than one value, the ones a hard negative can change."""
        options = {"colour": self.colours, "shape": self.shapes, "size": self.sizes, "texture": self.textures}
        return [name for name in ATTRIBUTES if len(options[name]) > 1]


@dataclass(frozen=True)
class SceneObject:
    """One shape: its attributes, its grid cell and its box ``(x1, y1, x2, y2)`` in pixels.

    The box covers the continuous area ``[x1, x2) x [y1, y2)``, the pixels the shape is drawn in.
    """

    shape: str
    colour: str
    size: str
    texture: str
    position: int
    box: Tuple[int, int, int, int]

    def sentence(self) -> str:
        texture = "striped " if self.texture == "striped" else ""
        return f"A {self.size} {texture}{self.colour} {self.shape} is {POSITIONS[self.position]}."


@dataclass(frozen=True)
class SceneLayout:
    """Everything needed to render a scene; objects are in reading order (top row first)."""

    background: str
    objects: Tuple[SceneObject, ...]
    noise_seed: int
    image_size: int
    noise_std: float = 6.0

    def caption(self) -> str:
        count = COUNT_WORDS.get(len(self.objects), str(len(self.objects)))
        noun = "shape" if len(self.objects) == 1 else "shapes"
        sentences = [f"A picture of {count} {noun} on a {self.background} background."]
        sentences += [obj.sentence() for obj in self.objects]
        return " ".join(sentences)


class Scene(NamedTuple):
    """A rendered scene: ``image, caption, objects = generate_scene(rng)``."""

    image: Image.Image
    caption: str
    objects: Tuple[SceneObject, ...]


def _cell_bounds(position: int, canvas: int) -> Tuple[int, int, int]:
    """Return ``(left, top, side)`` in pixels of grid cell ``position``; cells never overlap."""
    cell = canvas / 3.0
    row, col = divmod(position, 3)
    return int(col * cell), int(row * cell), int(cell)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def _object_box(position: int, side: int, canvas: int, rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """Place a ``side``-pixel box inside grid cell ``position`` with a random offset."""
    left, top, cell_side = _cell_bounds(position, canvas)
    slack = max(0, cell_side - side)
    x1 = left + int(rng.integers(0, slack + 1))
    y1 = top + int(rng.integers(0, slack + 1))
    return (x1, y1, x1 + side, y1 + side)


def _object_side(size: str, canvas: int, rng: np.random.Generator) -> int:
    side = SIZE_FRACTIONS[size] * canvas
    jitter = int(rng.integers(-1, 2)) if canvas >= 48 else 0
    return max(3, int(round(side)) + jitter)


def sample_layout(rng: np.random.Generator, config: SceneConfig = SceneConfig()) -> SceneLayout:
    """Draw a random scene: 2 to 4 objects (by default) in distinct cells of a 3 x 3 grid."""
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    positions = sorted(int(p) for p in rng.choice(len(POSITIONS), size=count, replace=False))
    objects = []
    for position in positions:
        size = str(rng.choice(config.sizes))
        side = _object_side(size, config.image_size, rng)
        objects.append(SceneObject(
            shape=str(rng.choice(config.shapes)),
            colour=str(rng.choice(config.colours)),
            size=size,
            texture=str(rng.choice(config.textures)),
            position=position,
            box=_object_box(position, side, config.image_size, rng),
        ))
    return SceneLayout(
        background=str(rng.choice(config.backgrounds)),
        objects=tuple(objects),
        noise_seed=int(rng.integers(0, 2**31)),
        image_size=config.image_size,
        noise_std=config.noise_std,
    )


def vary_layout(rng: np.random.Generator, layout: SceneLayout, config: SceneConfig = SceneConfig()) -> Tuple[SceneLayout, int, str]:
    """Return ``(twin, object_index, attribute)``: ``layout`` with one attribute of one object changed.

    The twin keeps the background, the other objects and the noise seed. A size
    change keeps the box centre as far as the object's grid cell allows, so the
    object never leaves its cell.
    """
    attributes = config.variable_attributes()
    if not attributes:
        raise ValueError("Hard negatives need an attribute with two or more values in the scene config")
    index = int(rng.integers(len(layout.objects)))
    attribute = str(rng.choice(attributes))
    obj = layout.objects[index]
    if attribute == "colour":
        changed = dataclasses.replace(obj, colour=str(rng.choice([c for c in config.colours if c != obj.colour])))
    elif attribute == "shape":
        changed = dataclasses.replace(obj, shape=str(rng.choice([s for s in config.shapes if s != obj.shape])))
    elif attribute == "texture":
        changed = dataclasses.replace(obj, texture=str(rng.choice([t for t in config.textures if t != obj.texture])))
    else:
        size = str(rng.choice([s for s in config.sizes if s != obj.size]))
        side = _object_side(size, config.image_size, rng)
        cell_x, cell_y, cell_side = _cell_bounds(obj.position, config.image_size)
        x1 = _clamp((obj.box[0] + obj.box[2]) // 2 - side // 2, cell_x, cell_x + cell_side - side)
        y1 = _clamp((obj.box[1] + obj.box[3]) // 2 - side // 2, cell_y, cell_y + cell_side - side)
        changed = dataclasses.replace(obj, size=size, box=(x1, y1, x1 + side, y1 + side))
    objects = layout.objects[:index] + (changed,) + layout.objects[index + 1:]
    return dataclasses.replace(layout, objects=objects), index, attribute


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, fill) -> None:
    x1, y1, x2, y2 = obj.box
    # PIL's coordinates are inclusive, so the last drawn pixel is x2 - 1.
    right, bottom = x2 - 1, y2 - 1
    if obj.shape == "circle":
        draw.ellipse((x1, y1, right, bottom), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x1, y1, right, bottom), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x1 + right) / 2, y1), (right, bottom), (x1, bottom)], fill=fill)
    elif obj.shape == "diamond":
        middle_x, middle_y = (x1 + right) / 2, (y1 + bottom) / 2
        draw.polygon([(middle_x, y1), (right, middle_y), (middle_x, bottom), (x1, middle_y)], fill=fill)
    else:
        raise ValueError(f"Unknown shape {obj.shape!r}; valid shapes: {list(SHAPES)}")


def render_layout(layout: SceneLayout) -> Image.Image:
    """Draw ``layout`` as an RGB image of ``image_size`` pixels; the same layout gives the same pixels."""
    size = layout.image_size
    background = BACKGROUNDS[layout.background]
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for obj in layout.objects:
        _draw_object(draw, obj, COLOURS[obj.colour])

    pixels = np.asarray(image, dtype=np.float32).copy()
    for obj in layout.objects:
        if obj.texture == "striped":
            # Background-coloured horizontal stripes every 4 pixels, inside the shape only.
            x1, y1, x2, y2 = obj.box
            region = pixels[y1:y2, x1:x2]
            inside = np.all(region == np.asarray(COLOURS[obj.colour], dtype=np.float32), axis=-1)
            rows = (np.arange(y1, y2) % 4 < 2)[:, None]
            region[inside & rows] = background

    rng = np.random.default_rng(layout.noise_seed)
    pixels += rng.normal(0.0, layout.noise_std, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="RGB")


def generate_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig()) -> Scene:
    """Draw and render one random scene; returns ``Scene(image, caption, objects)``."""
    layout = sample_layout(rng, config)
    return Scene(render_layout(layout), layout.caption(), layout.objects)


@dataclass(frozen=True)
class SplitScene:
    """A scene of a split. A hard negative names the scene it varies and what changed."""

    layout: SceneLayout
    twin_of: Optional[int] = None
    changed_object: Optional[int] = None
    changed_attribute: Optional[str] = None


def generate_split(config: SceneConfig, num_scenes: int, seed: int, hard_negatives: bool) -> List[SplitScene]:
    """Draw ``num_scenes`` scenes with distinct captions, deterministic from ``seed``.

    With ``hard_negatives``, scenes come in twins: scene ``2i + 1`` is scene
    ``2i`` with one attribute of one object changed, so ``num_scenes`` must be even.
    """
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be at least 1, got {num_scenes}")
    if hard_negatives and num_scenes % 2:
        raise ValueError(f"num_scenes must be even with hard_negatives (scenes come in twins), got {num_scenes}")
    rng = np.random.default_rng(seed)
    scenes: List[SplitScene] = []
    captions = set()
    # Captions repeat only in very small attribute sets; give up well before looping forever.
    attempts_left = 100 * num_scenes
    while len(scenes) < num_scenes:
        attempts_left -= 1
        if attempts_left < 0:
            raise ValueError(
                f"Could not draw {num_scenes} scenes with distinct captions from the scene config; "
                "allow more objects, colours or shapes, or ask for fewer scenes"
            )
        group = [SplitScene(sample_layout(rng, config))]
        if hard_negatives:
            twin, index, attribute = vary_layout(rng, group[0].layout, config)
            group.append(SplitScene(twin, len(scenes), index, attribute))
        group_captions = [scene.layout.caption() for scene in group]
        if len(set(group_captions)) < len(group) or captions.intersection(group_captions):
            continue
        captions.update(group_captions)
        scenes.extend(group)
    return scenes


def _save_png_atomic(image: Image.Image, path: Path) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def render_split(layouts: Sequence[SceneLayout], folder: Path) -> List[Path]:
    """Render each layout to ``folder/NNNNNN.png`` unless the file exists; returns the paths.

    Files are written atomically, so ranks that render the same split at the
    same time write identical files without reading half-written ones.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rendered = 0
    for index, layout in enumerate(layouts):
        path = folder / f"{index:06d}.png"
        if not path.is_file():
            _save_png_atomic(render_layout(layout), path)
            rendered += 1
        paths.append(path)
    if rendered:
        logger.info("Rendered %d of %d synthetic scenes into %s", rendered, len(layouts), folder)
    return paths


def local_box(obj: SceneObject, kind: str, canvas: int) -> Tuple[int, int, int, int]:
    """Return the box of ``obj``'s local pair: ``"object"``, its tight box, or ``"cell"``, its grid cell.

    A crop of the tight box is resized to the model's input, so it no longer
    shows the object's size. A crop of the cell keeps the object's size
    relative to the cell.
    """
    if kind == "object":
        return obj.box
    if kind == "cell":
        left, top, side = _cell_bounds(obj.position, canvas)
        return (left, top, left + side, top + side)
    raise ValueError(f"local_box must be one of {list(LOCAL_BOXES)}, got {kind!r}")


def short_captions(layouts: Sequence[SceneLayout], seed: int) -> List[str]:
    """Return one short caption per layout: the sentence of one of its objects, drawn with ``seed``.

    Short captions stand in for the alt text that CLIP is pre-trained on: each
    names one object's size, colour, shape and cell, and leaves out the other objects.
    """
    rng = np.random.default_rng(seed)
    return [layout.objects[int(rng.integers(len(layout.objects)))].sentence() for layout in layouts]


def layout_records(layouts: Sequence[SceneLayout], paths: Sequence[Path], with_pairs: bool, seed: int,
                   box_kind: str = "object", captions: str = "long") -> List[dict]:
    """Turn layouts into GOAL's annotation records.

    With ``with_pairs``, records use the training-list format and each object
    is a local pair with its ``local_box`` and score 1.0. The pairs are listed
    in an order shuffled with ``seed``: pairs with equal scores keep their
    order when ``local_pairs.top_k`` is applied, so a ``top_k`` below the
    object count keeps a random subset of objects, not always the top-left ones.
    With ``captions="short"`` each record's caption is one object's sentence
    (``short_captions``) and records have no local pairs.
    """
    if captions not in CAPTION_KINDS:
        raise ValueError(f"captions must be one of {list(CAPTION_KINDS)}, got {captions!r}")
    if captions == "short":
        return [{"filename": str(path), "caption": caption}
                for path, caption in zip(paths, short_captions(layouts, seed))]
    rng = np.random.default_rng(seed)
    records = []
    for layout, path in zip(layouts, paths):
        caption = layout.caption()
        if not with_pairs:
            records.append({"filename": str(path), "caption": caption})
            continue
        order = rng.permutation(len(layout.objects))
        segments = []
        for index in order:
            obj = layout.objects[int(index)]
            box = local_box(obj, box_kind, layout.image_size)
            segments.append({
                "caption": obj.sentence(),
                "similarity_score": 1.0,
                "bbox_coordinates": dict(zip(("x1", "y1", "x2", "y2"), (float(v) for v in box))),
            })
        records.append({"original_filename": str(path), "original_caption": caption, "segment": segments})
    return records


def replace_segments(records: List[dict], pairs_file: str) -> List[dict]:
    """Give each training record the local pairs (``segment``) of the same image in ``pairs_file``.

    ``pairs_file`` is a training list in GOAL's format, such as LISM's output
    for the rendered training images. Images are matched by absolute path, and
    every record must appear there with the same caption.
    """
    if not os.path.isfile(pairs_file):
        raise FileNotFoundError(f"Local pairs file {pairs_file} (local_pairs_file) not found")
    with open(pairs_file, encoding="utf-8") as f:
        mined = json.load(f)
    if not isinstance(mined, list):
        raise ValueError(f"Local pairs file {pairs_file} must contain a JSON list of training records")
    by_path = {}
    for item in mined:
        if isinstance(item, dict) and "original_filename" in item:
            by_path[os.path.abspath(str(item["original_filename"]))] = item

    replaced = []
    for index, record in enumerate(records):
        item = by_path.get(os.path.abspath(record["original_filename"]))
        if item is None:
            raise ValueError(
                f"Training image {record['original_filename']} (record {index}) has no entry in {pairs_file}; "
                "mine the pairs for the same train split (num_scenes, seed, scene settings and image folder)"
            )
        if item.get("original_caption") != record["original_caption"]:
            raise ValueError(
                f"The caption of {record['original_filename']} in {pairs_file} differs from the generated one; "
                "the pairs were mined for other scene settings, so mine them again"
            )
        replaced.append({**record, "segment": list(item.get("segment") or [])})
    return replaced


def split_cache_key(config: SceneConfig, num_scenes: int, seed: int, hard_negatives: bool) -> str:
    """Return a short hash of everything that decides a split's images."""
    description = {
        "version": GENERATOR_VERSION,
        "scene": dataclasses.asdict(config),
        "num_scenes": num_scenes,
        "seed": seed,
        "hard_negatives": hard_negatives,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


@registry.register_builder("synthetic_scenes")
class SyntheticScenesBuilder(GoalBuilderBase):
    """Generated scenes of coloured shapes with long captions and true object boxes.

    Each split is drawn from its own seed (``build_info.splits.<name>``:
    ``num_scenes``, ``seed``, ``hard_negatives`` and ``captions``, long or
    short) and rendered once into ``build_info.images.storage`` (by default
    ``output/synthetic_scenes`` under the working directory), in a subfolder
    named by a hash of the scene config and the split's settings. The split
    ``train`` gets local pairs, one per object, whose box is the object's
    tight box or, with ``local_box: cell``, its grid cell; the other splits
    are retrieval sets.
    """

    name = "synthetic_scenes"
    DATASET_CONFIG_DICT = {"default": plugin_config("datasets/synthetic_scenes/defaults.yaml")}
    DEFAULT_STORAGE = os.path.join("output", "synthetic_scenes")

    def build_datasets(self):
        check_keys(self.config, DATASET_CONFIG_KEYS | {"scene", "local_box", "local_pairs_file"}, f"datasets.{self.name}")
        check_keys(self.config.build_info, {"splits", "images"}, f"datasets.{self.name}.build_info")
        return self.build()

    def scene_config(self) -> SceneConfig:
        scene = self.config.get("scene", None)
        scene = OmegaConf.to_container(scene, resolve=True) if scene is not None else {}
        return SceneConfig.from_dict(scene)

    def split_names(self):
        splits = self.config.build_info.get("splits", None)
        if not splits:
            raise ValueError(
                f"datasets.{self.name}.build_info.splits lists no split; add e.g. "
                "train: {num_scenes: 2000, seed: 0, hard_negatives: false}"
            )
        return list(splits.keys())

    def storage_root(self) -> str:
        images = self.config.build_info.get("images", None)
        if images is not None:
            check_keys(images, {"storage"}, f"datasets.{self.name}.build_info.images")
        storage = images.get("storage", None) if images is not None else None
        return os.path.abspath(os.path.expanduser(str(storage or self.DEFAULT_STORAGE)))

    def render_split(self, split: str) -> Tuple[List[SplitScene], List[Path]]:
        """Generate ``split`` from its settings and render it into the image folder; returns scenes and paths."""
        settings = self.config.build_info.splits[split]
        where = f"datasets.{self.name}.build_info.splits.{split}"
        check_keys(settings, SPLIT_CONFIG_KEYS, where)
        if settings.get("num_scenes", None) is None or settings.get("seed", None) is None:
            raise ValueError(f"{where} needs num_scenes and seed, e.g. {{num_scenes: 200, seed: 1}}")
        num_scenes, seed = int(settings.num_scenes), int(settings.seed)
        hard_negatives = bool(settings.get("hard_negatives", False))
        config = self.scene_config()

        scenes = generate_split(config, num_scenes, seed, hard_negatives)
        folder = Path(self.storage_root()) / f"{split}-{split_cache_key(config, num_scenes, seed, hard_negatives)}"
        return scenes, render_split([scene.layout for scene in scenes], folder)

    def split_records(self, split, options):
        scenes, paths = self.render_split(split)
        settings = self.config.build_info.splits[split]
        seed = int(settings.seed)
        box_kind = str(self.config.get("local_box", "object"))
        if box_kind not in LOCAL_BOXES:
            raise ValueError(f"datasets.{self.name}.local_box must be one of {list(LOCAL_BOXES)}, got {box_kind!r}")
        # Records carry absolute paths, so options.image_root stays None.
        captions = str(settings.get("captions", "long"))
        if captions not in CAPTION_KINDS:
            raise ValueError(f"datasets.{self.name}.build_info.splits.{split}.captions must be one of "
                             f"{list(CAPTION_KINDS)}, got {captions!r}")
        layouts = [scene.layout for scene in scenes]
        raw = layout_records(layouts, paths, with_pairs=split == "train", seed=seed, box_kind=box_kind, captions=captions)
        hard = ", hard negatives" if settings.get("hard_negatives", False) else ""
        short = ", short captions" if captions == "short" else ""
        source = f"{self.name}/{split} ({len(scenes)} scenes, seed {seed}{hard}{short}, {paths[0].parent})"
        pairs_file = self.config.get("local_pairs_file", None)
        if split == "train" and pairs_file and captions == "short":
            raise ValueError(f"datasets.{self.name}.local_pairs_file needs long captions in the train split, because "
                             "short captions have no sentences to pair; remove local_pairs_file or set captions: long")
        if split == "train" and pairs_file:
            raw = replace_segments(raw, os.path.abspath(os.path.expanduser(str(pairs_file))))
            source += f" with local pairs from {pairs_file}"
        records, _ = parse_records(raw, source, options)
        return records, source
