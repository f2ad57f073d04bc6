"""Command line of LISM: ``python -m lavis_goal.lism --input LIST --output PAIRS.json [options]``.

Run with ``--help`` for the options. The exit status is 0 on success and 2
on invalid input or settings, with a message that names the fix.
"""

import argparse
import logging
import sys
from typing import List, Optional

from lavis_goal.lism.matching import CONFIG_DEFAULT
from lavis_goal.lism.proposers import DEFAULT_MAX_AREA, DEFAULT_MIN_AREA, PROPOSERS, SAM_MODEL_TYPES
from lavis_goal.lism.runner import DEFAULT_MAX_IMAGE_PIXELS, LismConfig, format_summary, run_lism

logger = logging.getLogger("lavis_goal.lism")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lavis_goal.lism",
        description=(
            "LISM: split long captions into sentences, propose regions of each image, and match every sentence "
            "to its most similar region with a goal_clip model. Writes GOAL's training list (original_filename, "
            "original_caption, segment with bbox_coordinates in original pixels), ready for the goal_json dataset."
        ),
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", required=True,
                    help="a JSON list ({filename, caption}), a DOCCI docci_descriptions.jsonlines file, or an Urban1k folder")
    io.add_argument("--image-root", help="folder the image file names are relative to (default: as written; "
                    "DOCCI: images/ next to the file; Urban1k: the folder)")
    io.add_argument("--output", required=True, help="the training list to write (JSON)")
    io.add_argument("--split", action="append", dest="splits",
                    help="DOCCI split to mine (train, test, qual_dev, qual_test); repeat for several; default all")
    io.add_argument("--limit", type=int, help="mine only the first N images")
    io.add_argument("--keep-whole-image", action="store_true",
                    help="also write pairs whose best region is the whole image (dropped by default: TSL cannot learn from them)")
    io.add_argument("--work-dir", help="folder for chunk files, the settings manifest and summary.json (default OUTPUT.parts)")
    io.add_argument("--chunk-size", type=int, default=256, help="images per chunk file; a killed run loses at most one chunk (default 256)")
    io.add_argument("--overwrite", action="store_true", help="discard chunk files of an earlier run made with other settings")

    regions = parser.add_argument_group("region proposals")
    regions.add_argument("--proposer", choices=sorted(PROPOSERS), default="spatial",
                         help="sam: Segment Anything masks; spatial: four quadrants and a centre box; "
                         "felzenszwalb: graph segmentation merged by area (default spatial)")
    regions.add_argument("--min-area", type=float, default=DEFAULT_MIN_AREA,
                         help=f"sam and felzenszwalb: smallest kept mask, as a fraction of the image (default {DEFAULT_MIN_AREA})")
    regions.add_argument("--max-area", type=float, default=DEFAULT_MAX_AREA,
                         help=f"sam and felzenszwalb: largest kept mask, as a fraction of the image (default {DEFAULT_MAX_AREA})")
    regions.add_argument("--max-regions", type=int, default=16, help="felzenszwalb: segments left after merging (default 16)")
    regions.add_argument("--felzenszwalb-scale", type=float, default=200.0,
                         help="felzenszwalb: the segmentation's scale; larger gives larger segments (default 200)")
    regions.add_argument("--working-size", type=int,
                         help="longer image side in pixels that the proposer works at (default 320 for felzenszwalb, 1024 for sam)")
    regions.add_argument("--sam-checkpoint", help="sam: checkpoint file, such as sam_vit_h_4b8939.pth")
    regions.add_argument("--sam-model-type", choices=SAM_MODEL_TYPES, default="vit_h",
                         help="sam: the checkpoint's architecture (default vit_h)")
    regions.add_argument("--sam-points-per-side", type=int, default=32,
                         help="sam: prompt grid of the automatic mask generator (default 32)")

    model = parser.add_argument_group("matching model")
    model.add_argument("--model-type", default="vitb16",
                       help="goal_clip model type: vitb16, vitl14, or tiny (random weights, for tests) (default vitb16)")
    model.add_argument("--pretrained", default=CONFIG_DEFAULT,
                       help="open_clip pretrained tag or checkpoint path; 'none' for random weights "
                       "(default: the model type's config, OpenAI weights for vitb16 and vitl14)")
    model.add_argument("--finetuned", help="a goal_clip checkpoint written by lavis_goal.train")
    model.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto: the GPU when available (default auto)")
    runtime.add_argument("--batch-size", type=int, default=64, help="crops or sentences per forward pass (default 64)")
    runtime.add_argument("--num-workers", type=int, default=2, help="processes decoding images (default 2; 0 decodes in the main process)")
    runtime.add_argument("--amp", action="store_true", help="bfloat16 autocast on the GPU")
    runtime.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                         help=f"skip images with more pixels, as a guard against decompression bombs; 0: no limit "
                         f"(default {DEFAULT_MAX_IMAGE_PIXELS}, Pillow's)")
    runtime.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> LismConfig:
    proposer_options = {}
    if args.proposer in ("sam", "felzenszwalb"):
        proposer_options.update(min_area=args.min_area, max_area=args.max_area)
    if args.working_size is not None and args.proposer in ("sam", "felzenszwalb"):
        proposer_options["working_size"] = args.working_size
    if args.proposer == "felzenszwalb":
        proposer_options.update(max_regions=args.max_regions, scale=args.felzenszwalb_scale)
    if args.proposer == "sam":
        proposer_options.update(
            checkpoint=args.sam_checkpoint, model_type=args.sam_model_type,
            generator_options={"points_per_side": args.sam_points_per_side},
        )
    return LismConfig(
        input=args.input, output=args.output, image_root=args.image_root, splits=args.splits,
        proposer=args.proposer, proposer_options=proposer_options, model_type=args.model_type,
        pretrained=args.pretrained, finetuned=args.finetuned, seed=args.seed, batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device, amp=args.amp, chunk_size=args.chunk_size,
        limit=args.limit, keep_whole_image=args.keep_whole_image, max_image_pixels=args.max_image_pixels,
        work_dir=args.work_dir, overwrite=args.overwrite, progress=not args.no_progress,
    )


def main(argv: Optional[List[str]] = None) -> int:
    from lavis_goal.cli import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(rank=0)
    try:
        summary = run_lism(config_from_args(args))
    except (ValueError, FileNotFoundError, ImportError) as error:
        logger.error("%s", error)
        return 2
    print("\n".join(format_summary(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
