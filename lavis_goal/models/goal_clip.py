"""``goal_clip``: an open_clip CLIP fine-tuned with the GOAL objective.

The model wraps ``open_clip.CLIP`` (as ``self.clip``), stretches its text
positions with Long-CLIP's rule, and encodes global and local inputs in one
batched pass per tower. Besides the pooled embeddings it keeps the last
layer's tokens *before* the final LayerNorm, which token similarity-based
learning (TSL) pools inside a box or a sentence span and sends through the
same LayerNorm and projection.
"""

import fnmatch
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from lavis.common.registry import registry
from lavis.models.base_model import BaseModel
from tqdm import tqdm

from lavis_goal.common import dist as goal_dist
from lavis_goal.common.config_check import check_keys
from lavis_goal.geometry import boxes_to_patch_mask
from lavis_goal.losses import GoalLoss, GoalLossConfig
from lavis_goal.models.convert import OpenClipState, default_quick_gelu, read_checkpoint
from lavis_goal.models.features import encode_rank_share, eval_autocast, gather_rows, masked_mean
from lavis_goal.models.long_text import causal_mask, stretch_positional_embedding
from lavis_goal.paths import OPEN_CLIP_CONFIGS, plugin_config
from lavis_goal.text_spans import SpanTokenizer, spans_to_token_mask

logger = logging.getLogger(__name__)

open_clip.add_model_config(OPEN_CLIP_CONFIGS)

MODEL_CONFIG_KEYS = {
    "arch", "model_type", "model_name", "pretrained", "finetuned", "load_finetuned", "load_pretrained",
    "context_length", "keep_positions", "freeze_kept_positions", "loss", "allow_pickle", "preprocess",
    "quick_gelu", "allowed_missing_keys", "allowed_unexpected_keys",
}


@registry.register_model("goal_clip")
class GoalCLIP(BaseModel):
    """CLIP with long text and the GOAL loss.

    Args:
        model_name: an open_clip architecture (``ViT-B-16``, ``ViT-L-14``, ``goal-tiny-vit``...).
        pretrained: an open_clip pretrained tag (downloaded by open_clip), or a
            local checkpoint file or folder (loaded offline) in any format that
            ``lavis_goal.models.convert`` detects: transformers ``CLIPModel``,
            Long-CLIP, OpenAI or open_clip CLIP, or this project's; None for
            random weights.
        context_length: text positions after stretching (248 in GOAL and Long-CLIP).
        keep_positions: leading positions copied unchanged by the stretch (20).
        freeze_kept_positions: keep those positions fixed during training, as
            Long-CLIP does; GOAL trains all positions.
        loss: weights of the GOAL terms, see ``GoalLossConfig``.
        allow_pickle: load checkpoints with full pickle support (trusted files only).
        quick_gelu: build the MLPs with QuickGELU (True) or GELU (False); None
            takes it from the pretrained weights where they record it (see
            ``default_quick_gelu``), else from the architecture.
        allowed_missing_keys: glob patterns of model keys (``clip.*`` names)
            that a checkpoint may lack; they keep their current values.
        allowed_unexpected_keys: glob patterns of checkpoint keys, as the
            loading error names them, that are ignored.
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": plugin_config("models/goal_clip_tiny.yaml"),
        "tiny64": plugin_config("models/goal_clip_tiny64.yaml"),
        "vitb16": plugin_config("models/goal_clip_vitb16.yaml"),
        "vitl14": plugin_config("models/goal_clip_vitl14.yaml"),
    }

    def __init__(
        self,
        model_name: str,
        pretrained: Optional[str] = None,
        context_length: int = 248,
        keep_positions: int = 20,
        freeze_kept_positions: bool = False,
        loss: Optional[dict] = None,
        allow_pickle: bool = False,
        quick_gelu: Optional[bool] = None,
        allowed_missing_keys: Sequence[str] = (),
        allowed_unexpected_keys: Sequence[str] = (),
    ):
        super().__init__()
        self.model_name = model_name
        self.allow_pickle = allow_pickle
        self.allowed_missing_keys = _patterns(allowed_missing_keys, "allowed_missing_keys")
        self.allowed_unexpected_keys = _patterns(allowed_unexpected_keys, "allowed_unexpected_keys")
        self.keep_positions = keep_positions
        self.freeze_kept_positions = freeze_kept_positions
        self.loss_cfg = GoalLossConfig.from_dict(loss)
        self.loss_fn = GoalLoss(self.loss_cfg)

        self.clip = self._create_clip(model_name, pretrained, context_length, quick_gelu)
        self._check_supported()
        if freeze_kept_positions:
            self.clip.positional_embedding.register_hook(self._zero_kept_position_grads)
        self._tokenizer = None

    @classmethod
    def default_config_path(cls, model_type):
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise ValueError(
                f"Unknown goal_clip model type {model_type!r}; valid types: "
                f"{', '.join(sorted(cls.PRETRAINED_MODEL_CONFIG_DICT))}"
            )
        return cls.PRETRAINED_MODEL_CONFIG_DICT[model_type]

    # ----- construction -------------------------------------------------

    def _create_clip(
        self, model_name: str, pretrained: Optional[str], context_length: int, quick_gelu: Optional[bool]
    ) -> nn.Module:
        if model_name not in open_clip.list_models():
            raise ValueError(
                f"Unknown open_clip architecture {model_name!r} in model.model_name; "
                "see open_clip.list_models() for the valid names"
            )
        tag, source = self._read_pretrained(pretrained)
        if quick_gelu is None:
            quick_gelu = default_quick_gelu(model_name, tag, source)
        options = {} if quick_gelu is None else {"quick_gelu": bool(quick_gelu)}
        clip = open_clip.create_model(model_name, pretrained=tag, **options)
        self.quick_gelu = isinstance(clip.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
        self.architecture_context_length = clip.positional_embedding.shape[0]

        # A checkpoint with the architecture's text length is loaded, then
        # stretched. One with any other length is loaded after stretching.
        pending = source
        if source is not None and _text_length(source) == self.architecture_context_length:
            self._load_strict(clip, source, pretrained)
            pending = None
        self._set_context_length(clip, context_length)
        if pending is not None:
            self._load_strict(clip, pending, pretrained)
        if source is not None or tag:
            origin = f"{source.source_format} checkpoint " if source is not None else "open_clip tag "
            logger.info(
                "Loaded pretrained %s weights from %s%s (QuickGELU: %s)", model_name, origin, pretrained, self.quick_gelu
            )
        return clip

    def _read_pretrained(self, pretrained: Optional[str]) -> Tuple[Optional[str], Optional[OpenClipState]]:
        """Split ``model.pretrained`` into an open_clip tag or a checkpoint read from disk."""
        if not pretrained:
            return None, None
        pretrained = str(pretrained)
        if os.path.exists(pretrained):
            return None, read_checkpoint(pretrained, self.allow_pickle)
        if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise FileNotFoundError(f"model.pretrained {pretrained!r} looks like a path but no such file exists")
        return pretrained, None

    def _load_strict(self, clip: nn.Module, source: OpenClipState, path: str):
        """Load ``source`` into ``clip``; missing or unexpected keys raise unless the config allows them."""
        expected = clip.state_dict()
        state_dict = source.state_dict
        mismatched = [
            f"clip.{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
            for k, v in state_dict.items()
            if k in expected and v.shape != expected[k].shape
        ]
        if mismatched:
            raise ValueError(
                f"Checkpoint {path} ({source.source_format}) does not fit goal_clip({self.model_name}, "
                f"context_length={clip.positional_embedding.shape[0]}): shapes differ for {mismatched[:10]}"
                f"{_more(mismatched)}. "
                "Set model.model_name to the checkpoint's architecture and model.context_length to its text length"
            )

        missing = [f"clip.{k}" for k in expected if k not in state_dict]
        unexpected = [f"clip.{k}" for k in state_dict if k not in expected] + list(source.unmapped_keys)
        bad_missing = [k for k in missing if not _matches_any(k, self.allowed_missing_keys)]
        bad_unexpected = [k for k in unexpected if not _matches_any(k, self.allowed_unexpected_keys)]
        if bad_missing or bad_unexpected:
            raise ValueError(
                f"Checkpoint {path} ({source.source_format}) does not match goal_clip({self.model_name}): "
                f"missing keys {bad_missing[:10]}, unexpected keys {bad_unexpected[:10]}"
                f"{_more(bad_missing, bad_unexpected)}. Check model.model_name, or list the keys (glob patterns) "
                "in model.allowed_missing_keys / model.allowed_unexpected_keys to load anyway"
            )
        if missing or unexpected:
            logger.warning(
                "Checkpoint %s: allowed missing keys %s keep their current values; allowed unexpected keys %s are ignored",
                path, missing, unexpected,
            )
        return clip.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)

    def _set_context_length(self, clip: nn.Module, context_length: int) -> None:
        stretched = stretch_positional_embedding(clip.positional_embedding, context_length, self.keep_positions)
        clip.positional_embedding = nn.Parameter(stretched)
        clip.attn_mask = causal_mask(context_length)
        clip.context_length = context_length
        self.context_length = context_length

    def _check_supported(self) -> None:
        visual = getattr(self.clip, "visual", None)
        supported = (
            isinstance(self.clip, open_clip.CLIP)
            and isinstance(visual, open_clip.transformer.VisionTransformer)
            and visual.attn_pool is None
            and not visual.final_ln_after_pool
            and visual.pool_type == "tok"
            and self.clip.text_pool_type == "argmax"
        )
        if not supported:
            raise ValueError(
                f"open_clip model {self.model_name!r} is not supported: goal_clip needs a ViT image tower "
                "with class-token pooling and the CLIP text tower (argmax pooling), as in the OpenAI CLIP models"
            )

    def _zero_kept_position_grads(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[: self.keep_positions] = 0
        return grad

    @property
    def patch_size(self) -> Tuple[int, int]:
        return tuple(self.clip.visual.patch_size)

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(self.clip.visual.image_size)

    @property
    def tokenizer(self) -> SpanTokenizer:
        if self._tokenizer is None:
            self._tokenizer = SpanTokenizer.from_open_clip(self.model_name, self.context_length)
        return self._tokenizer

    def optimizer_param_groups(self, weight_decay: float):
        """Split trainable parameters into decayed weights and undecayed gains, biases and embeddings.

        The positional embedding skips weight decay when its kept positions
        are frozen, because AdamW's decay would move them despite zero gradients.
        """
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            skip = param.ndim < 2 or name.endswith(".bias") or ".ln_" in name or "logit_scale" in name
            if self.freeze_kept_positions and name == "clip.positional_embedding":
                skip = True
            (no_decay if skip else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # ----- encoders -----------------------------------------------------

    def _image_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and projection of the image tower, applied to ``(..., width)`` tokens."""
        visual = self.clip.visual
        out = visual.ln_post(tokens)
        return out @ visual.proj if visual.proj is not None else out

    def _text_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and projection of the text tower, applied to ``(..., width)`` tokens."""
        out = self.clip.ln_final(tokens)
        projection = self.clip.text_projection
        if projection is None:
            return out
        if isinstance(projection, nn.Linear):
            return projection(out)
        return out @ projection

    def encode_image_tokens(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode ``(B, 3, H, W)`` images.

        Returns ``(embeds, patch_tokens)``: unnormalized ``(B, D)`` embeddings,
        equal to ``open_clip``'s ``encode_image``, and ``(B, N, width)`` patch
        tokens of the last layer before ``ln_post`` (class token excluded).
        """
        visual = self.clip.visual
        tokens = visual.transformer(visual._embeds(image))  # (B, 1 + N, width)
        return self._image_head(tokens[:, 0]), tokens[:, 1:]

    def encode_text_tokens(self, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode ``(B, L)`` token ids.

        Returns ``(embeds, tokens)``: unnormalized ``(B, D)`` embeddings taken
        at the end token, equal to ``open_clip``'s ``encode_text``, and the
        ``(B, T, width)`` last-layer tokens before ``ln_final``, where ``T <= L``
        ends at the batch's last end token. The attention mask is causal, so
        the positions after it change nothing before it and are not computed.
        """
        clip = self.clip
        end_positions = text.argmax(dim=-1)  # the end token has the largest id
        length = int(end_positions.max()) + 1 if text.numel() else text.shape[1]
        text = text[:, :length]
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(text).to(cast_dtype) + clip.positional_embedding[:length].to(cast_dtype)
        attn_mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
        tokens = clip.transformer(x, attn_mask=attn_mask)
        pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), end_positions]
        return self._text_head(pooled), tokens

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().clamp(max=100.0)

    # ----- training -----------------------------------------------------

    def forward(self, samples: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Compute the GOAL loss for a batch from ``GoalTrainDataset``.

        ``samples`` contains ``image (B, 3, H, W)``, ``text_input (B, L)`` and,
        for the local terms, ``local_image (B, K, 3, H, W)``, ``local_text
        (B, K, L)``, ``local_valid (B, K)``, ``region_box (B, K, 4)`` in input
        pixels, ``region_valid (B, K)``, ``span (B, K, 2)`` and ``span_valid (B, K)``.
        """
        image, text = samples["image"], samples["text_input"]
        batch = image.shape[0]
        use_local = self.loss_cfg.uses_local_inputs
        if use_local and "local_image" not in samples:
            raise ValueError(
                "The loss config has local or TSL terms but the batch has no local pairs; use a training "
                "list with 'segment' entries or set model.loss.local_weight and the tsl weights to 0"
            )

        if use_local:
            images = torch.cat([image, samples["local_image"].flatten(0, 1)])
            texts = torch.cat([text, samples["local_text"].flatten(0, 1)])
        else:
            images, texts = image, text
        image_embeds, patch_tokens = self.encode_image_tokens(images)
        text_embeds, text_tokens = self.encode_text_tokens(texts)

        inputs = {
            "image_global": F.normalize(image_embeds[:batch], dim=-1),
            "text_global": F.normalize(text_embeds[:batch], dim=-1),
        }
        if use_local:
            inputs.update(self._local_inputs(samples, image_embeds, text_embeds, patch_tokens, text_tokens, batch))

        output = self.loss_fn(self.logit_scale(), **inputs)
        output["logit_scale"] = self.logit_scale().detach()
        return output

    def _local_inputs(self, samples, image_embeds, text_embeds, patch_tokens, text_tokens, batch):
        inputs = {
            "image_local": F.normalize(image_embeds[batch:], dim=-1),
            "text_local": F.normalize(text_embeds[batch:], dim=-1),
            "local_valid": samples["local_valid"].flatten(),
        }
        if self.loss_cfg.tsl_image_weight > 0:
            patch_mask = boxes_to_patch_mask(samples["region_box"], self.image_size, self.patch_size)
            region_valid = samples["region_valid"] & patch_mask.any(-1)
            inputs["region_pooled"] = self._image_head(masked_mean(patch_tokens[:batch], patch_mask)).flatten(0, 1)
            inputs["region_valid"] = region_valid.flatten()
        if self.loss_cfg.tsl_text_weight > 0:
            token_mask = spans_to_token_mask(samples["span"], samples["span_valid"], text_tokens.shape[1])
            inputs["span_pooled"] = self._text_head(masked_mean(text_tokens[:batch], token_mask)).flatten(0, 1)
            inputs["span_valid"] = samples["span_valid"].flatten() & token_mask.flatten(0, 1).any(-1)
        return inputs

    # ----- inference and evaluation ------------------------------------

    def _tokenize(self, text) -> torch.Tensor:
        if isinstance(text, torch.Tensor):
            return text.to(self.device)
        if isinstance(text, str):
            text = [text]
        return torch.stack([self.tokenizer.encode_caption(t).tokens for t in text]).to(self.device)

    @torch.no_grad()
    def extract_features(self, samples: Dict, mode: str = "multimodal") -> Dict[str, torch.Tensor]:
        """Return L2-normalized ``image_embeds`` and/or ``text_embeds`` for ``samples``.

        ``samples["image"]`` is a ``(B, 3, H, W)`` tensor from the eval image
        processor; ``samples["text_input"]`` is a list of strings (tokenized
        here, 248 positions) or a ``(B, L)`` tensor of token ids.
        ``mode`` is ``"image"``, ``"text"`` or ``"multimodal"`` (both).
        """
        if mode not in ("image", "text", "multimodal"):
            raise ValueError(f"mode must be 'image', 'text' or 'multimodal', got {mode!r}")
        features = {}
        if mode in ("image", "multimodal"):
            embeds, _ = self.encode_image_tokens(samples["image"].to(self.device))
            features["image_embeds"] = F.normalize(embeds.float(), dim=-1)
        if mode in ("text", "multimodal"):
            embeds, _ = self.encode_text_tokens(self._tokenize(samples["text_input"]))
            features["text_embeds"] = F.normalize(embeds.float(), dim=-1)
        return features

    @torch.no_grad()
    def compute_sim_matrix(self, data_loader, task_cfg=None) -> Tuple[np.ndarray, np.ndarray]:
        """Score every image of ``data_loader.dataset`` against every caption, in fp32.

        Images come from the loader (its batches carry ``"index"``, so a
        sharded loader works); captions come from ``dataset.text`` and are
        split across ranks. Returns ``(score_i2t, score_t2i)`` as numpy arrays
        of shape ``(n_images, n_texts)`` and ``(n_texts, n_images)``, on every rank.
        """
        dataset = data_loader.dataset
        batch_size = int(task_cfg.get("batch_size_eval", 64)) if task_cfg is not None else 64
        autocast = eval_autocast(task_cfg, self.device)

        image_rows, image_index = [], []
        for batch in tqdm(data_loader, desc="Encoding images", disable=not goal_dist.is_main_process(), leave=False):
            with autocast:
                image_rows.append(self.extract_features({"image": batch["image"]}, mode="image")["image_embeds"])
            image_index.append(batch["index"].to(self.device))
        image_embeds = gather_rows(torch.cat(image_rows), torch.cat(image_index), len(dataset.image))

        def encode_texts(ids: torch.Tensor) -> torch.Tensor:
            texts = [dataset.text[i] for i in ids.tolist()]
            texts = torch.stack(texts) if isinstance(texts[0], torch.Tensor) else texts
            with autocast:
                return self.extract_features({"text_input": texts}, mode="text")["text_embeds"]

        text_embeds = encode_rank_share(len(dataset.text), batch_size, encode_texts, like=image_embeds)

        score_i2t = (image_embeds.float() @ text_embeds.float().T).cpu().numpy()
        return score_i2t, np.ascontiguousarray(score_i2t.T)

    # ----- checkpoints and config ----------------------------------------

    def load_checkpoint(self, url_or_filename: str):
        """Load fine-tuned weights in any supported format, strictly (see ``allowed_missing_keys``).

        A checkpoint with the architecture's text length is stretched to
        ``context_length`` first, as a pretrained one is.
        """
        source = read_checkpoint(url_or_filename, self.allow_pickle)
        return self._load_finetuned(source, url_or_filename)

    def _load_finetuned(self, source: OpenClipState, path: str):
        positions = source.state_dict.get("positional_embedding")
        if positions is not None and positions.shape[0] == self.architecture_context_length != self.context_length:
            stretched = stretch_positional_embedding(positions, self.context_length, self.keep_positions)
            source = OpenClipState(
                {**source.state_dict, "positional_embedding": stretched}, source.source_format, source.unmapped_keys
            )
        result = self._load_strict(self.clip, source, path)
        logger.info("Loaded fine-tuned weights from %s checkpoint %s", source.source_format, path)
        return result

    @classmethod
    def from_config(cls, cfg):
        check_keys(cfg, MODEL_CONFIG_KEYS, "model")
        loss = _to_container(cfg.get("loss", None))
        allow_pickle = bool(cfg.get("allow_pickle", False))
        pretrained = cfg.get("pretrained", None)
        quick_gelu = cfg.get("quick_gelu", None)

        finetuned = cfg.get("finetuned", None) if cfg.get("load_finetuned", True) else None
        finetuned_source = read_checkpoint(finetuned, allow_pickle) if finetuned else None
        if quick_gelu is None and not pretrained and finetuned_source is not None:
            # Without pretrained weights, the fine-tuned ones decide the activation.
            quick_gelu = default_quick_gelu(cfg.model_name, None, finetuned_source)

        model = cls(
            model_name=cfg.model_name,
            pretrained=pretrained,
            context_length=int(cfg.get("context_length", 248)),
            keep_positions=int(cfg.get("keep_positions", 20)),
            freeze_kept_positions=bool(cfg.get("freeze_kept_positions", False)),
            loss=loss,
            allow_pickle=allow_pickle,
            quick_gelu=None if quick_gelu is None else bool(quick_gelu),
            allowed_missing_keys=_to_container(cfg.get("allowed_missing_keys", None)) or (),
            allowed_unexpected_keys=_to_container(cfg.get("allowed_unexpected_keys", None)) or (),
        )
        if finetuned_source is not None:
            model._load_finetuned(finetuned_source, finetuned)
        return model


def _to_container(value):
    """Return plain Python containers for an OmegaConf node; other values unchanged."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _patterns(value, name: str) -> List[str]:
    if isinstance(value, str) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"model.{name} must be a list of glob patterns (strings), got {value!r}")
    return list(value)


def _matches_any(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _more(*key_lists) -> str:
    hidden = sum(max(0, len(keys) - 10) for keys in key_lists)
    return f" and {hidden} more" if hidden else ""


def _text_length(source: OpenClipState) -> Optional[int]:
    positions = source.state_dict.get("positional_embedding")
    return None if positions is None else positions.shape[0]
