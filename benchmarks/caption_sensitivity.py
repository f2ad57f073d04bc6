"""How much one changed word moves a caption's embedding, for the runs of ``ablation_synthetic.py``.

    python benchmarks/caption_sensitivity.py [--sections ablation_synthetic ablation_synthetic_cell ...]
        [--scenes 200] [--no-write]

For the first scene of each test twin, one object (drawn with a fixed seed)
gets a new colour, shape, size or position, and the caption is written again.
The sensitivity to that attribute is ``100 * (1 - cos)`` between the text
embeddings of the two captions, averaged over the scenes and the seeds of a
variant. A model that learned to ignore an attribute's words scores near 0
for it. Only the text tower is read, and nothing is trained.

The script reads ``benchmarks/results/<section>.json`` and the checkpoints
that it names, so the ablation runs must still be in their output folder.
The table goes between the ``caption_sensitivity`` markers in BENCHMARKS.md.
"""

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from ablation_synthetic import RESULTS_DIR, VARIANTS, machine_description, write_section  # noqa: E402

EDITS = ("colour", "shape", "size", "position")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=[
        "ablation_synthetic", "ablation_synthetic_cell", "ablation_synthetic_pretrained", "ablation_synthetic_pretrained_cell",
    ], help="results of benchmarks/ablation_synthetic.py to read, by section name")
    parser.add_argument("--scenes", type=int, default=200, help="test scenes to edit (the first scene of each twin)")
    parser.add_argument("--no-write", action="store_true", help="print the table and leave BENCHMARKS.md unchanged")
    return parser.parse_args(argv)


def edited_captions(layouts, config, seed: int = 0) -> Dict[str, List[str]]:
    """Return, for each attribute in ``EDITS``, the captions of ``layouts`` with that attribute of one object changed.

    The same object of a scene is edited for every attribute. A moved object
    goes to a free cell, and the objects are put back in reading order, as
    the generator writes them.
    """
    from lavis_goal.datasets.synthetic import POSITIONS

    rng = np.random.default_rng(seed)
    out: Dict[str, List[str]] = {edit: [] for edit in EDITS}
    for layout in layouts:
        index = int(rng.integers(len(layout.objects)))
        obj = layout.objects[index]
        free = [p for p in range(len(POSITIONS)) if p not in {o.position for o in layout.objects}]
        changes = {
            "colour": {"colour": str(rng.choice([c for c in config.colours if c != obj.colour]))},
            "shape": {"shape": str(rng.choice([s for s in config.shapes if s != obj.shape]))},
            "size": {"size": str(rng.choice([s for s in config.sizes if s != obj.size]))},
            "position": {"position": int(rng.choice(free))},
        }
        for edit, change in changes.items():
            objects = list(layout.objects)
            objects[index] = dataclasses.replace(obj, **change)
            objects.sort(key=lambda o: o.position)
            out[edit].append(dataclasses.replace(layout, objects=tuple(objects)).caption())
    return out


@torch.no_grad()
def sensitivity(checkpoint_path: Path, scenes: int) -> Dict[str, float]:
    """Return ``100 * (1 - cos)`` per edited attribute for one run's final text tower."""
    from lavis_goal.datasets.synthetic import SceneConfig, generate_split
    from lavis_goal.models import GoalCLIP
    from lavis_goal.models.checkpoints import load_checkpoint_file

    checkpoint = load_checkpoint_file(str(checkpoint_path))
    config = OmegaConf.create(checkpoint["config"])
    model_cfg = config.model.copy()
    model_cfg.finetuned = None
    model = GoalCLIP.from_config(model_cfg)
    model.load_state_dict(checkpoint["model"], strict=True)
    model.eval()

    dataset_cfg = config.datasets.synthetic_scenes
    settings = dataset_cfg.build_info.splits.test
    scene_config = SceneConfig.from_dict(OmegaConf.to_container(dataset_cfg.scene, resolve=True))
    split = generate_split(scene_config, int(settings.num_scenes), int(settings.seed), bool(settings.hard_negatives))
    layouts = [scene.layout for scene in split if scene.twin_of is None][:scenes]

    def embed(captions: List[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(model.extract_features({"text_input": captions}, mode="text")["text_embeds"], dim=-1)

    original = embed([layout.caption() for layout in layouts])
    return {
        edit: float(100 * (1 - (original * embed(captions)).sum(-1)).mean())
        for edit, captions in edited_captions(layouts, scene_config).items()
    }


def table(rows: List[dict]) -> str:
    lines = [
        "| runs | variant | seeds | " + " | ".join(EDITS) + " |",
        "|---|---|---|" + "---|" * len(EDITS),
    ]
    for row in rows:
        cells = [row["section"], VARIANTS[row["variant"]], str(len(row["values"]))]
        for edit in EDITS:
            values = [v[edit] for v in row["values"]]
            spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.1f}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    rows = []
    for section in args.sections:
        results = json.loads((RESULTS_DIR / f"{section}.json").read_text(encoding="utf-8"))
        by_variant: Dict[str, List[Dict[str, float]]] = {}
        for run in results["runs"]:
            checkpoint = Path(run["run_dir"]) / "checkpoint_latest.pth"
            if not checkpoint.is_file():
                raise FileNotFoundError(
                    f"Checkpoint {checkpoint} (section {section}, {run['variant']} seed {run['seed']}) not found; "
                    f"run benchmarks/ablation_synthetic.py for that section again"
                )
            by_variant.setdefault(run["variant"], []).append(sensitivity(checkpoint, args.scenes))
        rows += [{"section": section, "variant": v, "values": values} for v, values in by_variant.items()]

    command = " ".join(["python benchmarks/caption_sensitivity.py", *(argv if argv is not None else sys.argv[1:])])
    markdown = "\n".join([
        f"Command: `{command}`.",
        f"Machine: {machine_description()}. Test scenes edited: {args.scenes}. Values: 100 * (1 - cosine) "
        "between the text embeddings of a caption and of the caption with one attribute of one object changed, "
        "mean ± standard deviation over seeds.",
        "",
        table(rows),
    ])
    print(markdown)
    if not args.no_write:
        write_section(markdown, "caption_sensitivity")
    return rows


if __name__ == "__main__":
    main()
