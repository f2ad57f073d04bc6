"""LISM seconds per image for each region proposer, on the demo photos.

For every proposer and model type, the script runs LISM from scratch over the
demo photos (about 20 photos that scikit-image and matplotlib ship, 128 to
1411 pixels a side). It reports the run's seconds per image from LISM's
summary (decoding, proposals, crops, encoding, writing), the proposer's own
seconds per image (timed separately, in one process) and the regions per image.

Models have random weights here, because the timing depends on the
architecture, not on the weights. ``sam`` needs ``--sam-checkpoint``. Without
one, ``sam-tiny`` times the mask generator with a randomly initialised
64-pixel SAM instead. That shows the generator's own overhead (prompts, mask
post-processing) but not the cost of a real SAM image encoder.

    python benchmarks/lism_speed.py --model-types tiny vitb16 --proposers spatial felzenszwalb sam-tiny
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lavis_goal.datasets.demo import demo_records
from lavis_goal.lism.matching import RegionMatcher, load_matching_model, resolve_device
from lavis_goal.lism.sentences import split_sentences
from lavis_goal.lism.proposers import SamProposer, build_proposer
from lavis_goal.lism.runner import LismConfig, decode_image, run_lism


def tiny_sam():
    """Build a randomly initialised SAM with a one-block, 64-pixel image encoder."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(3)
    size, patch, dim = 64, 16, 32
    return Sam(
        image_encoder=ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=dim, depth=1, num_heads=2,
                                      out_chans=dim, window_size=0, global_attn_indexes=()),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2)),
    ).eval()


def make_proposer(name: str, args):
    if name == "sam":
        return SamProposer(checkpoint=args.sam_checkpoint, model_type=args.sam_model_type)
    if name == "sam-tiny":
        return SamProposer(model=tiny_sam(), working_size=64,
                           generator_options={"points_per_side": args.sam_points_per_side})
    return build_proposer(name)


def proposer_seconds(proposer, paths, device) -> float:
    proposer.to(device)
    images = [np.asarray(decode_image(path, path, None)[0]) for path in paths]
    started = time.perf_counter()
    for pixels in images:
        proposer.propose(pixels)
    return (time.perf_counter() - started) / len(images)


def text_seconds(model, captions, device) -> tuple:
    """Return seconds per sentence for encoding all 248 positions and for LISM's trimmed encoding."""
    matcher = RegionMatcher(model, device, batch_size=64)
    sentences = [s.text for caption in captions for s in split_sentences(caption)]
    tokens = torch.stack([matcher.sentence_tokens(sentence)[0] for sentence in sentences])
    timings = []
    for encode in (
        lambda batch: model.extract_features({"text_input": batch.to(device)}, mode="text")["text_embeds"],
        matcher.encode_tokens,
    ):
        encode(tokens[:2])  # warm-up
        started = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(tokens), 64):
                encode(tokens[start : start + 64])
        timings.append((time.perf_counter() - started) / len(tokens))
    return timings[0], timings[1], len(sentences)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-types", nargs="+", default=["tiny", "vitb16"])
    parser.add_argument("--proposers", nargs="+", default=["spatial", "felzenszwalb", "sam-tiny"])
    parser.add_argument("--sam-checkpoint")
    parser.add_argument("--sam-model-type", default="vit_h")
    parser.add_argument("--sam-points-per-side", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--text-only", action="store_true",
                        help="only compare sentence encoding over all 248 positions with LISM's trimmed encoding")
    args = parser.parse_args(argv)

    train, _ = demo_records("train")
    test, _ = demo_records("test")
    records = [{"filename": r["original_filename"], "caption": r["original_caption"]} for r in train + test]
    paths = [r["filename"] for r in records]

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.machine()}, cuda: {torch.cuda.is_available()}; {len(records)} demo photos")
    if args.text_only:
        print("| model | sentences | 248 positions, ms / sentence | trimmed, ms / sentence |")
        print("|---|---|---|---|")
        for model_type in args.model_types:
            model, _ = load_matching_model(model_type, pretrained="none")
            full, trimmed, count = text_seconds(model, [r["caption"] for r in records], resolve_device(args.device))
            print(f"| {model_type} | {count} | {full * 1000:.1f} | {trimmed * 1000:.1f} |", flush=True)
        return
    print("| model | proposer | run s / image | proposer s / image | regions / image | pairs |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        input_path = Path(folder) / "demo.json"
        input_path.write_text(json.dumps(records))
        for model_type in args.model_types:
            model, _ = load_matching_model(model_type, pretrained="none")
            for name in args.proposers:
                proposer = make_proposer(name, args)
                config = LismConfig(
                    input=str(input_path), output=str(Path(folder) / f"{model_type}-{name}.json"), proposer=name,
                    num_workers=args.num_workers, batch_size=args.batch_size, device=args.device, progress=False,
                    overwrite=True,
                )
                summary = run_lism(config, model=model, proposer=proposer)
                alone = proposer_seconds(proposer, paths, resolve_device(args.device))
                print(f"| {model_type} | {name} | {summary['seconds_per_image']:.3f} | {alone:.3f} | "
                      f"{summary['regions_per_image']['mean']} | {summary['pairs']} |", flush=True)


if __name__ == "__main__":
    main()
