"""Zero-shot classification sets: CIFAR-10, CIFAR-100 and ImageNet-O.

CIFAR is read from torchvision's dataset files in a user folder (nothing is
downloaded); ImageNet-O from its image folder, one sub-folder per WordNet id.
Class names and prompt templates become the text side of the classifier.
"""

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Union

import numpy as np
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity

from lavis_goal.data.releases import IMAGE_SUFFIXES, ReleaseLayoutError

logger = logging.getLogger(__name__)

WNID_PATTERN = re.compile(r"^n\d{8}$")

CIFAR_LAYOUTS = {
    "cifar10": """\
  cifar-10-batches-py/test_batch, data_batch_1 ... data_batch_5, batches.meta
  (torchvision's CIFAR-10 files, as extracted from cifar-10-python.tar.gz; the root may also be
  the cifar-10-batches-py folder itself)""",
    "cifar100": """\
  cifar-100-python/test, train, meta
  (torchvision's CIFAR-100 files, as extracted from cifar-100-python.tar.gz; the root may also be
  the cifar-100-python folder itself)""",
}

IMAGENET_O_LAYOUT = """\
  <wnid>/<image>.jpg   one folder per WordNet id (n01443537, ...), as extracted from imagenet-o.tar
  (the root may also be the folder that contains imagenet-o/)
build_info.class_names names the class names file: a JSON list of names in sorted-wnid order, a JSON
object {wnid: name}, or text lines "wnid name" (ImageNet's synset_words.txt or LOC_synset_mapping.txt)."""


@dataclass
class ClassificationSet:
    """Images (``(N, H, W, 3)`` uint8 or file paths), their class indices and the class names."""

    images: Union[np.ndarray, List[str]]
    labels: List[int]
    class_names: List[str]


class _FolderCifarMixin:
    """torchvision's CIFAR reader for files a user already has.

    torchvision checks the MD5 of every train and test file before it reads
    either split. Here only the files of the requested split and the metadata
    must exist, and ``verify_checksums`` keeps torchvision's MD5 check of them.
    """

    def __init__(self, root: str, train: bool, verify_checksums: bool = True):
        # Set before torchvision's constructor, which calls _check_integrity.
        self.verify_checksums = verify_checksums
        super().__init__(root, train=train, download=False)

    def _check_integrity(self) -> bool:
        files = (self.train_list if self.train else self.test_list) + [[self.meta["filename"], self.meta["md5"]]]
        for name, md5 in files:
            path = os.path.join(self.root, self.base_folder, name)
            if not os.path.isfile(path):
                raise ReleaseLayoutError(f"CIFAR file {path} not found. The root (build_info.root) must have this layout:\n{self.layout}")
            if self.verify_checksums and not check_integrity(path, md5):
                raise ValueError(f"CIFAR file {path} does not match torchvision's MD5 checksum; download it again, or set build_info.verify_checksums: false for a modified copy")
        return True

    def _load_meta(self) -> None:
        if not self.verify_checksums:
            # torchvision's check passes any existing file when its md5 is None.
            self.meta = {**self.meta, "md5": None}
        super()._load_meta()


class FolderCIFAR10(_FolderCifarMixin, CIFAR10):
    layout = CIFAR_LAYOUTS["cifar10"]


class FolderCIFAR100(_FolderCifarMixin, CIFAR100):
    layout = CIFAR_LAYOUTS["cifar100"]


def read_cifar(name: str, root, part: str = "test", verify_checksums: bool = True) -> ClassificationSet:
    """Read the ``test`` or ``train`` part of ``cifar10`` or ``cifar100`` from torchvision's files under ``root``."""
    classes = {"cifar10": FolderCIFAR10, "cifar100": FolderCIFAR100}
    if name not in classes:
        raise ValueError(f"Unknown CIFAR set {name!r}; use cifar10 or cifar100")
    if part not in ("test", "train"):
        raise ValueError(f"{name} has no part {part!r}; valid parts: test, train")
    reader = classes[name]
    root = Path(os.path.expanduser(str(root))).resolve()
    if root.name == reader.base_folder:
        root = root.parent
    if not root.is_dir():
        raise ReleaseLayoutError(f"Root folder {root} not found. The {name} root (build_info.root) must have this layout:\n{reader.layout}")

    dataset = reader(str(root), train=part == "train", verify_checksums=bool(verify_checksums))
    class_names = [c.replace("_", " ") for c in dataset.classes]
    logger.info("%s %s: %d images, %d classes from %s", name, part, len(dataset.data), len(class_names), root)
    return ClassificationSet(images=dataset.data, labels=[int(t) for t in dataset.targets], class_names=class_names)


def read_imagenet_o(root, class_names_file) -> ClassificationSet:
    """Read ImageNet-O's image folder; classes are the WordNet-id folders in sorted order."""
    root = Path(os.path.expanduser(str(root))).resolve()
    if not root.is_dir():
        raise ReleaseLayoutError(f"Root folder {root} not found. The imagenet_o root (build_info.root) must have this layout:\n{IMAGENET_O_LAYOUT}")
    if not _wnid_folders(root) and (root / "imagenet-o").is_dir():
        root = root / "imagenet-o"
    wnids = _wnid_folders(root)
    if not wnids:
        raise ReleaseLayoutError(f"No WordNet-id folders (n01443537, ...) in {root}. The imagenet_o root must have this layout:\n{IMAGENET_O_LAYOUT}")

    images, labels = [], []
    for label, wnid in enumerate(wnids):
        files = sorted(p for p in (root / wnid).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images += [str(p) for p in files]
        labels += [label] * len(files)
    if not images:
        raise ReleaseLayoutError(f"The class folders under {root} hold no images. The imagenet_o root must have this layout:\n{IMAGENET_O_LAYOUT}")
    class_names = imagenet_class_names(wnids, class_names_file)
    logger.info("imagenet_o: %d images, %d classes from %s", len(images), len(wnids), root)
    return ClassificationSet(images=images, labels=labels, class_names=class_names)


def _wnid_folders(root: Path) -> List[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and WNID_PATTERN.match(p.name))


def imagenet_class_names(wnids: Sequence[str], path) -> List[str]:
    """Return a class name for each of ``wnids`` from the file ``path``.

    A file that maps all 1,000 ImageNet-1k ids gives CLIP's curated class
    names (open_clip's ``IMAGENET_CLASSNAMES``, indexed by the sorted ids);
    any other file gives its own names, the first comma-separated synonym
    with underscores as spaces.
    """
    if path is None:
        raise ValueError(
            "ImageNet-O needs build_info.class_names: a JSON list of names in sorted-wnid order, a JSON object "
            "{wnid: name}, or text lines 'wnid name' (ImageNet's synset_words.txt or LOC_synset_mapping.txt)"
        )
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"Class names file {path} (build_info.class_names) not found")

    mapping = _read_class_names(path, wnids)
    if len(mapping) == len(IMAGENET_CLASSNAMES) and all(WNID_PATTERN.match(w) for w in mapping):
        index = {wnid: i for i, wnid in enumerate(sorted(mapping))}
        mapping = {wnid: IMAGENET_CLASSNAMES[i] for wnid, i in index.items()}
    missing = [w for w in wnids if w not in mapping]
    if missing:
        raise ValueError(f"Class names file {path} has no name for {len(missing)} class folder(s), e.g. {', '.join(missing[:3])}")
    return [mapping[w].split(",")[0].strip().replace("_", " ") for w in wnids]


def _read_class_names(path: Path, wnids: Sequence[str]) -> Dict[str, str]:
    if path.suffix == ".json":
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if isinstance(data, list):
            if len(data) != len(wnids):
                raise ValueError(f"Class names file {path} lists {len(data)} names but there are {len(wnids)} class folders; a list must name every folder in sorted order")
            return {wnid: str(name) for wnid, name in zip(wnids, data)}
        if isinstance(data, dict):
            return {str(k): str(v[0] if isinstance(v, list) else v) for k, v in data.items()}
        raise ValueError(f"Class names file {path} must hold a JSON list or object")
    mapping = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not WNID_PATTERN.match(parts[0]):
            raise ValueError(f"Line {line_number} of {path} is not 'wnid name': {line.strip()[:60]!r}")
        mapping[parts[0]] = parts[1]
    return mapping


TEMPLATE_SETS: Dict[str, Sequence[Callable[[str], str]]] = {
    "openai": OPENAI_IMAGENET_TEMPLATES,
    "simple": SIMPLE_IMAGENET_TEMPLATES,
}


def build_prompts(class_names: Sequence[str], templates) -> List[List[str]]:
    """Return one list of prompts per class.

    ``templates`` is ``"openai"`` (CLIP's 80 ImageNet prompts, from
    open_clip), ``"simple"`` (open_clip's short list), or a list of strings
    with ``{}`` where the class name goes.
    """
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"Unknown template set {templates!r}; use {' or '.join(TEMPLATE_SETS)}, or a list of strings with {{}}")
        functions = list(TEMPLATE_SETS[templates])
    else:
        templates = [str(t) for t in templates]
        if not templates or not all("{}" in t for t in templates):
            raise ValueError(f"Each prompt template needs a {{}} where the class name goes, got {templates!r}")
        functions = [lambda name, template=template: template.replace("{}", name) for template in templates]
    return [[template(name) for template in functions] for name in class_names]
