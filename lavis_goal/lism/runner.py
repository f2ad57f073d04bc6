"""Run LISM over a list of images and captions: decode, propose, encode, match, write.

DataLoader workers decode the images. For proposers without a network they
also propose the regions and cut the crops. The main process encodes crops
and sentences in fixed-size batches. Results go to chunk files as each chunk of
images finishes (see ``lavis_goal.lism.store``), then into one output list in
GOAL's training format.
"""

import json
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lavis_goal.common.io import atomic_write_text
from lavis_goal.lism.inputs import InputList, WorkItem, read_input
from lavis_goal.lism.matching import (
    CONFIG_DEFAULT, BatchQueue, RegionMatcher, best_regions, crop_tensors, describe_model, load_matching_model,
    resolve_device,
)
from lavis_goal.lism.proposers import RegionProposer, build_proposer, unique_boxes, whole_image_box
from lavis_goal.lism.sentences import split_sentences
from lavis_goal.lism.store import ChunkStore, chunk_ranges
from lavis_goal.processors.goal_processors import to_rgb

logger = logging.getLogger(__name__)

# Pillow's own default limit (Image.MAX_IMAGE_PIXELS in Pillow 9 to 11).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
SCORE_DECIMALS = 6
EXIF_ORIENTATION = 0x0112
MAX_LOGGED_SKIPS = 20


@dataclass
class LismConfig:
    """Settings of a LISM run; the command-line flags of ``python -m lavis_goal.lism`` map onto these fields.

    ``pretrained="config"`` keeps the model type's default weights.
    ``max_image_pixels`` skips larger images (None or 0: no limit).
    ``work_dir`` is the folder of the chunk files, the manifest and
    ``summary.json`` (default ``<output>.parts``).
    """

    input: str
    output: str
    image_root: Optional[str] = None
    splits: Optional[Sequence[str]] = None
    proposer: str = "spatial"
    proposer_options: Dict = field(default_factory=dict)
    model_type: str = "vitb16"
    pretrained: Optional[str] = CONFIG_DEFAULT
    finetuned: Optional[str] = None
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 2
    device: str = "auto"
    amp: bool = False
    chunk_size: int = 256
    limit: Optional[int] = None
    keep_whole_image: bool = False
    max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS
    work_dir: Optional[str] = None
    overwrite: bool = False
    progress: bool = True

    def resolved_work_dir(self) -> str:
        return os.path.abspath(self.work_dir or f"{self.output}.parts")


class ImageSkip(Exception):
    """An image that cannot be mined; ``reason`` is the short name counted in the summary."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_image(path: str, where: str, max_pixels: Optional[int]) -> Tuple[Image.Image, bool]:
    """Decode an image to 8-bit RGB as the training dataset does; return it and whether its EXIF orientation rotates it.

    The pixels keep their stored orientation, as in
    ``lavis_goal.datasets.goal_datasets.open_image``, so boxes refer to the
    same pixels that training crops. Raises ``ImageSkip``.
    """
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels or None
    try:
        with warnings.catch_warnings():
            # Pillow only warns between the limit and twice the limit; here the limit is the limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                orientation = image.getexif().get(EXIF_ORIENTATION, 1)
                image.load()
                rgb = to_rgb(image)
    except FileNotFoundError:
        raise ImageSkip("image not found", f"Image {path} of {where} not found; check --image-root") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageSkip(
            "image too large",
            f"Image {path} of {where} exceeds the pixel limit of {max_pixels} ({error}); raise --max-image-pixels "
            "if the file is trusted",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageSkip("image cannot be decoded", f"Image {path} of {where} cannot be decoded ({error}); replace the file") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    return rgb, orientation not in (1, None)


def region_boxes(pixels: np.ndarray, proposer: RegionProposer) -> List[Tuple[int, int, int, int]]:
    """Return the candidate boxes of an ``(H, W, 3)`` image: the whole image first, then the proposals."""
    height, width = pixels.shape[:2]
    return unique_boxes([whole_image_box(width, height)] + list(proposer.propose(pixels)))


class _ImageLoader(Dataset):
    """Decode the images of ``indices``; with a worker-side proposer, also propose and crop."""

    def __init__(self, items: List[WorkItem], indices: List[int], proposer: Optional[RegionProposer], processor,
                 max_pixels: Optional[int]):
        self.items = items
        self.indices = indices
        self.proposer = proposer
        self.processor = processor
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Dict:
        item = self.items[self.indices[position]]
        loaded = {"index": item.index}
        try:
            image, exif_rotated = decode_image(item.image_path, item.where, self.max_pixels)
        except ImageSkip as skip:
            loaded["skip"] = (skip.reason, str(skip))
            return loaded
        loaded["size"] = image.size
        loaded["exif_rotated"] = exif_rotated
        pixels = np.asarray(image)
        if self.proposer is None:
            loaded["pixels"] = pixels
            return loaded
        boxes = region_boxes(pixels, self.proposer)
        loaded["boxes"] = boxes
        loaded["crops"] = crop_tensors(image, boxes, self.processor)
        return loaded


def _keep_sample(sample):
    return sample


@dataclass
class _Entry:
    item: WorkItem
    size: Tuple[int, int]
    boxes: List[Tuple[int, int, int, int]]
    sentences: list
    sentence_notes: List[Optional[str]]
    past_context: List[bool]
    region_slice: Tuple[int, int]
    text_slice: Tuple[int, int]


class _ChunkWork:
    """The images of one chunk on their way through the encoders."""

    def __init__(self, chunk: Tuple[int, int], matcher: RegionMatcher, proposer: RegionProposer, keep_whole_image: bool):
        self.chunk = chunk
        self.matcher = matcher
        self.proposer = proposer
        self.keep_whole_image = keep_whole_image
        self.images = BatchQueue(matcher.encode_images, matcher.batch_size)
        self.texts = BatchQueue(matcher.encode_tokens, matcher.batch_size)
        self.entries: List[_Entry] = []
        self.skipped: List[Dict] = []
        self.exif_rotated = 0
        self.started = time.time()

    def skip(self, item: WorkItem, reason: str, message: str) -> None:
        self.skipped.append({"index": item.index, "filename": item.filename, "reason": reason, "message": message})

    def add(self, loaded: Dict, item: WorkItem) -> None:
        if "skip" in loaded:
            self.skip(item, *loaded["skip"])
            return
        sentences = split_sentences(item.caption)
        if not sentences:
            self.skip(item, "no sentence", f"The caption of {item.where} has no sentence with a letter or a digit")
            return
        self.exif_rotated += bool(loaded["exif_rotated"])

        if "pixels" in loaded:
            boxes = region_boxes(loaded["pixels"], self.proposer)
            crops = crop_tensors(Image.fromarray(loaded["pixels"]), boxes, self.matcher.processor)
        else:
            boxes, crops = loaded["boxes"], loaded["crops"]

        notes, past_context, tokens = [], [], []
        limit = self.matcher.max_sentence_tokens
        caption_tokens = 0
        for sentence in sentences:
            ids, count = self.matcher.sentence_tokens(sentence.text)
            caption_tokens += count
            past_context.append(caption_tokens > limit)
            if count > limit:
                notes.append(f"longer than the {limit}-token text context ({count} tokens)")
                continue
            notes.append(None)
            tokens.append(ids)

        region_slice = self.images.add(crops)
        text_slice = self.texts.add(torch.stack(tokens) if tokens else torch.zeros(0, 1, dtype=torch.long))
        self.entries.append(_Entry(item, tuple(loaded["size"]), boxes, sentences, notes, past_context, region_slice, text_slice))

    def finish(self) -> Dict:
        image_embeds = self.images.finish()
        text_embeds = self.texts.finish()
        records = []
        for entry in self.entries:
            regions = image_embeds[entry.region_slice[0] : entry.region_slice[1]]
            texts = text_embeds[entry.text_slice[0] : entry.text_slice[1]]
            records.append(build_record(entry, regions, texts, self.keep_whole_image))
        return {
            "start": self.chunk[0],
            "end": self.chunk[1],
            "records": records,
            "skipped": self.skipped,
            "exif_rotated": self.exif_rotated,
            "seconds": round(time.time() - self.started, 3),
        }


def build_record(entry: _Entry, region_embeds: torch.Tensor, text_embeds: torch.Tensor, keep_whole_image: bool) -> Dict:
    """Return one training-list record: the caption, its regions, every sentence's scores and the kept pairs."""
    if text_embeds.shape[0]:
        scores, best = best_regions(text_embeds, region_embeds)
    else:
        scores, best = np.zeros((0, len(entry.boxes))), np.zeros(0, dtype=np.int64)

    sentences, segment = [], []
    row = 0
    for sentence, note, past in zip(entry.sentences, entry.sentence_notes, entry.past_context):
        info = {"caption": sentence.text, "char_start": sentence.start, "char_end": sentence.end}
        if past:
            info["past_caption_context"] = True
        if note is not None:
            info["skipped"] = note
            sentences.append(info)
            continue
        region = int(best[row])
        score = round(float(scores[row, region]), SCORE_DECIMALS)
        info.update({
            "region": region,
            "similarity_score": score,
            "region_scores": [round(float(s), SCORE_DECIMALS) for s in scores[row]],
        })
        sentences.append(info)
        row += 1
        if region == 0 and not keep_whole_image:
            continue
        x1, y1, x2, y2 = entry.boxes[region]
        segment.append({
            "caption": sentence.text,
            "similarity_score": score,
            "bbox_coordinates": {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "width": x2 - x1, "height": y2 - y1},
            "region": region,
            "char_start": sentence.start,
            "char_end": sentence.end,
        })

    return {
        "original_filename": entry.item.filename,
        "original_caption": entry.item.caption,
        "image_size": list(entry.size),
        "regions": [list(box) for box in entry.boxes],
        "sentences": sentences,
        "segment": segment,
    }


def _mine_chunks(pending: List[Tuple[int, int]], inputs: InputList, store: ChunkStore, proposer: RegionProposer,
                 matcher: RegionMatcher, config: LismConfig) -> int:
    """Mine the images of the ``pending`` chunks and write each chunk as it finishes; return the image count."""
    indices = [index for start, end in pending for index in range(start, end)]
    worker_proposer = None if proposer.uses_model_device else proposer
    dataset = _ImageLoader(inputs.items, indices, worker_proposer, matcher.processor, config.max_image_pixels)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=config.num_workers, collate_fn=_keep_sample)

    chunks = iter(pending)
    work = _ChunkWork(next(chunks), matcher, proposer, config.keep_whole_image)
    pairs = 0
    with tqdm(total=len(indices), desc="LISM", unit="image", disable=not config.progress) as progress:
        for loaded in loader:
            if loaded["index"] >= work.chunk[1]:
                pairs += _write_chunk(work, store)
                work = _ChunkWork(next(chunks), matcher, proposer, config.keep_whole_image)
            work.add(loaded, inputs.items[loaded["index"]])
            progress.update(1)
            progress.set_postfix(pairs=pairs, refresh=False)
        _write_chunk(work, store)
    return len(indices)


def _write_chunk(work: _ChunkWork, store: ChunkStore) -> int:
    payload = work.finish()
    store.write(work.chunk, payload)
    for skipped in payload["skipped"]:
        logger.warning("Skipped %s: %s", skipped["filename"], skipped["message"])
    return sum(len(record["segment"]) for record in payload["records"])


def run_lism(config: LismConfig, model=None, proposer: Optional[RegionProposer] = None) -> Dict:
    """Mine local pairs for every image of ``config.input`` and write ``config.output``; return the summary.

    ``model`` (a ``GoalCLIP``) and ``proposer`` replace the ones that the
    config would build. A rerun with the same settings skips the chunks that
    are already written; one with other settings raises ``ValueError``
    unless ``config.overwrite``.
    """
    inputs = read_input(config.input, config.image_root, config.splits)
    total = len(inputs.items)
    if config.limit is not None and config.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {config.limit}")
    count = min(total, config.limit) if config.limit else total
    ranges = chunk_ranges(count, config.chunk_size)
    if config.num_workers < 0:
        raise ValueError(f"--num-workers must be 0 or more, got {config.num_workers}")

    device = resolve_device(config.device)
    if proposer is None:
        proposer = build_proposer(config.proposer, **config.proposer_options)
    if model is None:
        model, model_settings = load_matching_model(config.model_type, config.pretrained, config.finetuned, config.seed)
    else:
        model_settings = describe_model(model)
    matcher = RegionMatcher(model, device, config.batch_size, config.amp)
    proposer.to(device)

    manifest = {
        "format": 1,
        "input": {"path": os.path.abspath(config.input), "kind": inputs.kind, "items": total, "sha256": inputs.fingerprint()},
        "image_root": inputs.image_root,
        "chunk_size": config.chunk_size,
        "proposer": proposer.settings(),
        "model": model_settings,
        "image_size": int(matcher.processor.image_size),
        "keep_whole_image": bool(config.keep_whole_image),
        "max_image_pixels": config.max_image_pixels or None,
    }
    store = ChunkStore(config.resolved_work_dir(), manifest)
    store.open(config.overwrite)

    pending = [chunk for chunk in ranges if not store.has(chunk)]
    logger.info(
        "LISM on %s: %d of %d work items, %d chunks (%d already done), proposer %s, device %s, %d workers",
        inputs.source, count, total, len(ranges), len(ranges) - len(pending), proposer.name, device, config.num_workers,
    )
    started = time.time()
    mined_now = _mine_chunks(pending, inputs, store, proposer, matcher, config) if pending else 0
    seconds = time.time() - started

    loaded = store.merge(ranges, config.output)
    summary = summarize(loaded, inputs, config, mined_now, seconds, resumed=len(ranges) - len(pending))
    atomic_write_text(os.path.join(store.folder, "summary.json"), json.dumps(summary, indent=1) + "\n")
    for line in format_summary(summary):
        logger.info("%s", line)
    return summary


def summarize(chunks: List[Dict], inputs: InputList, config: LismConfig, mined_now: int, seconds: float,
              resumed: int) -> Dict:
    """Count images, sentences, pairs, skips and regions over all chunks of a run."""
    records = [record for chunk in chunks for record in chunk["records"]]
    skipped = [entry for chunk in chunks for entry in chunk["skipped"]]
    sentences = [sentence for record in records for sentence in record["sentences"]]
    regions = [len(record["regions"]) for record in records]
    matched = [s for s in sentences if "region" in s]
    return {
        "input": inputs.source,
        "output": os.path.abspath(config.output),
        "image_root": inputs.image_root,
        "work_items": len(inputs.items),
        "input_records_skipped": dict(inputs.skipped),
        "images": sum(chunk["end"] - chunk["start"] for chunk in chunks),
        "images_mined": len(records),
        "images_skipped": dict(Counter(entry["reason"] for entry in skipped)),
        "images_without_pairs": sum(1 for record in records if not record["segment"]),
        "exif_rotated": sum(chunk.get("exif_rotated", 0) for chunk in chunks),
        "sentences": len(sentences),
        "sentences_skipped": dict(Counter(s["skipped"].split(" (")[0] for s in sentences if "skipped" in s)),
        "sentences_past_caption_context": sum(1 for s in sentences if s.get("past_caption_context")),
        "whole_image_matches": sum(1 for s in matched if s["region"] == 0),
        "whole_image_matches_kept": bool(config.keep_whole_image),
        "pairs": sum(len(record["segment"]) for record in records),
        "regions_per_image": {
            "mean": round(float(np.mean(regions)), 2) if regions else 0.0,
            "min": min(regions, default=0),
            "max": max(regions, default=0),
        },
        "images_this_run": mined_now,
        "seconds_this_run": round(seconds, 2),
        "seconds_per_image": round(seconds / mined_now, 4) if mined_now else None,
        "chunks_resumed": resumed,
        "skipped": skipped,
    }


def format_summary(summary: Dict) -> List[str]:
    """Return the summary as short lines for the log and the terminal."""
    def counts(mapping):
        return ", ".join(f"{n} {reason}" for reason, n in sorted(mapping.items())) or "none"

    regions = summary["regions_per_image"]
    per_image = summary["seconds_per_image"]
    whole = "kept" if summary["whole_image_matches_kept"] else "dropped"
    lines = [
        f"images: {summary['images']}; mined: {summary['images_mined']}; skipped: {counts(summary['images_skipped'])}",
        f"input records skipped: {counts(summary['input_records_skipped'])}",
        f"sentences: {summary['sentences']}; skipped: {counts(summary['sentences_skipped'])}; "
        f"matched to the whole image ({whole}): {summary['whole_image_matches']}; "
        f"past the caption's text context: {summary['sentences_past_caption_context']}",
        f"pairs: {summary['pairs']}; images without a pair: {summary['images_without_pairs']}",
        f"regions per image: mean {regions['mean']}, min {regions['min']}, max {regions['max']}",
        f"seconds per image: {per_image if per_image is not None else 'n/a'} "
        f"(this run: {summary['images_this_run']} images in {summary['seconds_this_run']} s; "
        f"chunks from earlier runs: {summary['chunks_resumed']})",
    ]
    if summary["exif_rotated"]:
        lines.append(
            f"images with an EXIF rotation: {summary['exif_rotated']}; their boxes follow the stored pixel "
            "orientation, which is how the training dataset reads them"
        )
    lines.append(f"output: {summary['output']}")
    root = summary["image_root"]
    lines.append(
        "train on it with: --options datasets.goal_json.build_info.annotations.train.storage="
        f"{summary['output']}" + (f" datasets.goal_json.build_info.images.storage={root}" if root else "")
    )
    return lines
