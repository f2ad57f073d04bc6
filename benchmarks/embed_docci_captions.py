"""Embed the 5,100 DOCCI test captions of GOAL's reference list with a goal_clip model.

The list loads through the ``goal_json`` builder, as an evaluation would read
it, with ``check_images: false`` because only the captions are embedded.
Prints the wall-clock and CPU seconds of each stage and the peak memory. CPU
seconds (user + system, all threads) change less than wall time when other
processes share the cores.

    python benchmarks/embed_docci_captions.py [--captions FILE] [--model-type tiny] [--batch-size 64] [--device cpu]
"""

import argparse
import platform
import resource
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import lavis_goal  # noqa: F401  registers goal_clip and goal_json
from lavis.common.registry import registry

from lavis_goal.models import GoalCLIP
from lavis_goal.paths import plugin_config

DEFAULT_CAPTIONS = Path(__file__).resolve().parents[2] / "shared" / "reference-data" / "docci_test_captions.json"


def build_caption_dataset(captions: Path, model: GoalCLIP):
    """Load the list through goal_json with the model's tokenizer; return the evaluation dataset."""
    defaults = OmegaConf.load(plugin_config("datasets/goal_json/defaults.yaml")).datasets.goal_json
    config = OmegaConf.merge(defaults, {
        "build_info": {"annotations": {"test": {"storage": str(captions)}}},
        "check_images": False,
        "tokenizer": {"model_name": model.model_name, "context_length": model.context_length},
    })
    return registry.get_builder_class("goal_json")(config).build_datasets()["test"]


@torch.no_grad()
def embed(model: GoalCLIP, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    rows = []
    for start in range(0, tokens.shape[0], batch_size):
        rows.append(model.extract_features({"text_input": tokens[start : start + batch_size]}, mode="text")["text_embeds"])
    return torch.cat(rows)


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, default=DEFAULT_CAPTIONS, help="evaluation list [{filename, caption}]")
    parser.add_argument("--model-type", default="tiny", help="goal_clip model type (tiny builds offline)")
    parser.add_argument("--batch-size", type=int, default=64, help="captions per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)

    start, start_cpu = time.perf_counter(), time.process_time()
    model_cfg = OmegaConf.load(GoalCLIP.default_config_path(args.model_type)).model
    model = GoalCLIP.from_config(model_cfg).to(args.device).eval()
    built, built_cpu = time.perf_counter(), time.process_time()
    dataset = build_caption_dataset(args.captions, model)
    loaded, loaded_cpu = time.perf_counter(), time.process_time()

    tokens = torch.stack(dataset.text).to(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    encode_start, encode_start_cpu = time.perf_counter(), time.process_time()
    embeds = embed(model, tokens, args.batch_size)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    encoded, encoded_cpu = time.perf_counter(), time.process_time()

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}")
    print(f"captions: {len(dataset.text)} from {args.captions}, embeddings {tuple(embeds.shape)}")
    print(f"model build: {built - start:.2f} s wall, {built_cpu - start_cpu:.2f} s CPU")
    print(f"list load and tokenize (goal_json): {loaded - built:.2f} s wall, {loaded_cpu - built_cpu:.2f} s CPU")
    rate = len(dataset.text) / (encoded - encode_start)
    print(f"text encoding: {encoded - encode_start:.2f} s wall, {encoded_cpu - encode_start_cpu:.2f} s CPU ({rate:.0f} captions/s, batch {args.batch_size})")
    print(f"total: {encoded - start:.2f} s wall, {encoded_cpu - start_cpu:.2f} s CPU")
    print(f"peak resident memory of the process: {peak_rss_mib():.0f} MiB")
    if args.device.startswith("cuda"):
        print(f"peak CUDA memory during encoding: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
