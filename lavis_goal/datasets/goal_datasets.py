"""Training and retrieval-evaluation datasets for GOAL.

Captions are tokenized and sentence spans located once, when the dataset is
built; ``__getitem__`` only decodes images, cuts the local crops from their
boxes and applies the image transforms.
"""

import logging
from collections import Counter
from typing import Dict, List

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from lavis_goal.datasets.annotations import Record
from lavis_goal.processors.goal_processors import to_rgb
from lavis_goal.text_spans import SpanTokenizer

logger = logging.getLogger(__name__)


def open_image(path: str, record_index: int, source: str = "") -> Image.Image:
    """Decode an image as RGB. Errors name the record by ``record_index`` and ``source``.

    Building a dataset only reads each image's header, so a corrupt file is
    first noticed here. NOTE: LAVIS 1.0.2 sets Pillow's
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` when its datasets are imported,
    so a truncated file decodes without an error, its missing rows grey.
    """
    where = f"record {record_index} of {source}" if source else f"record {record_index}"
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"Image {path} of {where} not found; it was moved or deleted after the dataset was built, or the dataset was built with check_images: false") from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Image {path} of {where} cannot be decoded ({error}); replace it or remove the record") from error


class GoalTrainDataset(Dataset):
    """Image, long caption and up to ``top_k`` local (box, sentence) pairs per record.

    Each item contains ``image (3, H, W)``, ``text_input (L,)`` and ``K = top_k``
    local slots: ``local_image (K, 3, H, W)``, ``local_text (K, L)``,
    ``local_valid (K,)``, ``region_box (K, 4)`` in input pixels,
    ``region_valid (K,)``, ``span (K, 2)`` and ``span_valid (K,)``. Records
    with fewer pairs fill the remaining slots with invalid entries.
    """

    def __init__(self, records: List[Record], vis_processor, local_processor, tokenizer: SpanTokenizer, top_k: int = 1,
                 source: str = "", load_local: bool = True):
        self.records = records
        # Without local terms in the loss (global-only training) items skip the crops.
        self.load_local = load_local
        self.source = source
        self.vis_processor = vis_processor
        self.local_processor = local_processor
        self.top_k = max(1, int(top_k))
        self.context_length = tokenizer.context_length

        self.caption_tokens = torch.zeros(len(records), self.context_length, dtype=torch.int32)
        self.local_tokens = torch.zeros(len(records), self.top_k, self.context_length, dtype=torch.int32)
        self.spans = torch.zeros(len(records), self.top_k, 2, dtype=torch.int64)
        self.span_valid = torch.zeros(len(records), self.top_k, dtype=torch.bool)
        span_status: Counter = Counter()
        for row, record in enumerate(records):
            encoded = tokenizer.encode_caption(record.captions[0])
            self.caption_tokens[row] = encoded.tokens
            for slot, pair in enumerate(record.pairs[: self.top_k]):
                self.local_tokens[row, slot] = tokenizer.encode_caption(pair.sentence).tokens
                start, end, status = tokenizer.sentence_span(encoded, record.captions[0], pair.char_start, pair.char_end)
                span_status[status] += 1
                self.spans[row, slot] = torch.tensor([start, end])
                self.span_valid[row, slot] = status == "ok"

        n_pairs = sum(min(len(r.pairs), self.top_k) for r in records)
        no_pairs = sum(1 for r in records if not r.pairs)
        logger.info(
            "%s: %d training images, %d local pairs (top %d per image), %d images without local pairs; "
            "sentence spans: %s", source, len(records), n_pairs, self.top_k, no_pairs, dict(span_status),
        )
        if span_status.get("truncated"):
            logger.info("%d sentences lie past the %d-token context: their text TSL term is masked", span_status["truncated"], self.context_length)

    def __len__(self) -> int:
        return len(self.records)

    def collater(self, samples):
        return default_collate(samples)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        record = self.records[index]
        image = open_image(record.image_path, record.index, self.source)
        if not self.load_local:
            return {"image": self.vis_processor(image), "text_input": self.caption_tokens[index].long(), "index": index}
        pairs = record.pairs[: self.top_k]

        boxes = torch.zeros(self.top_k, 4)
        if pairs:
            boxes[: len(pairs)] = torch.tensor([p.box for p in pairs], dtype=torch.float32)
        image_tensor, region_box, region_valid = self.vis_processor.transform_with_boxes(image, boxes)

        local_valid = torch.zeros(self.top_k, dtype=torch.bool)
        local_valid[: len(pairs)] = True
        local_images = torch.zeros(self.top_k, *image_tensor.shape)
        for slot, pair in enumerate(pairs):
            x1, y1, x2, y2 = pair.box
            crop = image.crop((int(x1), int(y1), max(int(round(x2)), int(x1) + 1), max(int(round(y2)), int(y1) + 1)))
            local_images[slot] = self.local_processor(crop)

        return {
            "image": image_tensor,
            "text_input": self.caption_tokens[index].long(),
            "local_image": local_images,
            "local_text": self.local_tokens[index].long(),
            "local_valid": local_valid,
            "region_box": region_box,
            "region_valid": region_valid & local_valid,
            "span": self.spans[index],
            "span_valid": self.span_valid[index] & local_valid,
            "index": index,
        }


class GoalRetrievalEvalDataset(Dataset):
    """Images and their captions for retrieval; one or several captions per image.

    Follows LAVIS's retrieval datasets: ``text`` (token ids, one row per
    caption), ``image`` (paths), ``txt2img`` and ``img2txt``; items are
    ``{"image", "index"}``.
    """

    def __init__(self, records: List[Record], vis_processor, tokenizer: SpanTokenizer, source: str = ""):
        self.records = records
        self.source = source
        self.vis_processor = vis_processor
        self.image = [r.image_path for r in records]
        self.text: List[torch.Tensor] = []
        self.txt2img: Dict[int, int] = {}
        self.img2txt: Dict[int, List[int]] = {}
        truncated = 0
        for image_id, record in enumerate(records):
            self.img2txt[image_id] = []
            for caption in record.captions:
                encoded = tokenizer.encode_caption(caption)
                truncated += len(encoded.ids) > tokenizer.max_content_tokens
                self.img2txt[image_id].append(len(self.text))
                self.txt2img[len(self.text)] = image_id
                self.text.append(encoded.tokens)
        logger.info(
            "%s: %d images, %d captions, %d captions longer than %d tokens (truncated)",
            source, len(self.image), len(self.text), truncated, tokenizer.context_length,
        )

    def __len__(self) -> int:
        return len(self.image)

    def collater(self, samples):
        return default_collate(samples)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        record = self.records[index]
        return {"image": self.vis_processor(open_image(record.image_path, record.index, self.source)), "index": index}
