"""Time one GOAL training step against one global-only step.

A GOAL step encodes the global images and captions plus one local crop and
sentence per image, so about twice the inputs: a ratio near 2 is the floor.

    python benchmarks/step_cost.py [--model-type tiny] [--batch-size 16] [--steps 20]
"""

import argparse
import platform
import statistics
import time

import torch

import lavis_goal  # noqa: F401  registers goal_clip
from lavis_goal.models import GoalCLIP
from lavis_goal.paths import plugin_config

LOSSES = {
    "global only": {"global_weight": 1.0, "local_weight": 0.0, "tsl_image_weight": 0.0, "tsl_text_weight": 0.0},
    "GOAL": {"global_weight": 1.0, "local_weight": 0.5, "tsl_image_weight": 1.0, "tsl_text_weight": 1.0},
}


def synthetic_batch(model: GoalCLIP, batch_size: int, slots: int = 1) -> dict:
    """Build a batch with 200-token captions and one 20-token sentence span per image, as in DOCCI."""
    g = torch.Generator().manual_seed(0)
    caption = "A small gray stone lies near a red brick wall in the afternoon light. " * 14
    encoded = model.tokenizer.encode_caption(caption)
    sentence = model.tokenizer.encode_caption("A small gray stone lies near a red brick wall in the afternoon light.")
    size = model.image_size[0]
    return {
        "image": torch.randn(batch_size, 3, size, size, generator=g),
        "text_input": encoded.tokens[None].repeat(batch_size, 1),
        "local_image": torch.randn(batch_size, slots, 3, size, size, generator=g),
        "local_text": sentence.tokens[None, None].repeat(batch_size, slots, 1),
        "local_valid": torch.ones(batch_size, slots, dtype=torch.bool),
        "region_box": torch.tensor([30.0, 40.0, 150.0, 180.0]).repeat(batch_size, slots, 1),
        "region_valid": torch.ones(batch_size, slots, dtype=torch.bool),
        "span": torch.tensor([15, 35]).repeat(batch_size, slots, 1),
        "span_valid": torch.ones(batch_size, slots, dtype=torch.bool),
    }


def time_steps(model: GoalCLIP, batch: dict, steps: int, warmup: int = 3):
    """Return per-step seconds of forward + backward, and of the optimizer update."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    compute, update = [], []
    for step in range(warmup + steps):
        start = time.perf_counter()
        model(batch)["loss"].backward()
        middle = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        if step >= warmup:
            compute.append(middle - start)
            update.append(end - middle)
    return compute, update


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="tiny", help="goal_clip model type (tiny, vitb16, vitl14)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting, after 3 warm-up steps")
    args = parser.parse_args()

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(plugin_config(f"models/goal_clip_{args.model_type}.yaml")).model
    print(f"goal_clip {args.model_type} ({cfg.model_name}), batch {args.batch_size}, {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    steps, compute = {}, {}
    for name, loss in LOSSES.items():
        torch.manual_seed(0)
        model = GoalCLIP(cfg.model_name, pretrained=None, loss=loss)
        forward_backward, update = time_steps(model, synthetic_batch(model, args.batch_size), args.steps)
        compute[name] = statistics.median(forward_backward)
        steps[name] = statistics.median([a + b for a, b in zip(forward_backward, update)])
        print(f"{name:12s} step {steps[name] * 1000:8.1f} ms (forward+backward {compute[name] * 1000:.1f} ms, "
              f"AdamW update {statistics.median(update) * 1000:.1f} ms), medians of {args.steps}")
    print(f"ratio GOAL / global only, whole step:       {steps['GOAL'] / steps['global only']:.2f}")
    print(f"ratio GOAL / global only, forward+backward: {compute['GOAL'] / compute['global only']:.2f}")


if __name__ == "__main__":
    main()
