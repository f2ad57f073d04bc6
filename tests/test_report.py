"""Reports: the runner's summary tables, ``python -m lavis_goal.report``, and the suite run they render."""

import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lavis_goal import evaluate, report, train

REPO = Path(__file__).resolve().parents[1]


def _retrieval_metrics(value: float, ks=(1, 5, 10, 25, 50), n=6) -> dict:
    metrics = {f"{d}_r{k}": value + k / 100 for d in ("t2i", "i2t") for k in ks}
    return {**metrics, "n_images": n, "n_texts": n}


# ----- summary_table -------------------------------------------------------------------


def test_summary_table_retrieval_layout_unchanged():
    history = [{"epoch": 0, "train_loss": 1.5, "val_t2i_r1": 10.0, "val_i2t_r1": 20.0}]
    text = report.summary_table(history, {"test": _retrieval_metrics(50.0)}, [1, 5, 10, 25, 50], best_epoch=0)
    assert "| 0 *   | 1.5000 | -" in text
    assert "Retrieval on test (6 images, 6 captions)" in text
    assert "| text-to-image | 50.01 | 50.05 | 50.10 | 50.25 | 50.50 |" in text


def test_summary_table_other_protocols():
    logs = {
        "coco_5k_test": _retrieval_metrics(30.0, ks=(1, 5, 10)),
        "docci_joint": {"t2i_map10": 61.0, "i2t_map10": 72.5, "mean_map10": 66.75, "n_global": 4, "n_local": 3},
        "cifar10_test": {"top1": 88.0, "top5": 99.5, "n_images": 10000, "n_classes": 10},
    }
    text = report.summary_table([], logs, [1, 5, 10, 25, 50], best_epoch=None)
    assert "| image-to-text | 30.01 | 30.05 | 30.10 |" in text  # the cut-offs the split has
    assert "Joint test on docci_joint (4 global, 3 local items)" in text
    assert "| text-to-image | 61.00  |" in text
    assert "| cifar10_test | 88.00 | 99.50 |" in text


# ----- result files ------------------------------------------------------------------------


def _write_result(run: Path, split: str, epoch, payload: dict) -> None:
    report.write_split_result(str(run / "result"), split, epoch, payload)


def test_load_results_prefers_best_then_latest(tmp_path):
    run = tmp_path / "docci_vitb16_goal" / "20260101000000"
    _write_result(run, "val", 2, _retrieval_metrics(20.0))
    _write_result(run, "val", 10, _retrieval_metrics(30.0))
    _write_result(run, "test", 3, _retrieval_metrics(1.0))
    _write_result(run, "test", "best", _retrieval_metrics(40.0))
    (run / "result" / "broken.json").write_text("{", encoding="utf-8")
    (run / "result" / "notes.json").write_text(json.dumps({"comment": "no metrics"}), encoding="utf-8")

    results = {r.split: r for r in report.load_results(tmp_path)}
    assert sorted(results) == ["test", "val"]
    assert results["test"].epoch == "best"
    assert results["test"].metrics["t2i_r1"] == pytest.approx(40.01)
    assert results["val"].epoch == "10"
    assert results["val"].method == "docci_vitb16_goal/20260101000000"


def test_report_tables_and_csv(tmp_path, capsys):
    for method, value in (("GOAL", 79.0), ("global only", 72.0)):
        run = tmp_path / method.replace(" ", "_")
        _write_result(run, "docci_test", "best", {"method": method, "protocol": "retrieval", **_retrieval_metrics(value, ks=(1, 5, 25, 50), n=5000)})
        _write_result(run, "docci_joint", "best", {"method": method, "protocol": "joint", "t2i_map10": value - 10, "i2t_map10": value - 11})
        _write_result(run, "cifar10_test", "best", {"method": method, "protocol": "classification", "top1": value + 5, "top5": 99.0})

    assert report.main([str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert capsys.readouterr().out == markdown + "\n"  # also printed
    assert "### docci_test (5000 images, 5000 captions)" in markdown
    assert "| method      | T2I R@1 | T2I R@5 | T2I R@25 | T2I R@50 | I2T R@1 | I2T R@5 | I2T R@25 | I2T R@50 |" in markdown
    assert "| GOAL        | 79.01   | 79.05   | 79.25    | 79.50    | 79.01   |" in markdown
    assert "| global only | 62.00      | 61.00      |" in markdown
    assert "| GOAL        | 84.00              | 99.00              |" in markdown

    rows = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 2 * (8 + 2 + 2)
    goal_r1 = [r for r in rows if r["method"] == "GOAL" and r["metric"] == "t2i_r1"]
    assert goal_r1 == [{"method": "GOAL", "split": "docci_test", "epoch": "best", "protocol": "retrieval", "metric": "t2i_r1", "value": "79.0100"}]


def test_report_without_results_fails(tmp_path):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path)])


# ----- the demo run ----------------------------------------------------------------------------


def test_report_renders_demo_run(tmp_path, capsys):
    train.main(["--cfg-path", str(REPO / "projects" / "goal"), "--options", f"run.output_dir={tmp_path / 'out'}", "run.max_epoch=1"])
    (run_dir,) = (tmp_path / "out").iterdir()
    capsys.readouterr()

    assert report.main([str(tmp_path / "out"), "--output", str(tmp_path / "demo")]) == 0
    markdown = (tmp_path / "demo.md").read_text(encoding="utf-8")
    expected = json.loads((run_dir / "result" / "test_best.json").read_text(encoding="utf-8"))
    assert "### test (6 images, 6 captions)" in markdown
    assert "### val (14 images, 14 captions)" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {run_dir.name} ") and "epoch" not in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{expected['t2i_r1']:.2f}"
    assert cells[6] == f"{expected['i2t_r1']:.2f}"
    assert f"| {run_dir.name} (epoch 0) |" in markdown  # validation has no best epoch file
    assert "test,best,retrieval,i2t_r50" in (tmp_path / "demo.csv").read_text(encoding="utf-8")


# ----- the benchmark suite ---------------------------------------------------------------------


def _suite_data(tmp_path: Path) -> dict:
    """Write a miniature DOCCI, Urban1k, CIFAR-10 and LISM joint list; return the --options that point at them."""
    docci = tmp_path / "docci"
    (docci / "images").mkdir(parents=True)
    lines = []
    for index, (example_id, split) in enumerate((("test_00000", "test"), ("test_00001", "test"), ("qual_test_00000", "qual_test"))):
        Image.new("RGB", (48, 32), (80 * index, 60, 40)).save(docci / "images" / f"{example_id}.jpg")
        lines.append(json.dumps({"example_id": example_id, "split": split, "image_file": f"{example_id}.jpg",
                                 "description": f"Picture {index} of a courtyard. A fountain stands in the middle."}))
    (docci / "docci_descriptions.jsonlines").write_text("\n".join(lines) + "\n", encoding="utf-8")

    urban = tmp_path / "Urban1k"
    (urban / "image").mkdir(parents=True)
    (urban / "caption").mkdir()
    for n in (1, 2):
        Image.new("RGB", (40, 40), (40, 90 * n, 60)).save(urban / "image" / f"{n}.jpg")
        (urban / "caption" / f"{n}.txt").write_text(f"A street {n}. A bus passes.", encoding="utf-8")

    cifar = tmp_path / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    with open(cifar / "test_batch", "wb") as handle:
        pickle.dump({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 1]}, handle)
    with open(cifar / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": ["airplane", "automobile", "bird"]}, handle)

    pairs = [{"original_filename": "test_00000.jpg", "original_caption": "Picture 0 of a courtyard. A fountain stands in the middle.",
              "segment": [{"caption": "A fountain stands in the middle.", "similarity_score": 0.3, "bbox_coordinates": {"x1": 10, "y1": 5, "x2": 30, "y2": 25}}]},
             {"original_filename": "test_00001.jpg", "original_caption": "Picture 1 of a courtyard. A fountain stands in the middle.",
              "segment": [{"caption": "Picture 1 of a courtyard.", "similarity_score": 0.2, "bbox_coordinates": [0, 0, 20, 20]}]}]
    (tmp_path / "joint.json").write_text(json.dumps(pairs), encoding="utf-8")

    return {
        "datasets.docci.build_info.root": docci,
        "datasets.urban1k.build_info.root": urban,
        "datasets.cifar10.build_info.root": cifar.parent,
        "datasets.cifar10.build_info.verify_checksums": "false",
        "datasets.cifar10.templates": "['a photo of a {}.']",
        "datasets.goal_joint.build_info.annotations.docci_joint.storage": tmp_path / "joint.json",
        "datasets.goal_joint.build_info.annotations.docci_joint.images": docci / "images",
    }


def _run_suite(tmp_path, *extra):
    options = [f"{k}={v}" for k, v in _suite_data(tmp_path).items()]
    return evaluate.main([
        "--cfg-path", str(REPO / "projects" / "goal" / "eval" / "vitb16.yaml"),
        "--options", "model.model_name=goal-tiny-vit", "model.pretrained=null", "run.device=cpu", "run.amp=false",
        "run.num_workers=0", f"run.output_dir={tmp_path / 'suite'}", *options, *extra,
    ])


def test_suite_evaluates_available_benchmarks_and_reports(tmp_path):
    logs = _run_suite(tmp_path, "run.method=tiny random")
    assert sorted(logs) == ["cifar10_test", "docci_joint", "docci_test", "docci_test_5100", "urban1k_test"]
    assert set(logs["docci_test"]) >= {"t2i_r1", "t2i_r50", "i2t_r25"}
    assert "t2i_r10" not in logs["docci_test"]  # long-caption benchmarks use R@1/5/25/50
    assert set(logs["docci_joint"]) >= {"t2i_map10", "i2t_map10"}
    assert logs["docci_joint"]["n_local"] == 2
    assert set(logs["cifar10_test"]) >= {"top1", "top5"}

    (run_dir,) = (tmp_path / "suite").iterdir()
    written = json.loads((run_dir / "result" / "docci_test_5100_best.json").read_text(encoding="utf-8"))
    assert written["benchmark"] == "docci"
    assert written["protocol"] == "retrieval"
    assert written["method"] == "tiny random"
    assert written["n_images"] == 3

    assert report.main([str(tmp_path / "suite")]) == 0
    markdown = (tmp_path / "suite" / "report.md").read_text(encoding="utf-8")
    for heading in ("## Retrieval (R@K, %)", "### urban1k_test (2 images, 2 captions)", "## Global+local joint test (mAP@K, %)",
                    "### docci_joint (global+local joint test)", "## Zero-shot classification (accuracy, %)"):
        assert heading in markdown
    assert "| tiny random | " in markdown
    assert "dci_test" not in markdown


def test_suite_rejects_unknown_test_split(tmp_path):
    with pytest.raises(ValueError, match="docci_tset, which no dataset declares"):
        _run_suite(tmp_path, "run.test_splits=[docci_test,docci_tset]")


def test_suite_without_any_data_fails(tmp_path):
    with pytest.raises(ValueError, match="No benchmark of the suite has its data set"):
        evaluate.main(["--cfg-path", str(REPO / "projects" / "goal" / "eval" / "vitl14.yaml"), "--options",
                       "model.model_name=goal-tiny-vit", "model.pretrained=null", "run.device=cpu", f"run.output_dir={tmp_path}"])
