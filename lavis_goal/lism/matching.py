"""Encode sentences and region crops with a ``goal_clip`` model and match them by cosine similarity."""

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from lavis_goal.processors import GoalImageEvalProcessor

logger = logging.getLogger(__name__)

# Sentinel for "use the pretrained weights named in the model type's config".
CONFIG_DEFAULT = "config"


def resolve_device(device: str = "auto") -> torch.device:
    """Return ``cuda`` when available for ``"auto"``, else the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was requested but CUDA is not available; use --device cpu or auto")
    return resolved


def _file_stamp(path: Optional[str]):
    if not path or not os.path.isfile(str(path)):
        return path
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime": int(stat.st_mtime)}


def load_matching_model(model_type: str = "vitb16", pretrained: Optional[str] = CONFIG_DEFAULT,
                        finetuned: Optional[str] = None, seed: int = 0):
    """Build a ``goal_clip`` model in eval mode on the CPU.

    Args:
        model_type: a goal_clip model type (``vitb16``, ``vitl14``, ``tiny``, ...).
        pretrained: an open_clip tag or checkpoint path; ``"config"`` keeps the
            type's default (OpenAI weights for ``vitb16`` and ``vitl14``); None
            or ``"none"`` gives random weights.
        finetuned: a checkpoint written by ``lavis_goal.train``.
        seed: seeds the random initialisation, so that models with random
            weights (tests, smoke runs) are the same in every process.

    Returns ``(model, settings)``; ``settings`` describes the weights, for
    detecting changed settings when a run resumes.
    """
    from lavis_goal.models.goal_clip import GoalCLIP

    cfg = OmegaConf.load(GoalCLIP.default_config_path(model_type)).model
    if pretrained != CONFIG_DEFAULT:
        cfg.pretrained = None if pretrained in (None, "", "none", "None") else pretrained
    cfg.finetuned = finetuned
    if cfg.finetuned and not os.path.isfile(str(cfg.finetuned)):
        raise FileNotFoundError(f"Fine-tuned checkpoint {cfg.finetuned} not found; check --finetuned")

    torch.manual_seed(seed)
    model = GoalCLIP.from_config(cfg).eval()
    if not cfg.pretrained and not cfg.finetuned:
        logger.warning(
            "goal_clip %s has random weights (no --pretrained or --finetuned): its matches are meaningless "
            "outside tests", model_type,
        )
    settings = {
        "model_type": model_type, "model_name": cfg.model_name, "pretrained": _file_stamp(cfg.pretrained),
        "finetuned": _file_stamp(cfg.finetuned), "seed": seed, "context_length": int(cfg.context_length),
    }
    return model, settings


def describe_model(model) -> Dict:
    """Describe a model built by the caller: its architecture and a checksum of its weights."""
    with torch.no_grad():
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    return {"model_name": getattr(model, "model_name", type(model).__name__), "parameter_sum": f"{checksum:.8e}"}


def crop_tensors(image: Image.Image, boxes: Sequence[Sequence[int]], processor: GoalImageEvalProcessor) -> torch.Tensor:
    """Cut each ``(x1, y1, x2, y2)`` box from an RGB image and preprocess it: ``(R, 3, S, S)``."""
    return torch.stack([processor(image.crop(tuple(int(v) for v in box))) for box in boxes])


class RegionMatcher:
    """Encode sentences and crops in batches with a ``goal_clip`` model.

    Args:
        model: a ``GoalCLIP`` (any object with ``extract_features``, ``tokenizer``
            and ``image_size`` works).
        device: where the model runs.
        batch_size: crops or sentences per forward pass.
        amp: bfloat16 autocast on CUDA; embeddings are returned in float32.
    """

    def __init__(self, model, device: torch.device, batch_size: int = 64, amp: bool = False):
        if batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = int(batch_size)
        self.amp = bool(amp) and device.type == "cuda"
        self.processor = GoalImageEvalProcessor(image_size=int(model.image_size[0]))
        self.tokenizer = model.tokenizer

    @property
    def max_sentence_tokens(self) -> int:
        return self.tokenizer.max_content_tokens

    def sentence_tokens(self, sentence: str) -> Tuple[torch.Tensor, int]:
        """Return the padded ``(L,)`` token ids of a sentence and its number of content tokens."""
        encoded = self.tokenizer.encode_caption(sentence)
        return encoded.tokens, len(encoded.ids)

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    @torch.no_grad()
    def encode_images(self, crops: torch.Tensor) -> torch.Tensor:
        """Return ``(N, D)`` L2-normalised float32 embeddings (CPU) of ``(N, 3, S, S)`` crops."""
        rows = []
        for start in range(0, crops.shape[0], self.batch_size):
            batch = crops[start : start + self.batch_size].to(self.device, non_blocking=True)
            with self._autocast():
                rows.append(self.model.extract_features({"image": batch}, mode="image")["image_embeds"].float().cpu())
        return torch.cat(rows) if rows else torch.zeros(0, 0)

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return ``(N, D)`` L2-normalised float32 embeddings (CPU) of ``(N, L)`` token ids."""
        rows = []
        for start in range(0, tokens.shape[0], self.batch_size):
            batch = tokens[start : start + self.batch_size].to(self.device)
            with self._autocast():
                if _has_clip_text_tower(self.model):
                    embeds = F.normalize(_encode_text_trimmed(self.model, batch).float(), dim=-1)
                else:
                    embeds = self.model.extract_features({"text_input": batch}, mode="text")["text_embeds"]
            rows.append(embeds.float().cpu())
        return torch.cat(rows) if rows else torch.zeros(0, 0)


def _has_clip_text_tower(model) -> bool:
    clip = getattr(model, "clip", None)
    return clip is not None and hasattr(clip, "attn_mask") and hasattr(model, "_text_head")


def _encode_text_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """Encode ``(B, L)`` CLIP token ids over the positions up to the batch's last end token only.

    The text tower's attention is causal, so positions after a sentence's end
    token do not change the embedding taken at that token. Dropping the
    trailing padding gives the embeddings of ``GoalCLIP.encode_text_tokens``
    at a fraction of the cost, because sentences are far shorter than the
    248-position context.
    """
    clip = model.clip
    end_positions = tokens.argmax(dim=-1)  # the end token has the largest id
    length = int(end_positions.max()) + 1
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens[:, :length]).to(cast_dtype) + clip.positional_embedding[:length].to(cast_dtype)
    hidden = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), end_positions]
    return model._text_head(pooled)


def best_regions(text_embeds: torch.Tensor, region_embeds: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Cosine similarities ``(S, R)`` of normalised embeddings and each sentence's best region ``(S,)``.

    Ties go to the lower region index, so the whole image (index 0) wins a tie.
    """
    scores = (text_embeds.float() @ region_embeds.float().T).numpy()
    return scores, scores.argmax(axis=1)


class BatchQueue:
    """Collect rows (crops or token ids) and encode them in fixed-size batches, in arrival order.

    Full batches are encoded as soon as they are complete; ``finish`` encodes
    the rest and returns all embeddings. The batches depend only on the rows
    and their order, so the same rows give bit-identical embeddings in any run.
    """

    def __init__(self, encode, batch_size: int):
        self.encode = encode
        self.batch_size = batch_size
        self.pending: List[torch.Tensor] = []
        self.pending_rows = 0
        self.done: List[torch.Tensor] = []
        self.total = 0

    def add(self, rows: torch.Tensor) -> Tuple[int, int]:
        """Queue ``(N, ...)`` rows; return their ``(start, end)`` positions in the final embeddings."""
        start = self.total
        self.total += rows.shape[0]
        if rows.shape[0]:
            self.pending.append(rows)
            self.pending_rows += rows.shape[0]
        if self.pending_rows >= self.batch_size:
            self._encode(final=False)
        return start, self.total

    def _encode(self, final: bool) -> None:
        stacked = torch.cat(self.pending)
        full = stacked.shape[0] if final else (stacked.shape[0] // self.batch_size) * self.batch_size
        if full:
            self.done.append(self.encode(stacked[:full]))
        rest = stacked[full:]
        self.pending = [rest] if rest.shape[0] else []
        self.pending_rows = rest.shape[0]

    def finish(self) -> torch.Tensor:
        if self.pending:
            self._encode(final=True)
        embeddings = torch.cat(self.done) if self.done else torch.zeros(0, 0)
        self.pending, self.pending_rows, self.done, self.total = [], 0, [], 0
        return embeddings
