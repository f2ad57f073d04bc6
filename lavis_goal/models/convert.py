"""CLIP checkpoint formats: detection from key names, and key mapping to and from open_clip.

Every format is converted to open_clip ``CLIP`` names, which ``goal_clip``
loads under ``clip.``. The formats:

- ``goal_clip``: this project's checkpoints, ``clip.<open_clip name>``.
- ``open_clip``: open_clip ``CLIP`` state dicts. OpenAI CLIP's non-JIT state
  dicts use the same names plus the metadata entries ``input_resolution``,
  ``context_length`` and ``vocab_size``, which are dropped.
- ``long_clip``: Long-CLIP (Zhang et al., ECCV 2024, github.com/beichenzbc/Long-CLIP,
  ``model/model_longclip.py``). It keeps OpenAI CLIP's names, with a 248-row
  ``positional_embedding`` and a 248-row ``positional_embedding_res``. Its text
  encoder adds ``positional_embedding * mask1 + positional_embedding_res * mask2``,
  where ``mask1`` is 1 on the first 20 rows and ``mask2`` is 1 on the others.
  Loading folds the two into one embedding.
- ``hf``: a ``transformers.CLIPModel`` state dict. Attention has separate
  q/k/v projections where open_clip has one fused ``in_proj``, and the
  projection matrices are stored transposed.

NOTE: the tests check these mappings on tiny models built with transformers
4.26 and open_clip 2.32, and on a Long-CLIP layout rebuilt from its source.
The released GOAL and Long-CLIP files themselves were not loaded.
"""

import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, List, Optional

import open_clip
import torch

from lavis_goal.models.checkpoints import extract_state_dict, load_checkpoint_file, resolve_checkpoint_path

logger = logging.getLogger(__name__)

GOAL_CLIP, OPEN_CLIP, LONG_CLIP, HF = "goal_clip", "open_clip", "long_clip", "hf"
FORMATS = (GOAL_CLIP, OPEN_CLIP, LONG_CLIP, HF)

# Long-CLIP's text encoder takes its first 20 rows from positional_embedding
# and the rest from positional_embedding_res (mask1 / mask2 in model_longclip.py).
LONG_CLIP_KEPT_ROWS = 20

OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
_OPEN_CLIP_MARKERS = (
    "token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection",
    "visual.conv1.weight", "visual.class_embedding", "visual.proj",
)

# Names outside the encoder layers: Hugging Face -> open_clip.
_HF_RENAMES = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
# Stored as (embed_dim, width) Linear weights in transformers and as (width, embed_dim) matrices in open_clip.
_HF_TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
# Encoder layer parts: Hugging Face -> open_clip, inside one layer.
_HF_LAYER_RENAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_HF_TOWERS = {"text_model": "transformer.resblocks", "vision_model": "visual.transformer.resblocks"}
_HF_POSITION_IDS = {
    "text_model.embeddings.position_ids": "positional_embedding",
    "vision_model.embeddings.position_ids": "visual.positional_embedding",
}
_HF_LAYER_KEY = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_OPEN_CLIP_LAYER_KEY = re.compile(r"^(transformer|visual\.transformer)\.resblocks\.(\d+)\.(.+)[._](weight|bias)$")
_QKV = ("q_proj", "k_proj", "v_proj")


@dataclass
class OpenClipState:
    """A checkpoint converted to open_clip names.

    Attributes:
        state_dict: tensors under open_clip ``CLIP`` names.
        source_format: one of ``FORMATS``.
        unmapped_keys: checkpoint keys without an open_clip name, spelled as in
            the checkpoint. Loading treats them as unexpected keys.
        hf_config: the ``config.json`` found next to a Hugging Face checkpoint, if any.
        saved_config: the LAVIS run config saved in this project's checkpoints, if any.
    """

    state_dict: Dict[str, torch.Tensor]
    source_format: str
    unmapped_keys: List[str] = field(default_factory=list)
    hf_config: Optional[dict] = None
    saved_config: Optional[dict] = None


def read_checkpoint(path: str, allow_pickle: bool = False) -> OpenClipState:
    """Read a checkpoint file (or a folder containing one) in any supported format, with open_clip names."""
    path = resolve_checkpoint_path(path)
    checkpoint = load_checkpoint_file(path, allow_pickle)
    saved_config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    converted = to_open_clip(extract_state_dict(checkpoint, path), path)
    if isinstance(saved_config, dict):
        converted.saved_config = saved_config
    if converted.source_format == HF:
        converted.hf_config = _read_hf_config(path)
    return converted


def detect_format(keys, path: str = "checkpoint") -> str:
    """Return the format of a state dict from its key names, or raise ``ValueError`` naming the unknown keys."""
    keys = set(keys)
    if any(k.startswith("clip.") for k in keys):
        return GOAL_CLIP
    if any(k.startswith(("text_model.", "vision_model.")) for k in keys):
        return HF
    if "positional_embedding_res" in keys:
        return LONG_CLIP
    if keys & set(_OPEN_CLIP_MARKERS):
        return OPEN_CLIP
    listed = ", ".join(sorted(keys)[:12]) + (f", ... ({len(keys)} keys in all)" if len(keys) > 12 else "")
    raise ValueError(
        f"Checkpoint {path} has an unknown layout; its keys are: {listed or 'none'}. goal_clip reads "
        "transformers CLIPModel state dicts (text_model.*, vision_model.*), Long-CLIP and OpenAI CLIP "
        "state dicts, open_clip CLIP state dicts and this project's checkpoints (clip.*)"
    )


def to_open_clip(state_dict: Dict[str, torch.Tensor], path: str = "checkpoint") -> OpenClipState:
    """Convert a state dict in any supported format to open_clip names."""
    source_format = detect_format(state_dict, path)
    if source_format == GOAL_CLIP:
        mapped = {k[len("clip.") :]: v for k, v in state_dict.items() if k.startswith("clip.")}
        unmapped = sorted(k for k in state_dict if not k.startswith("clip."))
        return OpenClipState(mapped, source_format, unmapped)
    if source_format == HF:
        mapped, unmapped = hf_to_open_clip(state_dict, path)
        return OpenClipState(mapped, source_format, unmapped)

    mapped = {k: v for k, v in state_dict.items() if k not in OPENAI_METADATA_KEYS}
    if source_format == LONG_CLIP:
        mapped = _fold_long_clip_positions(mapped, path)
    return OpenClipState(mapped, source_format)


def _fold_long_clip_positions(state_dict: Dict[str, torch.Tensor], path: str) -> Dict[str, torch.Tensor]:
    state_dict = dict(state_dict)
    positions = state_dict.get("positional_embedding")
    residual = state_dict.pop("positional_embedding_res")
    if positions is None or positions.shape != residual.shape or positions.shape[0] <= LONG_CLIP_KEPT_ROWS:
        raise ValueError(
            f"Long-CLIP checkpoint {path}: positional_embedding "
            f"{tuple(positions.shape) if positions is not None else None} "
            f"and positional_embedding_res {tuple(residual.shape)} must have the same shape and more than "
            f"{LONG_CLIP_KEPT_ROWS} rows"
        )
    state_dict["positional_embedding"] = torch.cat([positions[:LONG_CLIP_KEPT_ROWS], residual[LONG_CLIP_KEPT_ROWS:]])
    return state_dict


def hf_to_open_clip(state_dict: Dict[str, torch.Tensor], path: str = "checkpoint"):
    """Map a ``transformers.CLIPModel`` state dict to open_clip names.

    Returns ``(open_clip_state_dict, unmapped_keys)``. ``position_ids``
    buffers are checked to be ``0 .. L-1`` (the only order open_clip can
    represent) and dropped.
    """
    mapped: Dict[str, torch.Tensor] = {}
    unmapped: List[str] = []
    qkv: Dict[tuple, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key in _HF_RENAMES:
            mapped[_HF_RENAMES[key]] = value
        elif key in _HF_TRANSPOSED:
            mapped[_HF_TRANSPOSED[key]] = value.t().contiguous()
        elif key in _HF_POSITION_IDS:
            _check_position_ids(key, value, path)
        else:
            match = _HF_LAYER_KEY.match(key)
            part = match.group(3) if match else None
            if match and part.startswith("self_attn.") and part[len("self_attn.") :] in _QKV:
                tower, layer, _, kind = match.groups()
                qkv.setdefault((tower, layer, kind), {})[part[len("self_attn.") :]] = value
            elif match and part in _HF_LAYER_RENAMES:
                tower, layer, _, kind = match.groups()
                mapped[f"{_HF_TOWERS[tower]}.{layer}.{_HF_LAYER_RENAMES[part]}.{kind}"] = value
            else:
                unmapped.append(key)

    for (tower, layer, kind), parts in qkv.items():
        if len(parts) < len(_QKV):
            # A partial q/k/v set cannot be fused; report the parts and let the fused key show as missing.
            unmapped += [f"{tower}.encoder.layers.{layer}.self_attn.{name}.{kind}" for name in sorted(parts)]
            continue
        mapped[f"{_HF_TOWERS[tower]}.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[name] for name in _QKV])
    return mapped, sorted(unmapped)


def _check_position_ids(key: str, value: torch.Tensor, path: str) -> None:
    expected = torch.arange(value.shape[-1])
    if value.reshape(-1).tolist() != expected.tolist():
        raise ValueError(
            f"Checkpoint {path}: {key} is not 0, 1, ..., {value.shape[-1] - 1}. open_clip reads position i "
            "from row i of the positional embedding, so this checkpoint cannot be converted"
        )


def open_clip_to_hf(state_dict: Dict[str, torch.Tensor], position_ids: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """Map an open_clip ``CLIP`` state dict to ``transformers.CLIPModel`` names.

    ``position_ids`` adds the ``position_ids`` buffers; ``None`` adds them
    when the installed transformers stores them in its state dicts (4.26 does).
    Raises ``ValueError`` naming any key that has no Hugging Face name.
    """
    if position_ids is None:
        position_ids = hf_stores_position_ids()
    renames = {v: k for k, v in _HF_RENAMES.items()}
    transposed = {v: k for k, v in _HF_TRANSPOSED.items()}
    towers = {v: k for k, v in _HF_TOWERS.items()}
    layer_renames = {v: k for k, v in _HF_LAYER_RENAMES.items()}

    converted: Dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state_dict.items():
        if key in renames:
            converted[renames[key]] = value
            continue
        if key in transposed:
            converted[transposed[key]] = value.t().contiguous()
            continue
        match = _OPEN_CLIP_LAYER_KEY.match(key)
        if match is None:
            unmapped.append(key)
            continue
        tower, layer, part, kind = match.groups()
        prefix = f"{towers[f'{tower}.resblocks']}.encoder.layers.{layer}"
        if part == "attn.in_proj":
            for name, chunk in zip(_QKV, value.chunk(3)):
                converted[f"{prefix}.self_attn.{name}.{kind}"] = chunk.clone()
        elif part in layer_renames:
            converted[f"{prefix}.{layer_renames[part]}.{kind}"] = value
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(
            f"These open_clip keys have no transformers CLIPModel name: {sorted(unmapped)[:10]}. Only the "
            "OpenAI CLIP layout (ViT image tower, class-token pooling, no extra layers) converts"
        )

    if position_ids:
        for hf_key, source in _HF_POSITION_IDS.items():
            if source in state_dict:
                converted[hf_key] = torch.arange(state_dict[source].shape[0]).unsqueeze(0)
    return converted


@lru_cache(maxsize=1)
def hf_stores_position_ids() -> bool:
    """Return whether the installed transformers keeps ``position_ids`` in CLIPModel state dicts."""
    from transformers import CLIPTextConfig
    from transformers.models.clip.modeling_clip import CLIPTextEmbeddings

    embeddings = CLIPTextEmbeddings(CLIPTextConfig(vocab_size=2, hidden_size=4, max_position_embeddings=2))
    return "position_ids" in embeddings.state_dict()


def _read_hf_config(path: str) -> Optional[dict]:
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config_path):
        return None
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_path} next to checkpoint {path} is not valid JSON ({error}); fix or remove it") from error
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} next to checkpoint {path} is not a JSON object; fix or remove it")
    return config


def hf_hidden_act(hf_config: Optional[dict], path: str = "checkpoint") -> str:
    """Return the activation of a CLIPModel ``config.json``, or ``quick_gelu`` (transformers' default) without one."""
    if hf_config is None:
        return "quick_gelu"
    acts = {
        tower: (hf_config.get(f"{tower}_config") or {}).get("hidden_act", "quick_gelu")
        for tower in ("text", "vision")
    }
    if acts["text"] != acts["vision"] or acts["text"] not in ("quick_gelu", "gelu"):
        raise ValueError(
            f"config.json next to {path} sets hidden_act {acts}; goal_clip supports quick_gelu or gelu, "
            "the same in both towers"
        )
    return acts["text"]


def default_quick_gelu(model_name: str, pretrained_tag: Optional[str], source: Optional[OpenClipState]) -> Optional[bool]:
    """Return the activation the pretrained weights were trained with, or None where the architecture decides.

    open_clip marks its OpenAI tags ``quick_gelu`` but builds ``ViT-B-16`` with
    ``nn.GELU``, so a tag's mark is applied here. Long-CLIP fine-tunes OpenAI
    CLIP, which uses QuickGELU. A Hugging Face checkpoint uses the
    ``hidden_act`` of the ``config.json`` next to it, else transformers'
    default ``quick_gelu``. open_clip state dicts do not record it.
    """
    if pretrained_tag:
        pretrained_cfg = open_clip.get_pretrained_cfg(model_name, pretrained_tag) or {}
        return True if pretrained_cfg.get("quick_gelu") else None
    if source is None:
        return None
    if source.source_format == LONG_CLIP:
        return True
    if source.source_format == HF:
        return hf_hidden_act(source.hf_config) == "quick_gelu"
    return None


@dataclass
class ClipShape:
    """Sizes of a ViT CLIP, read from its open_clip state dict (which does not store head counts)."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_mlp_width: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_mlp_width: int

    @classmethod
    def from_state_dict(cls, state_dict: Dict[str, torch.Tensor]) -> "ClipShape":
        needed = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "positional_embedding",
                  "token_embedding.weight", "text_projection", "transformer.resblocks.0.mlp.c_fc.weight",
                  "visual.transformer.resblocks.0.mlp.c_fc.weight")
        missing = [k for k in needed if k not in state_dict]
        if missing:
            raise ValueError(f"The state dict lacks {missing}, so its CLIP architecture cannot be read")
        patch_size = state_dict["visual.conv1.weight"].shape[-1]
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        return cls(
            embed_dim=state_dict["visual.proj"].shape[1],
            image_size=grid * patch_size,
            patch_size=patch_size,
            vision_width=state_dict["visual.conv1.weight"].shape[0],
            vision_layers=_count_layers(state_dict, "visual.transformer.resblocks."),
            vision_mlp_width=state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            context_length=state_dict["positional_embedding"].shape[0],
            vocab_size=state_dict["token_embedding.weight"].shape[0],
            text_width=state_dict["token_embedding.weight"].shape[1],
            text_layers=_count_layers(state_dict, "transformer.resblocks."),
            text_mlp_width=state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        )


def _count_layers(state_dict, prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)})


def hf_clip_config(shape: ClipShape, text_heads: int, vision_heads: int, quick_gelu: bool):
    """Build the ``transformers.CLIPConfig`` of a model with these sizes.

    Token ids keep CLIPTextConfig's defaults; transformers 4.26 pools the
    text at ``argmax(input_ids)``, as open_clip does. LayerNorm eps is 1e-5 in both libraries.
    """
    from transformers import CLIPConfig

    act = "quick_gelu" if quick_gelu else "gelu"
    config = CLIPConfig(
        text_config={
            "vocab_size": shape.vocab_size,
            "hidden_size": shape.text_width,
            "intermediate_size": shape.text_mlp_width,
            "num_hidden_layers": shape.text_layers,
            "num_attention_heads": text_heads,
            "max_position_embeddings": shape.context_length,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
        },
        vision_config={
            "hidden_size": shape.vision_width,
            "intermediate_size": shape.vision_mlp_width,
            "num_hidden_layers": shape.vision_layers,
            "num_attention_heads": vision_heads,
            "image_size": shape.image_size,
            "patch_size": shape.patch_size,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
        },
        projection_dim=shape.embed_dim,
    )
    config.architectures = ["CLIPModel"]
    return config


def open_clip_model_cfg(shape: ClipShape, text_heads: int, vision_heads: int, quick_gelu: bool) -> Dict[str, Any]:
    """Build the open_clip model config (``open_clip_config.json``'s ``model_cfg``) of a model with these sizes."""
    cfg: Dict[str, Any] = {
        "embed_dim": shape.embed_dim,
        "vision_cfg": {
            "image_size": shape.image_size,
            "layers": shape.vision_layers,
            "width": shape.vision_width,
            "head_width": shape.vision_width // vision_heads,
            "mlp_ratio": shape.vision_mlp_width / shape.vision_width,
            "patch_size": shape.patch_size,
        },
        "text_cfg": {
            "context_length": shape.context_length,
            "vocab_size": shape.vocab_size,
            "width": shape.text_width,
            "heads": text_heads,
            "layers": shape.text_layers,
            "mlp_ratio": shape.text_mlp_width / shape.text_width,
        },
    }
    if quick_gelu:
        cfg["quick_gelu"] = True
    return cfg


def heads_from_open_clip_config(model_name: str, shape: ClipShape):
    """Return ``(text_heads, vision_heads)`` of a registered open_clip architecture, checked against ``shape``."""
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"Unknown open_clip architecture {model_name!r}; see open_clip.list_models()")
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    defaults_v, defaults_t = open_clip.CLIPVisionCfg(), open_clip.CLIPTextCfg()
    widths = (vision.get("width", defaults_v.width), text.get("width", defaults_t.width))
    if widths != (shape.vision_width, shape.text_width):
        raise ValueError(
            f"open_clip architecture {model_name!r} has widths (image, text) {widths}, but the checkpoint has "
            f"{(shape.vision_width, shape.text_width)}; name the architecture the checkpoint was trained with"
        )
    head_width = vision.get("head_width", defaults_v.head_width)
    return text.get("heads", defaults_t.heads), shape.vision_width // head_width
