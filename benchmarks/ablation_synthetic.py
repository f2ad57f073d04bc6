"""GOAL's four loss settings on generated scenes, over several seeds, on CPU.

    python benchmarks/ablation_synthetic.py [--seeds 0 1 2] [--variants global_only local_only wo_tsl goal]
        [--workers 2] [--threads N] [--section NAME] [--lism-matcher CHECKPOINT|train]
        [--pretrain-short] [--no-write] [--options key=value ...]

Each run trains ``projects/goal/synthetic/<variant>.yaml`` through
``lavis_goal.train.main``. ``--workers`` processes (2 by default) take the
runs in turn, and each pays ``import lavis`` once. By default every worker
gets an equal share of the CPU count as torch threads, one each on 2 cores.
The runs evaluate the test scenes after every epoch, for the learning curve,
and the reported numbers are those of the last epoch: no epoch is chosen by
its test score. ``--options`` entries are passed to every run.

Besides Recall@K the script measures twin accuracy on the test scenes, which
come in twins that differ in one attribute of one object. For each twin pair,
an image must score its own caption above its twin's caption. Likewise a
caption must score its own image above its twin's image. Chance is 50%, and
the accuracy is also split by the attribute that differs. The script also
measures each GOAL term's gradient at the final weights.

With ``--lism-matcher``, LISM first mines the training pairs with that
checkpoint, and the runs train on the mined pairs instead of the true boxes;
``--lism-matcher train`` trains a global-only matcher first. With
``--pretrain-short``, every run starts from a model pre-trained on short
captions (``projects/goal/synthetic/pretrain_short.yaml``) instead of random
weights.

Outputs, named by ``--section`` (default ``ablation_synthetic``):
``benchmarks/results/<section>.json`` (every number),
``benchmarks/results/<section>.png`` (test R@1 against training step) and the
tables between the ``<section>`` markers in BENCHMARKS.md. ``--no-write``
prints the tables and writes only under ``--output-dir``.
"""

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "projects" / "goal" / "synthetic"
RESULTS_DIR = REPO / "benchmarks" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SECTION_TITLE = "## GOAL against global-only fine-tuning on generated scenes (`benchmarks/ablation_synthetic.py`)"
VARIANTS = {"global_only": "global only", "local_only": "local only", "wo_tsl": "w/o TSL", "goal": "GOAL"}
ATTRIBUTES = ("colour", "shape", "size", "texture")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="values of run.seed, one run per variant each")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output-dir", default="output/ablation_synthetic", help="folder of the runs, relative to the working directory")
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md and benchmarks/results/ unchanged")
    parser.add_argument("--options", nargs="+", default=[], help="config overrides passed to every run, as key=value")
    parser.add_argument("--section", default="ablation_synthetic",
                        help="name of the results: the BENCHMARKS.md markers, the files in benchmarks/results/ and the run folder")
    parser.add_argument("--workers", type=int, default=2, help="runs trained at the same time, each in its own process")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per worker (default: the CPU count divided by --workers, at least 1)")
    parser.add_argument("--lism-matcher", default=None,
                        help="a checkpoint of this benchmark to mine the training pairs with LISM, or 'train' to train "
                             "the global-only variant with the first seed first and mine with it; the runs then train "
                             "on the mined pairs instead of the true boxes")
    parser.add_argument("--pretrain-short", action="store_true",
                        help="first pre-train projects/goal/synthetic/pretrain_short.yaml (short captions, global term) "
                             "with the first seed, then start every run from its checkpoint instead of random weights")
    parser.add_argument("--lism-proposer", default="felzenszwalb", help="LISM region proposer (default felzenszwalb)")
    return parser.parse_args(argv)


def read_epoch_logs(run_dir: Path) -> Dict[int, dict]:
    """Merge the JSON lines of ``log.txt`` by epoch: ``{epoch: {"train_loss": ..., "test_t2i_r1": ...}}``."""
    epochs: Dict[int, dict] = {}
    for line in (run_dir / "log.txt").read_text(encoding="utf-8").splitlines():
        if not line.startswith('{"'):
            continue
        entry = json.loads(line)
        epoch = entry.get("train_epoch", entry.get("test_epoch"))
        if epoch is not None:
            epochs.setdefault(int(epoch), {}).update(entry)
    return epochs


def twin_accuracy(score: np.ndarray, scenes) -> Dict[str, float]:
    """Return the twin accuracy in % overall and per changed attribute.

    ``score`` is the ``(n_images, n_texts)`` similarity of the test split, whose
    scene ``2i + 1`` is the twin of scene ``2i``. Each pair counts four
    comparisons: both images against both captions, both captions against both images.
    """
    first = np.arange(0, len(scenes), 2)
    second = first + 1
    correct = (
        (score[first, first] > score[first, second]).astype(float)
        + (score[second, second] > score[second, first])
        + (score[first, first] > score[second, first])
        + (score[second, second] > score[first, second])
    ) / 4
    attributes = np.array([scenes[i].changed_attribute for i in second])
    result = {"all": float(correct.mean() * 100)}
    for attribute in ATTRIBUTES:
        chosen = attributes == attribute
        if chosen.any():
            result[attribute] = float(correct[chosen].mean() * 100)
    return result


@torch.no_grad()
def evaluate_twins(checkpoint_path: Path) -> Dict[str, float]:
    """Rebuild the model and test split of a run from its checkpoint and measure twin accuracy.

    Returns an empty dict when the test split has no twins (``hard_negatives: false``).
    """
    from lavis_goal.datasets.synthetic import SceneConfig, SyntheticScenesBuilder, generate_split
    from lavis_goal.models import GoalCLIP
    from lavis_goal.models.checkpoints import load_checkpoint_file

    checkpoint = load_checkpoint_file(str(checkpoint_path))
    config = OmegaConf.create(checkpoint["config"])
    if not config.datasets.synthetic_scenes.build_info.splits.test.get("hard_negatives", False):
        return {}
    model_cfg = config.model.copy()
    model_cfg.finetuned = None
    model = GoalCLIP.from_config(model_cfg)
    model.load_state_dict(checkpoint["model"], strict=True)
    model.eval()

    dataset_cfg = config.datasets.synthetic_scenes.copy()
    dataset_cfg.build_info.splits = {"test": dataset_cfg.build_info.splits.test}
    test = SyntheticScenesBuilder(dataset_cfg).build_datasets()["test"]
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    texts = torch.stack(test.text)
    image_embeds = torch.cat([model.extract_features({"image": batch}, mode="image")["image_embeds"] for batch in images.split(100)])
    text_embeds = torch.cat([model.extract_features({"text_input": batch}, mode="text")["text_embeds"] for batch in texts.split(100)])
    score = (image_embeds @ text_embeds.T).numpy()

    settings = dataset_cfg.build_info.splits.test
    scene_config = SceneConfig.from_dict(OmegaConf.to_container(dataset_cfg.scene, resolve=True))
    scenes = generate_split(scene_config, int(settings.num_scenes), int(settings.seed), bool(settings.hard_negatives))
    return twin_accuracy(score, scenes)


def term_gradients(checkpoint_path: Path, batches: int = 4, weights=(1.0, 0.5, 1.0, 1.0)) -> Dict[str, dict]:
    """Measure each GOAL term's gradient on a run's final weights, over ``batches`` training batches.

    For each weighted term returns the gradient norm on the image tower, on the
    text tower, and the cosine between its gradient and the global term's
    gradient over all parameters (negative: the term pulls against the global
    term). Terms are switched on with ``weights`` whatever the run trained.
    """
    from lavis_goal.datasets.synthetic import SyntheticScenesBuilder
    from lavis_goal.losses import GoalLossConfig
    from lavis_goal.models import GoalCLIP
    from lavis_goal.models.checkpoints import load_checkpoint_file

    checkpoint = load_checkpoint_file(str(checkpoint_path))
    config = OmegaConf.create(checkpoint["config"])
    model_cfg = config.model.copy()
    model_cfg.finetuned = None
    model_cfg.loss = dict(zip(("global_weight", "local_weight", "tsl_image_weight", "tsl_text_weight"), weights))
    model = GoalCLIP.from_config(model_cfg)
    model.load_state_dict(checkpoint["model"], strict=True)
    dataset_cfg = config.datasets.synthetic_scenes.copy()
    dataset_cfg.build_info.splits = {"train": dataset_cfg.build_info.splits.train}
    dataset_cfg.load_local_pairs = True
    train = SyntheticScenesBuilder(dataset_cfg).build_datasets()["train"]
    loader = torch.utils.data.DataLoader(train, batch_size=int(config.run.batch_size_train), shuffle=True,
                                         generator=torch.Generator().manual_seed(0))

    names = ("loss_global", "loss_local", "loss_tsl_image", "loss_tsl_text")
    loss_cfg = GoalLossConfig.from_dict(model_cfg.loss)
    scale = {"loss_global": loss_cfg.global_weight, "loss_local": loss_cfg.local_weight,
             "loss_tsl_image": loss_cfg.tsl_image_weight, "loss_tsl_text": loss_cfg.tsl_text_weight}
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and "logit_scale" not in n]
    is_visual = torch.tensor([name.startswith("clip.visual.") for name, _ in params])
    totals = {name: {"image_tower": 0.0, "text_tower": 0.0, "cosine_with_global": 0.0} for name in names}
    seen = 0
    for _, batch in zip(range(batches), loader):
        output = model(batch)
        flat = {}
        for name in names:
            grads = torch.autograd.grad(scale[name] * output[name], [p for _, p in params], retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, (_, p) in zip(grads, params)]
            norms = torch.stack([g.norm() for g in grads])
            totals[name]["image_tower"] += float(norms[is_visual].pow(2).sum().sqrt())
            totals[name]["text_tower"] += float(norms[~is_visual].pow(2).sum().sqrt())
            flat[name] = torch.cat([g.flatten() for g in grads])
        for name in names:
            totals[name]["cosine_with_global"] += float(torch.nn.functional.cosine_similarity(flat[name], flat["loss_global"], dim=0))
        seen += 1
    return {name: {key: value / seen for key, value in values.items()} for name, values in totals.items()}


def run_one(variant: str, seed: int, output_dir: Path, options: Sequence[str], gradients: bool = True) -> dict:
    """Train one variant with one seed and return its curve, last-epoch metrics, twin accuracy and times.

    ``variant`` names a config of ``projects/goal/synthetic``. ``gradients=False``
    skips the gradient table, which needs local pairs in the training split.
    """
    from lavis_goal import train

    run_base = output_dir / variant / f"seed{seed}"
    before = set(run_base.iterdir()) if run_base.is_dir() else set()
    wall, cpu = time.perf_counter(), time.process_time()
    train.main([
        "--cfg-path", str(CONFIG_DIR / f"{variant}.yaml"),
        "--options", f"run.seed={seed}", f"run.output_dir={run_base}",
        "run.valid_splits=[test]", "run.test_splits=[]", *options,
    ])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    (run_dir,) = set(run_base.iterdir()) - before

    checkpoint = torch.load(run_dir / "checkpoint_latest.pth", map_location="cpu", weights_only=True)
    run_cfg = checkpoint["config"]["run"]
    train_cfg = checkpoint["config"]["datasets"]["synthetic_scenes"]["build_info"]["splits"]["train"]
    iters_per_epoch = int(train_cfg["num_scenes"]) // int(run_cfg["batch_size_train"])
    del checkpoint

    epochs = read_epoch_logs(run_dir)
    last = max(epochs)
    curve = [
        {"step": (epoch + 1) * iters_per_epoch, "t2i_r1": row["test_t2i_r1"], "i2t_r1": row["test_i2t_r1"],
         "train_loss": row.get("train_loss")}
        for epoch, row in sorted(epochs.items())
    ]
    final = {key[len("test_"):]: value for key, value in epochs[last].items() if key.startswith("test_")}
    return {
        "variant": variant,
        "seed": seed,
        "run_dir": str(run_dir),
        "epochs": last + 1,
        "steps": (last + 1) * iters_per_epoch,
        "final": final,
        "train_loss": epochs[last].get("train_loss"),
        "curve": curve,
        "twins": evaluate_twins(run_dir / "checkpoint_latest.pth"),
        "gradients": term_gradients(run_dir / "checkpoint_latest.pth") if gradients else {},
        "wall_s": wall,
        "cpu_s": cpu,
    }


def mean_spread(values: Sequence[float]) -> str:
    """Format as ``mean ± sample standard deviation`` (just the mean for one value, "-" for none)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def results_table(runs: List[dict]) -> str:
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    attributes = [a for a in ATTRIBUTES if any(a in r["twins"] for r in runs)]
    header = ["variant", "T2I R@1", "T2I R@5", "I2T R@1", "I2T R@5", "twins", *[f"twins: {a}" for a in attributes], "wall per run (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        chosen = [r for r in runs if r["variant"] == variant]
        cells = [VARIANTS[variant]]
        for key in ("t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5"):
            cells.append(mean_spread([r["final"][key] for r in chosen]))
        cells.append(mean_spread([r["twins"]["all"] for r in chosen if "all" in r["twins"]]))
        for attribute in attributes:
            cells.append(mean_spread([r["twins"][attribute] for r in chosen if attribute in r["twins"]]))
        cells.append(f"{statistics.mean(r['wall_s'] for r in chosen):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gradients_table(runs: List[dict]) -> str:
    """Tabulate the per-term gradients at the final weights, averaged over seeds."""
    terms = {"loss_global": "global (1.0)", "loss_local": "local (0.5)", "loss_tsl_image": "TSL image (1.0)",
             "loss_tsl_text": "TSL text (1.0)"}
    header = ["weights of", "term (weight)", "gradient norm, image tower", "gradient norm, text tower", "cosine with global gradient"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in VARIANTS:
        chosen = [r for r in runs if r["variant"] == variant and "gradients" in r]
        for term, label in terms.items() if chosen else ():
            values = [r["gradients"][term] for r in chosen]
            cells = [VARIANTS[variant], label]
            for key in ("image_tower", "text_tower", "cosine_with_global"):
                cells.append(f"{statistics.mean(v[key] for v in values):.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(runs: List[dict], path: Path, chance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for variant, label in VARIANTS.items():
        chosen = [r for r in runs if r["variant"] == variant]
        if not chosen:
            continue
        steps = [point["step"] for point in chosen[0]["curve"]]
        # Mean of the text-to-image and image-to-text R@1, per seed: (seeds, points).
        values = np.array([[(p["t2i_r1"] + p["i2t_r1"]) / 2 for p in r["curve"]] for r in chosen])
        line, = axis.plot(steps, values.mean(0), marker="o", label=f"{label}, mean of {len(chosen)} seed(s)")
        axis.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.15, linewidth=0)
    axis.axhline(chance, color="gray", linestyle=":", label="chance")
    axis.set_ylim(bottom=0)
    axis.set_xlabel("training step")
    axis.set_ylabel("test R@1, mean of both directions (%)")
    axis.set_title("Test scenes (twin hard negatives) during training; shaded: min to max over seeds", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def pretrain_summary(pretrain) -> str:
    if not pretrain:
        return ""
    final, twins = pretrain["final"], pretrain["twins"]
    return (
        f"\nEvery run starts from `projects/goal/synthetic/pretrain_short.yaml`, trained first in "
        f"{pretrain['wall_s']:.0f} s ({pretrain['steps']} steps on short captions). Before fine-tuning it scores test "
        f"R@1 {final['t2i_r1']:.1f} / {final['i2t_r1']:.1f} (text to image / image to text) and twin accuracy "
        f"{twins.get('all', float('nan')):.1f}% on the long captions."
    )


def lism_summary(lism) -> str:
    if not lism:
        return ""
    matcher = f"matcher `{lism['matcher']}`"
    if "matcher_final" in lism:
        matcher = (f"matcher: the global-only model of the first seed, trained for this section in "
                   f"{lism['matcher_wall_s']:.0f} s, test R@1 {lism['matcher_final']['t2i_r1']:.1f} / "
                   f"{lism['matcher_final']['i2t_r1']:.1f}")
    return (
        f"\nLocal pairs mined by LISM ({lism['proposer']} proposer, {lism['regions_per_image']:.1f} candidate regions "
        f"per image with the whole image, {matcher}) in {lism['seconds']:.0f} s: "
        f"{lism['pairs']} pairs on {lism['images_with_pairs']} images. Right (the sentence describes an object and the "
        f"box has IoU >= 0.5 with its true box): {lism['right_pairs_pct']:.1f}% of all pairs, "
        f"{lism['right_top_pairs_pct']:.1f}% of the top pair per image that training uses; "
        f"{lism['global_sentence_top_pairs_pct']:.1f}% of top pairs hold the global sentence"
        + (f" and {lism['large_object_top_pairs_pct']:.1f}% a large object." if "large_object_top_pairs_pct" in lism else ".")
    )


def report(runs: List[dict], meta: dict) -> str:
    n_test = runs[0]["final"].get("n_images", "?")
    lines = [
        f"Command: `{meta['command']}`.",
        f"Machine: {meta['machine']}. {meta['date']}.",
        f"Load average (1, 5, 15 min) before: {meta['load_before']}; after: {meta['load_after']}.",
        f"Whole ablation, {len(runs)} run(s) in {meta['workers']} worker process(es) with {meta['threads_per_worker']} "
        f"torch thread(s) each: {meta['wall_s'] / 60:.1f} min wall, {meta['cpu_s'] / 60:.1f} min CPU (user + system of "
        f"all processes).",
        pretrain_summary(meta.get("pretrain")),
        lism_summary(meta.get("lism")),
        "",
        f"Last epoch ({runs[0]['epochs']} epochs, {runs[0]['steps']} steps), {n_test} test scenes, "
        f"mean ± standard deviation over seeds {sorted({r['seed'] for r in runs})}. Chance R@1 is "
        f"{100 / float(n_test):.2f}% and chance twin accuracy 50%." if n_test != "?" else "",
        "",
        results_table(runs),
        "",
        "Gradient of each GOAL term at the final weights of each variant (mean of 4 training batches and of the "
        "seeds). Every term is evaluated with GOAL's weights, whatever the variant trained.",
        "",
        gradients_table(runs),
    ]
    return "\n".join(lines)


def write_section(markdown: str, section: str) -> None:
    """Replace the text between the section's markers in BENCHMARKS.md, or append it under a new heading."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    text = BENCHMARKS_MD.read_text(encoding="utf-8")
    block = f"{begin}\n{markdown}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION_TITLE}\n\n{block}\n"
    BENCHMARKS_MD.write_text(text, encoding="utf-8")


def dataset_config(options: Sequence[str]):
    """Return the ``synthetic_scenes`` config of the runs: defaults, the project configs' datasets section, ``options``."""
    from lavis_goal.paths import plugin_config

    defaults = OmegaConf.load(plugin_config("datasets/synthetic_scenes/defaults.yaml"))
    project = OmegaConf.load(CONFIG_DIR / "goal.yaml")
    overrides = OmegaConf.from_dotlist([o for o in options if o.startswith("datasets.")])
    return OmegaConf.merge(defaults, {"datasets": project.datasets}, overrides).datasets.synthetic_scenes


def pair_quality(mined: List[dict], scenes) -> Dict[str, float]:
    """Score mined pairs against the true boxes.

    A pair is right when its sentence describes an object and its box overlaps
    that object's box with IoU >= 0.5. Returns the share of right pairs among
    all pairs and among each image's top-scoring pair, the one that training
    uses with ``top_k: 1``. It also returns the share of top pairs that hold
    the global sentence or a large object. The last figure is the median ratio
    of a top pair's box area to its object's true box area, for small and for
    large objects.
    """
    from lavis_goal.geometry import box_iou

    def right(segment, objects) -> bool:
        obj = objects.get(segment["caption"])
        if obj is None:
            return False
        box = segment["bbox_coordinates"]
        return box_iou((box["x1"], box["y1"], box["x2"], box["y2"]), obj.box) >= 0.5

    def area(box) -> float:
        return (box[2] - box[0]) * (box[3] - box[1])

    all_right, top_right, top_global, n_pairs, n_top = 0, 0, 0, 0, 0
    area_ratios: Dict[str, List[float]] = {"small": [], "large": []}
    for record, scene in zip(mined, scenes):
        objects = {obj.sentence(): obj for obj in scene.layout.objects}
        segments = record.get("segment") or []
        all_right += sum(right(segment, objects) for segment in segments)
        n_pairs += len(segments)
        if not segments:
            continue
        top = max(segments, key=lambda segment: segment["similarity_score"])
        n_top += 1
        top_right += right(top, objects)
        obj = objects.get(top["caption"])
        if obj is None:
            top_global += 1
            continue
        box = top["bbox_coordinates"]
        area_ratios.setdefault(obj.size, []).append(area((box["x1"], box["y1"], box["x2"], box["y2"])) / area(obj.box))
    return {
        "pairs": n_pairs,
        "images_with_pairs": n_top,
        "right_pairs_pct": 100 * all_right / max(1, n_pairs),
        "right_top_pairs_pct": 100 * top_right / max(1, n_top),
        "global_sentence_top_pairs_pct": 100 * top_global / max(1, n_top),
        "large_object_top_pairs_pct": 100 * len(area_ratios.get("large", [])) / max(1, n_top),
        "median_area_ratio": {size: float(np.median(ratios)) if ratios else None for size, ratios in area_ratios.items()},
    }


def mine_pairs(matcher: Path, options: Sequence[str], proposer: str, work_dir: Path) -> Tuple[Path, dict]:
    """Mine the training split's local pairs with LISM and the ``matcher`` checkpoint; returns the file and its quality."""
    from lavis_goal.datasets.synthetic import SyntheticScenesBuilder
    from lavis_goal.lism import LismConfig, run_lism

    dataset_cfg = dataset_config(options)
    builder = SyntheticScenesBuilder(dataset_cfg)
    scenes, paths = builder.render_split("train")
    work_dir.mkdir(parents=True, exist_ok=True)
    input_path, output_path = work_dir / "lism_input.json", work_dir / "lism_pairs.json"
    input_path.write_text(json.dumps([{"filename": str(p), "caption": s.layout.caption()} for p, s in zip(paths, scenes)]),
                          encoding="utf-8")
    checkpoint = torch.load(matcher, map_location="cpu", weights_only=True)
    model_type = checkpoint["config"]["model"]["model_type"]
    del checkpoint

    started = time.perf_counter()
    summary = run_lism(LismConfig(
        input=str(input_path), output=str(output_path), proposer=proposer, model_type=model_type, pretrained=None,
        finetuned=str(matcher), device="cpu", num_workers=0, overwrite=True, progress=False,
    ))
    quality = pair_quality(json.loads(output_path.read_text(encoding="utf-8")), scenes)
    quality.update(proposer=proposer, matcher=os.path.relpath(matcher), seconds=time.perf_counter() - started,
                   regions_per_image=summary["regions_per_image"]["mean"])
    return output_path, quality


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{os.cpu_count()} cores of {cpu}, torch {torch.__version__}, Python {platform.python_version()}"


def cpu_seconds() -> float:
    """Return the user + system seconds of this process and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def render_images(options: Sequence[str]) -> None:
    """Render every split once before the workers start, so that they do not render the same files together."""
    from lavis_goal.datasets.synthetic import SyntheticScenesBuilder

    builder = SyntheticScenesBuilder(dataset_config(options))
    for split in builder.split_names():
        builder.render_split(split)


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_all(tasks: Sequence[Tuple[str, int]], output_dir: Path, options: Sequence[str], workers: int, threads: int) -> List[dict]:
    """Run ``(variant, seed)`` tasks, ``workers`` at a time; returns the results in task order."""
    def announce(result: dict) -> None:
        print(f"{result['variant']} seed {result['seed']}: {json.dumps(result['final'])} "
              f"twins {json.dumps(result['twins'])}", flush=True)

    if workers <= 1:
        _start_worker(threads)
        results = []
        for variant, seed in tasks:
            results.append(run_one(variant, seed, output_dir, options))
            announce(results[-1])
        return results

    # Each worker imports lavis once and trains its share of the runs one after another.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(run_one, variant, seed, output_dir, list(options)) for variant, seed in tasks]
        for future in as_completed(futures):
            announce(future.result())
        return [future.result() for future in futures]


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    workers = max(1, args.workers)
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    output_dir = Path(args.output_dir).expanduser()
    if not output_dir.is_absolute():
        output_dir = Path.cwd() / output_dir
    output_dir = output_dir / args.section
    meta = {
        "command": " ".join(["python benchmarks/ablation_synthetic.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_description(),
        "workers": workers,
        "threads_per_worker": threads,
        "date": datetime.date.today().isoformat(),
        "load_before": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    wall, cpu = time.perf_counter(), cpu_seconds()
    options = list(args.options)
    render_images(options)
    if args.pretrain_short:
        # Pre-train with the same options (image folder, scene settings), then fine-tune every run from it.
        _start_worker(threads * workers)
        pretrained = run_one("pretrain_short", args.seeds[0], output_dir / "pretrain", options, gradients=False)
        meta["pretrain"] = {key: pretrained[key] for key in ("final", "twins", "wall_s", "steps")}
        options.append(f"model.finetuned={Path(pretrained['run_dir']) / 'checkpoint_latest.pth'}")
        print(f"Pre-trained on short captions: {json.dumps(meta['pretrain'])}", flush=True)
    if args.lism_matcher:
        matcher_run = None
        if args.lism_matcher == "train":
            # The matcher plays pretrained CLIP's part: a global-only model of the same training scenes.
            (matcher_run,) = run_all([("global_only", args.seeds[0])], output_dir / "matcher", options, 1, threads * workers)
            matcher = Path(matcher_run["run_dir"]) / "checkpoint_latest.pth"
        else:
            matcher = Path(args.lism_matcher).resolve()
        pairs_file, meta["lism"] = mine_pairs(matcher, options, args.lism_proposer, output_dir / "lism")
        if matcher_run is not None:
            meta["lism"]["matcher_final"] = matcher_run["final"]
            meta["lism"]["matcher_wall_s"] = matcher_run["wall_s"]
        options.append(f"datasets.synthetic_scenes.local_pairs_file={pairs_file}")
        print(f"LISM pairs: {json.dumps(meta['lism'])}", flush=True)

    tasks = [(variant, seed) for seed in args.seeds for variant in args.variants]
    runs = run_all(tasks, output_dir, options, workers, threads)
    meta.update(wall_s=time.perf_counter() - wall, cpu_s=cpu_seconds() - cpu,
                load_after=", ".join(f"{v:.2f}" for v in os.getloadavg()))

    markdown = report(runs, meta)
    print(markdown)
    chance = 100 / float(runs[0]["final"]["n_images"])
    targets = [output_dir] if args.no_write else [output_dir, RESULTS_DIR]
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{args.section}.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1), encoding="utf-8")
        plot_curves(runs, folder / f"{args.section}.png", chance)
    if not args.no_write:
        write_section(markdown, args.section)
    return runs


if __name__ == "__main__":
    main()
