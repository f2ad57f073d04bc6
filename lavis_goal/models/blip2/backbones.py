"""Vision encoders, Q-Former BERTs and tokenizers for ``goal_blip2``.

LAVIS's ``Blip2Base`` builds the EVA ViT-g or CLIP ViT-L and a Q-Former from
``bert-base-uncased``, downloading the weights. These functions keep that
path and add shapes described by files shipped in ``lavis_goal``, which
build offline with random weights:

- ``goal-tiny-vit``: ``blip2_assets/goal-tiny-vit.json``, the keyword
  arguments of LAVIS's EVA ``VisionTransformer``;
- ``goal-tiny-bert``: ``blip2_assets/goal-tiny-bert/``, a BERT
  ``config.json`` and a WordPiece ``vocab.txt``. The vocabulary contains BERT's
  special tokens, ASCII punctuation, digits and letters with their ``##``
  continuations, and the words used at least twice in the demo captions.
  The BERT has no dropout and ``initializer_range`` 0.3 instead of BERT's
  0.02 (sized for width 768). With small weights at width 64, attention is
  nearly uniform, every long caption gets almost the same ``[CLS]`` output
  (cosine 0.998 between demo captions), and the random model barely learns
  in the demo's 16 steps.

A folder of the same two files (plus ``pytorch_model.bin`` or
``model.safetensors`` for weights) works as a Q-Former BERT too.
"""

import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import Tuple

import torch
import torch.nn as nn
from lavis.models.blip2_models.blip2 import Blip2Base, LayerNorm
from lavis.models.blip2_models.Qformer import BertConfig, BertLMHeadModel
from lavis.models.eva_vit import VisionTransformer, convert_weights_to_fp16
from transformers import BertTokenizer

from lavis_goal.paths import PACKAGE_ROOT

logger = logging.getLogger(__name__)

ASSETS = PACKAGE_ROOT / "models" / "blip2_assets"
LAVIS_VISION_ENCODERS = ("eva_clip_g", "clip_L")
TINY_VIT = "goal-tiny-vit"
HUB_BERT = "bert-base-uncased"
TINY_BERT = "goal-tiny-bert"
VIT_PRECISIONS = ("fp16", "fp32")
_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")


def resolve_bert(bert: str) -> str:
    """Return ``bert-base-uncased`` unchanged, or the folder holding ``config.json`` and ``vocab.txt``.

    ``bert-base-uncased`` is downloaded by ``transformers`` as in LAVIS;
    ``goal-tiny-bert`` is the packaged tiny BERT; any other value must be a folder.
    """
    if bert == HUB_BERT:
        return bert
    folder = ASSETS / TINY_BERT if bert == TINY_BERT else Path(os.path.expanduser(str(bert)))
    if not folder.is_dir():
        raise ValueError(
            f"model.qformer_bert {bert!r} is neither {HUB_BERT!r}, {TINY_BERT!r} nor a folder; "
            "give a folder with config.json and vocab.txt"
        )
    for name in ("config.json", "vocab.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"Q-Former BERT folder {folder} has no {name} (model.qformer_bert)")
    return str(folder)


def build_bert_tokenizer(bert: str) -> BertTokenizer:
    """Build the Q-Former's tokenizer with LAVIS's extra ``[DEC]`` token (the decoder's start token)."""
    source = resolve_bert(bert)
    if source == HUB_BERT:
        tokenizer = BertTokenizer.from_pretrained(HUB_BERT)
    else:
        tokenizer = BertTokenizer(vocab_file=os.path.join(source, "vocab.txt"), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def build_qformer(bert: str, num_query_token: int, vision_width: int, cross_attention_freq: int):
    """Build LAVIS's Q-Former (``BertLMHeadModel`` with cross-attention) and its query tokens.

    Returns ``(qformer, query_tokens)`` with ``query_tokens`` of shape ``(1, num_query_token, hidden)``.
    """
    source = resolve_bert(bert)
    if source == HUB_BERT:
        return Blip2Base.init_Qformer(num_query_token, vision_width, cross_attention_freq)

    config = BertConfig.from_json_file(os.path.join(source, "config.json"))
    config.encoder_width = vision_width
    config.add_cross_attention = True
    config.cross_attention_freq = cross_attention_freq
    config.query_length = num_query_token
    weights = [name for name in _WEIGHT_FILES if os.path.isfile(os.path.join(source, name))]
    if weights:
        qformer = BertLMHeadModel.from_pretrained(source, config=config)
        logger.info("Q-Former initialised from %s", os.path.join(source, weights[0]))
    else:
        qformer = BertLMHeadModel(config)
    query_tokens = nn.Parameter(torch.zeros(1, num_query_token, config.hidden_size))
    query_tokens.data.normal_(mean=0.0, std=config.initializer_range)
    return qformer, query_tokens


def build_vision_encoder(model_name: str, img_size: int, drop_path_rate: float, use_grad_checkpoint: bool, precision: str):
    """Build ``(visual_encoder, ln_vision)``: LAVIS's encoders by name, or a ViT described by a JSON file.

    ``model_name`` is ``eva_clip_g`` or ``clip_L`` (LAVIS downloads their
    weights), ``goal-tiny-vit``, or the path of a JSON file with the
    ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``,
    ``qkv_bias`` and ``layer_norm_eps`` of an EVA ``VisionTransformer``, built
    with random weights.
    """
    if precision not in VIT_PRECISIONS:
        raise ValueError(f"model.vit_precision must be one of {VIT_PRECISIONS}, got {precision!r}")
    if model_name in LAVIS_VISION_ENCODERS:
        return Blip2Base.init_vision_encoder(model_name, img_size, drop_path_rate, use_grad_checkpoint, precision)

    path = ASSETS / f"{TINY_VIT}.json" if model_name == TINY_VIT else Path(os.path.expanduser(str(model_name)))
    if not path.is_file():
        raise ValueError(
            f"model.vit_model {model_name!r} is none of {', '.join(LAVIS_VISION_ENCODERS + (TINY_VIT,))} "
            "and no such JSON file exists"
        )
    spec = json.loads(path.read_text(encoding="utf-8"))
    eps = spec.pop("layer_norm_eps", 1e-6)
    try:
        encoder = VisionTransformer(
            img_size=img_size,
            use_mean_pooling=False,
            drop_path_rate=drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=eps),
            use_checkpoint=use_grad_checkpoint,
            **spec,
        )
    except TypeError as error:
        raise ValueError(f"Vision encoder file {path} has a key that LAVIS's EVA VisionTransformer does not take: {error}") from error
    if precision == "fp16":
        convert_weights_to_fp16(encoder)
    return encoder, LayerNorm(encoder.num_features)


def vision_grid(visual_encoder: nn.Module) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Return ``(image_size, patch_size)``, each ``(height, width)``, of LAVIS's EVA or CLIP ViT."""
    patch_embed = getattr(visual_encoder, "patch_embed", None)
    if patch_embed is not None:
        return tuple(patch_embed.img_size), tuple(patch_embed.patch_size)
    size = visual_encoder.input_resolution
    return (size, size), tuple(visual_encoder.conv1.kernel_size)
