"""Time one GOAL training step against one global-only step.

A GOAL step encodes the global images and captions plus one local crop and
sentence per image, so about twice the inputs: a ratio near 2 is the floor.

    python benchmarks/step_cost.py [--model-type tiny] [--batch-size 16] [--steps 20]
    python benchmarks/step_cost.py --model goal_blip2 [--model-type tiny] [--device cpu]

``--model goal_blip2`` also reports peak memory. Each setting then runs in a
fresh process, so that one setting's peak does not hide the other's: on CPU
the peak resident set size of that process (``ru_maxrss``), on CUDA the
peak of ``torch.cuda.max_memory_allocated``.
"""

import argparse
import multiprocessing
import platform
import resource
import statistics
import time

import torch

import lavis_goal  # noqa: F401  registers goal_clip and goal_blip2
from lavis_goal.models import GoalBlip2, GoalCLIP
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


def time_steps(model: GoalCLIP, batch: dict, steps: int, warmup: int = 3, sync=lambda: None):
    """Return per-step seconds of forward + backward, and of the optimizer update.

    ``sync`` waits for queued device work (``torch.cuda.synchronize`` on CUDA) before each clock read.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    compute, update = [], []
    for step in range(warmup + steps):
        start = time.perf_counter()
        model(batch)["loss"].backward()
        sync()
        middle = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        end = time.perf_counter()
        if step >= warmup:
            compute.append(middle - start)
            update.append(end - middle)
    return compute, update


CAPTION_SENTENCE = "A small gray stone lies near a red brick wall in the afternoon light."


def synthetic_blip2_batch(model: GoalBlip2, batch_size: int, slots: int = 1) -> dict:
    """Build a ``goal_blip2`` batch: the caption of ``synthetic_batch`` on BERT tokens, one sentence span per image."""
    g = torch.Generator().manual_seed(0)
    tokenizer = model.span_tokenizer
    caption = " ".join([CAPTION_SENTENCE] * 14)
    encoded = tokenizer.encode_caption(caption)
    start = len(CAPTION_SENTENCE) + 1  # the second sentence
    span_start, span_end, status = tokenizer.sentence_span(encoded, caption, start, start + len(CAPTION_SENTENCE))
    if status != "ok":
        raise RuntimeError(f"The benchmark sentence has span status {status!r}")
    sentence = tokenizer.encode_caption(CAPTION_SENTENCE).tokens
    size = model.image_size[0]
    return {
        "image": torch.randn(batch_size, 3, size, size, generator=g),
        "text_input": encoded.tokens[None].repeat(batch_size, 1),
        "local_image": torch.randn(batch_size, slots, 3, size, size, generator=g),
        "local_text": sentence[None, None].repeat(batch_size, slots, 1),
        "local_valid": torch.ones(batch_size, slots, dtype=torch.bool),
        "region_box": torch.tensor([30.0, 40.0, 150.0, 180.0]).repeat(batch_size, slots, 1),
        "region_valid": torch.ones(batch_size, slots, dtype=torch.bool),
        "span": torch.tensor([span_start, span_end]).repeat(batch_size, slots, 1),
        "span_valid": torch.ones(batch_size, slots, dtype=torch.bool),
    }


def _resident_mib() -> float:
    """Return this process's current resident set size in MiB (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _measure_blip2(model_type: str, loss: dict, batch_size: int, steps: int, device: str, results) -> None:
    """Build goal_blip2 with ``loss``, time its steps and put timings and peak memory on ``results``.

    Runs in a child process; ``results`` is a multiprocessing queue.
    """
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    cfg = OmegaConf.load(plugin_config(f"models/goal_blip2_{model_type}.yaml")).model
    cfg.loss = loss
    cfg.pretrained = None
    model = GoalBlip2.from_config(cfg).to(device)
    model.train()
    batch = {k: v.to(device) for k, v in synthetic_blip2_batch(model, batch_size).items()}
    caption_tokens = int((batch["text_input"][0] != model.tokenizer.pad_token_id).sum())

    base = _resident_mib()
    sync = lambda: None  # noqa: E731
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        sync = torch.cuda.synchronize
    forward_backward, update = time_steps(model, batch, steps, sync=sync)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        growth = None
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
        growth = peak - base
    results.put({"forward_backward": forward_backward, "update": update, "peak": peak, "growth": growth,
                 "caption_tokens": caption_tokens,
                 "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)})


def main_blip2(args) -> None:
    context = multiprocessing.get_context("spawn")
    memory = "peak CUDA allocated" if args.device.startswith("cuda") else "peak RSS"
    steps, compute = {}, {}
    for name, loss in LOSSES.items():
        queue = context.Queue()
        child = context.Process(target=_measure_blip2, args=(args.model_type, loss, args.batch_size, args.steps, args.device, queue))
        child.start()
        # The result is a few small lists, so the child exits before it is read.
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"The {name} measurement failed (exit code {child.exitcode}); see its traceback above")
        result = queue.get()
        if name == "global only":
            print(f"goal_blip2 {args.model_type}, batch {args.batch_size}, {args.steps} steps, caption "
                  f"{result['caption_tokens']} tokens, {result['parameters'] / 1e6:.2f} M trainable parameters, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, "
                  f"{platform.processor() or platform.machine()}")
        compute[name] = statistics.median(result["forward_backward"])
        steps[name] = statistics.median([a + b for a, b in zip(result["forward_backward"], result["update"])])
        growth = f" (+{result['growth']:.0f} MiB during the steps)" if result["growth"] is not None else ""
        print(f"{name:12s} step {steps[name] * 1000:8.1f} ms (forward+backward {compute[name] * 1000:.1f} ms, "
              f"AdamW update {statistics.median(result['update']) * 1000:.1f} ms), medians of {args.steps}; "
              f"{memory} {result['peak']:.0f} MiB{growth}")
    print(f"ratio GOAL / global only, whole step:       {steps['GOAL'] / steps['global only']:.2f}")
    print(f"ratio GOAL / global only, forward+backward: {compute['GOAL'] / compute['global only']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="goal_clip", choices=("goal_clip", "goal_blip2"), help="model to time")
    parser.add_argument("--model-type", default="tiny",
                        help="model type: tiny, vitb16 or vitl14 for goal_clip; tiny, pretrain or pretrain_vitL for goal_blip2")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting, after 3 warm-up steps")
    parser.add_argument("--device", default="cpu", help="device for goal_blip2 (cpu or cuda); goal_clip runs on CPU")
    args = parser.parse_args()
    if args.model == "goal_blip2":
        main_blip2(args)
        return

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
