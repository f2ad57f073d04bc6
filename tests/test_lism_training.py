"""LISM output on the demo photos trains with the goal_json dataset builder as it is."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lavis_goal import train
from lavis_goal.datasets.demo import demo_records
from lavis_goal.lism.matching import load_matching_model
from lavis_goal.lism.runner import LismConfig, run_lism

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model():
    model, _ = load_matching_model("tiny", pretrained="none", seed=0)
    return model


def write_eval_list(path: Path, split: str) -> Path:
    records, _ = demo_records(split)
    path.write_text(json.dumps([{"filename": r["original_filename"], "caption": r["original_caption"]} for r in records]))
    return path


def write_run_config(tmp_path: Path, pairs: Path, test_list: Path) -> Path:
    """The demo's run config with the goal_json dataset on LISM's pairs, one epoch of 2 steps and no validation."""
    demo = OmegaConf.load(REPO / "projects" / "goal" / "default.yaml")
    config = OmegaConf.create({
        "model": demo.model,
        "datasets": {"goal_json": {"build_info": {"annotations": {
            "train": {"storage": str(pairs)}, "test": {"storage": str(test_list)},
        }}}},
        "run": demo.run,
    })
    config.run.output_dir = str(tmp_path / "out")
    config.run.max_epoch = 1
    config.run.batch_size_train = 7
    config.run.valid_splits = []
    path = tmp_path / "lism_run.yaml"
    OmegaConf.save(config, path)
    return path


@pytest.mark.parametrize("proposer", ["spatial", "felzenszwalb"])
def test_lism_pairs_train_two_steps(tmp_path, proposer, tiny_model):
    train_list = write_eval_list(tmp_path / "train_list.json", "train")
    test_list = write_eval_list(tmp_path / "test_list.json", "test")
    pairs = tmp_path / "pairs.json"

    summary = run_lism(
        LismConfig(input=str(train_list), output=str(pairs), proposer=proposer, num_workers=1, device="cpu", progress=False),
        model=tiny_model,
    )
    assert summary["images_mined"] == 14
    assert summary["pairs"] > 0

    logs = train.main(["--cfg-path", str(write_run_config(tmp_path, pairs, test_list))])

    (run_dir,) = sorted((tmp_path / "out").iterdir())
    assert (run_dir / "checkpoint_best.pth").is_file()
    lines = [json.loads(line) for line in (run_dir / "log.txt").read_text().splitlines() if line.startswith('{"train')]
    assert len(lines) == 1
    # 14 images in batches of 7: two steps, with local pairs from LISM in the loss.
    assert lines[0]["train_loss_local"] > 0
    assert "t2i_r1" in logs["test"]
