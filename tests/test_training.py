import json
from pathlib import Path

import pytest
import torch

from lavis_goal import train
from lavis_goal import evaluate
from lavis_goal.runners.runner_goal import unique_output_dir

REPO = Path(__file__).resolve().parents[1]


def _run(module, tmp_path, *options):
    return module.main([
        "--cfg-path", str(REPO / "projects" / "goal"),
        "--options", f"run.output_dir={tmp_path / 'out'}", "run.max_epoch=1", *options,
    ])


def _only_run_dir(tmp_path):
    runs = sorted((tmp_path / "out").iterdir())
    return runs


def test_two_step_training_writes_outputs(tmp_path):
    # The demo has 14 training photos; batches of 7 make 2 steps per epoch.
    logs = _run(train, tmp_path, "run.batch_size_train=7")
    (run_dir,) = _only_run_dir(tmp_path)

    assert (run_dir / "checkpoint_best.pth").is_file()
    assert (run_dir / "checkpoint_latest.pth").is_file()
    assert (run_dir / "log.txt").is_file()
    assert (run_dir / "summary.md").is_file()
    result = json.loads((run_dir / "result" / "test_best.json").read_text())
    for direction in ("t2i", "i2t"):
        for k in (1, 5, 10, 25, 50):
            assert 0.0 <= result[f"{direction}_r{k}"] <= 100.0
    assert result["n_images"] == 6
    assert logs["test"]["agg_metrics"] == pytest.approx(result["mean_r1"])
    assert not list(run_dir.glob("*.tmp"))

    checkpoint = torch.load(run_dir / "checkpoint_best.pth", weights_only=True)
    assert checkpoint["epoch"] == 0
    assert checkpoint["model"]["clip.positional_embedding"].shape[0] == 248

    lines = [json.loads(line) for line in (run_dir / "log.txt").read_text().splitlines() if line.startswith('{"train')]
    assert lines[0]["train_loss"] > 0


def test_resume_continues_from_next_epoch(tmp_path):
    _run(train, tmp_path)
    (first,) = _only_run_dir(tmp_path)
    _run(train, tmp_path, "run.max_epoch=2", f"run.resume_ckpt_path={first / 'checkpoint_latest.pth'}")
    second = [d for d in _only_run_dir(tmp_path) if d != first][0]
    resumed = torch.load(second / "checkpoint_latest.pth", weights_only=True)
    assert resumed["epoch"] == 1
    epochs = [json.loads(line)["train_epoch"] for line in (second / "log.txt").read_text().splitlines() if line.startswith('{"train')]
    assert epochs == [1]


def test_evaluate_entry_point_loads_finetuned(tmp_path):
    _run(train, tmp_path)
    (trained,) = _only_run_dir(tmp_path)
    logs = evaluate.main([
        "--cfg-path", str(REPO / "projects" / "goal"),
        "--options", f"run.output_dir={tmp_path / 'eval'}", f"model.finetuned={trained / 'checkpoint_best.pth'}",
    ])
    expected = json.loads((trained / "result" / "test_best.json").read_text())
    assert logs["test"]["t2i_r1"] == pytest.approx(expected["t2i_r1"])
    assert logs["test"]["i2t_r5"] == pytest.approx(expected["i2t_r5"])


def test_output_dirs_never_collide(tmp_path):
    first = unique_output_dir(tmp_path, "20260101000000")
    second = unique_output_dir(tmp_path, "20260101000000")
    assert first != second
    assert first.is_dir()
    assert second.is_dir()


def test_global_only_run_skips_local_crops(tmp_path):
    logs = _run(
        train, tmp_path,
        "model.loss.local_weight=0", "model.loss.tsl_image_weight=0", "model.loss.tsl_text_weight=0",
    )
    (run_dir,) = _only_run_dir(tmp_path)
    lines = [json.loads(line) for line in (run_dir / "log.txt").read_text().splitlines() if line.startswith('{"train')]
    assert lines[0]["train_loss_local"] == 0.0
    assert lines[0]["train_loss_global"] > 0
    assert "t2i_r1" in logs["test"]


def test_torchrun_two_ranks_on_cpu(tmp_path):
    """Two gloo ranks under torchrun train the demo for one epoch and write the results once."""
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lavis_goal.train",
        "--cfg-path", str(REPO / "projects" / "goal"),
        "--options", f"run.output_dir={tmp_path / 'out'}", "run.max_epoch=1", "run.batch_size_train=3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    (run_dir,) = _only_run_dir(tmp_path)
    assert (run_dir / "checkpoint_best.pth").is_file()
    metrics = json.loads((run_dir / "result" / "test_best.json").read_text())
    assert metrics["n_images"] == 6
    assert "Retrieval on test" in result.stdout
