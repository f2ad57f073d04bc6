"""Export a CLIP checkpoint as a transformers ``CLIPModel`` or an open_clip state dict.

    python -m lavis_goal.convert --to hf|open_clip IN OUT

The tensors are renamed and reshaped, never resized, so the text length
(e.g. 248 positions) is kept.
"""

import argparse
import json
import logging
import os
import sys
from typing import Optional, Tuple

import open_clip
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from lavis_goal.common.io import atomic_torch_save, atomic_write_text
from lavis_goal.models import goal_clip  # noqa: F401  registers this package's open_clip architectures
from lavis_goal.models.convert import (
    GOAL_CLIP,
    HF,
    ClipShape,
    OpenClipState,
    default_quick_gelu,
    heads_from_open_clip_config,
    hf_clip_config,
    open_clip_model_cfg,
    open_clip_to_hf,
    read_checkpoint,
)

logger = logging.getLogger(__name__)

HF_WEIGHTS, HF_CONFIG = "pytorch_model.bin", "config.json"
OPEN_CLIP_WEIGHTS, OPEN_CLIP_CONFIG = "open_clip_pytorch_model.bin", "open_clip_config.json"
DEFAULT_HEAD_WIDTH = 64  # OpenAI CLIP's and open_clip's default attention head width

DESCRIPTION = """\
Export a CLIP checkpoint as a transformers CLIPModel (--to hf) or an open_clip
CLIP (--to open_clip) state dict, keeping its text length.

IN is a checkpoint file, or a folder containing one, in any format goal_clip
reads: this project's checkpoint_*.pth, a transformers CLIPModel state dict,
a Long-CLIP or OpenAI CLIP state dict, or an open_clip CLIP state dict.

OUT as a file path receives the state dict alone. OUT as an existing folder,
or a path ending in '/', receives the weights and a config:
  --to hf:        pytorch_model.bin and config.json (a CLIPConfig), which
                  transformers.CLIPModel.from_pretrained(OUT) reads;
  --to open_clip: open_clip_pytorch_model.bin and open_clip_config.json,
                  open_clip's Hugging Face Hub layout.
Files are written atomically.

Attention head counts and the activation are not stored in the weights. The
config takes them from --model-name and --quick-gelu / --no-quick-gelu, else
from the run config saved in this project's checkpoints, else from a
config.json next to a transformers checkpoint. A transformers checkpoint
without one, and a Long-CLIP checkpoint, use QuickGELU. Heads default to
width / 64. For an open_clip state dict the activation must be given.
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lavis_goal.convert",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--to", required=True, choices=("hf", "open_clip"), help="output format")
    parser.add_argument("input", metavar="IN", help="checkpoint file or folder to convert")
    parser.add_argument("output", metavar="OUT", help="output file, or folder for weights plus config")
    parser.add_argument(
        "--model-name",
        help="open_clip architecture of the checkpoint (e.g. ViT-B-16), read for the config's head counts",
    )
    act = parser.add_mutually_exclusive_group()
    act.add_argument("--quick-gelu", dest="quick_gelu", action="store_true", default=None,
                     help="the model uses QuickGELU, as OpenAI CLIP (config only)")
    act.add_argument("--no-quick-gelu", dest="quick_gelu", action="store_false",
                     help="the model uses GELU (config only)")
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="read IN with full pickle support; only for files you trust",
    )
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> None:
    source = read_checkpoint(args.input, args.allow_pickle)
    if source.unmapped_keys:
        raise ValueError(
            f"Checkpoint {args.input} ({source.source_format}) has keys with no open_clip CLIP name, which "
            f"the export would drop: {source.unmapped_keys[:10]}"
        )
    state_dict = source.state_dict
    weights = open_clip_to_hf(state_dict) if args.to == "hf" else state_dict

    as_folder = os.path.isdir(args.output) or args.output.endswith(("/", os.sep))
    if not as_folder:
        atomic_torch_save(weights, args.output)
        logger.info("Wrote the %s state dict of %s to %s", args.to, args.input, args.output)
        return

    shape = ClipShape.from_state_dict(state_dict)
    text_heads, vision_heads = _head_counts(args, source, shape)
    quick_gelu = _quick_gelu(args, source)
    os.makedirs(args.output, exist_ok=True)
    if args.to == "hf":
        config = hf_clip_config(shape, text_heads, vision_heads, quick_gelu).to_dict()
        weights_name, config_name = HF_WEIGHTS, HF_CONFIG
    else:
        config = {
            "model_cfg": open_clip_model_cfg(shape, text_heads, vision_heads, quick_gelu),
            "preprocess_cfg": {"size": shape.image_size, "mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)},
        }
        weights_name, config_name = OPEN_CLIP_WEIGHTS, OPEN_CLIP_CONFIG
    atomic_torch_save(weights, os.path.join(args.output, weights_name))
    atomic_write_text(os.path.join(args.output, config_name), json.dumps(config, indent=2, sort_keys=True) + "\n")
    logger.info(
        "Wrote %s and %s to %s (%d text positions, heads text %d / image %d, QuickGELU: %s)",
        weights_name, config_name, args.output, shape.context_length, text_heads, vision_heads, quick_gelu,
    )


def _saved_model_config(source: OpenClipState) -> dict:
    if source.source_format != GOAL_CLIP or not isinstance(source.saved_config, dict):
        return {}
    model = source.saved_config.get("model")
    return model if isinstance(model, dict) else {}


def _model_name(args, source: OpenClipState) -> Optional[str]:
    return args.model_name or _saved_model_config(source).get("model_name")


def _head_counts(args, source: OpenClipState, shape: ClipShape) -> Tuple[int, int]:
    model_name = _model_name(args, source)
    if model_name:
        return heads_from_open_clip_config(model_name, shape)
    if source.source_format == HF and source.hf_config:
        text = source.hf_config.get("text_config") or {}
        vision = source.hf_config.get("vision_config") or {}
        if "num_attention_heads" in text and "num_attention_heads" in vision:
            return int(text["num_attention_heads"]), int(vision["num_attention_heads"])
    logger.warning(
        "%s records no attention head counts; using width / %d (pass --model-name to read them from an "
        "open_clip architecture)", args.input, DEFAULT_HEAD_WIDTH,
    )
    return max(1, shape.text_width // DEFAULT_HEAD_WIDTH), max(1, shape.vision_width // DEFAULT_HEAD_WIDTH)


def _quick_gelu(args, source: OpenClipState) -> bool:
    """Return the activation for the config, resolved as ``goal_clip`` resolves it when building the model."""
    if args.quick_gelu is not None:
        return args.quick_gelu
    model_name = _model_name(args, source)
    saved = _saved_model_config(source)
    if saved.get("quick_gelu") is not None:
        return bool(saved["quick_gelu"])

    if saved:
        resolved = _quick_gelu_of_run(model_name, saved, args)
    else:
        resolved = default_quick_gelu(model_name or "", None, source)
    if resolved is None and model_name:
        resolved = bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))
    if resolved is None:
        raise ValueError(
            f"{args.input} ({source.source_format}) does not record its activation; pass --quick-gelu "
            "(OpenAI CLIP and its fine-tunes) or --no-quick-gelu"
        )
    return resolved


def _quick_gelu_of_run(model_name: Optional[str], saved: dict, args) -> Optional[bool]:
    """Resolve the activation of a goal_clip run from its saved model config, as ``GoalCLIP.from_config`` does."""
    pretrained = saved.get("pretrained")
    weights_from = pretrained
    if not pretrained and saved.get("load_finetuned", True):
        weights_from = saved.get("finetuned")
    if not weights_from:
        return None
    if not os.path.exists(str(weights_from)):
        if pretrained and os.sep not in str(pretrained):
            return default_quick_gelu(model_name, pretrained, None)
        raise ValueError(
            f"The run that wrote {args.input} started from {weights_from}, which is not on this machine, so its "
            "activation is unknown; pass --quick-gelu or --no-quick-gelu"
        )
    logger.info("Reading %s to find the activation the run used", weights_from)
    return default_quick_gelu(model_name, None, read_checkpoint(str(weights_from), bool(saved.get("allow_pickle"))))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        convert(args)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
