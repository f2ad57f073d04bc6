"""Tables of a run's losses and metrics, and the cross-run report.

``summary_table`` renders one run's training history and test metrics (the
runner's ``summary.md``). ``python -m lavis_goal.report RESULTS_DIR`` reads
every ``result/*.json`` under ``RESULTS_DIR`` and writes a Markdown report in
the layout of GOAL's tables (methods as rows, text-to-image and image-to-text
R@K as columns), plus a CSV with one metric value per row.
"""

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from lavis_goal.common.io import atomic_write_text

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_global", "loss_local", "loss_tsl_image", "loss_tsl_text")
PROTOCOL_ORDER = ("retrieval", "joint", "classification")
_METRIC_PATTERNS = {
    "retrieval": re.compile(r"^(t2i|i2t)_r(\d+)$"),
    "joint": re.compile(r"^(t2i|i2t)_map(\d+)$"),
    "classification": re.compile(r"^top(\d+)$"),
}


def _markdown(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def _cutoffs(metrics: dict, pattern: re.Pattern) -> List[int]:
    return sorted({int(m.groups()[-1]) for m in map(pattern.match, metrics) if m})


def summary_table(history: List[Dict], test_logs: Dict[str, Dict], recall_k: Sequence[int], best_epoch: Optional[int]) -> str:
    """Return Markdown tables: training losses and validation R@1 per epoch, then test metrics.

    A test split shows R@K for the ``recall_k`` it has (the ones it has, when
    its benchmark uses other cut-offs), mAP@K for joint tests, or top-K
    accuracy for classification.
    """
    parts = []
    if history:
        valid_prefixes = sorted({k.split("_t2i_r1")[0] for row in history for k in row if k.endswith("_t2i_r1")})
        header = ["epoch", *LOSS_KEYS]
        for prefix in valid_prefixes:
            header += [f"{prefix} T2I R@1", f"{prefix} I2T R@1"]
        rows = []
        for row in history:
            cells = [f"{row['epoch']}{' *' if row['epoch'] == best_epoch else ''}"]
            cells += [f"{row[f'train_{k}']:.4f}" if f"train_{k}" in row else "-" for k in LOSS_KEYS]
            for prefix in valid_prefixes:
                cells += [f"{row.get(f'{prefix}_t2i_r1', float('nan')):.2f}", f"{row.get(f'{prefix}_i2t_r1', float('nan')):.2f}"]
            rows.append(cells)
        parts.append("Training (* marks the epoch kept as checkpoint_best.pth)\n\n" + _markdown(header, rows))

    for split, metrics in (test_logs or {}).items():
        if metrics:
            parts.append(_test_table(split, metrics, recall_k))
    return "\n\n".join(parts) + "\n"


def _test_table(split: str, metrics: dict, recall_k: Sequence[int]) -> str:
    ks = [k for k in recall_k if f"t2i_r{k}" in metrics and f"i2t_r{k}" in metrics]
    ks = ks or _cutoffs(metrics, _METRIC_PATTERNS["retrieval"])
    if ks:
        header = ["direction", *[f"R@{k}" for k in ks]]
        rows = [
            ["text-to-image", *[f"{metrics[f't2i_r{k}']:.2f}" for k in ks]],
            ["image-to-text", *[f"{metrics[f'i2t_r{k}']:.2f}" for k in ks]],
        ]
        title = f"Retrieval on {split} ({metrics.get('n_images', '?')} images, {metrics.get('n_texts', '?')} captions)"
        return title + "\n\n" + _markdown(header, rows)

    ks = _cutoffs(metrics, _METRIC_PATTERNS["joint"])
    if ks:
        header = ["direction", *[f"mAP@{k}" for k in ks]]
        rows = [
            ["text-to-image", *[f"{metrics[f't2i_map{k}']:.2f}" for k in ks]],
            ["image-to-text", *[f"{metrics[f'i2t_map{k}']:.2f}" for k in ks]],
        ]
        title = f"Joint test on {split} ({metrics.get('n_global', '?')} global, {metrics.get('n_local', '?')} local items)"
        return title + "\n\n" + _markdown(header, rows)

    ks = _cutoffs(metrics, _METRIC_PATTERNS["classification"])
    header = ["split", *[f"top-{k}" for k in ks]]
    rows = [[split, *[f"{metrics[f'top{k}']:.2f}" for k in ks]]]
    return f"Zero-shot classification on {split} ({metrics.get('n_images', '?')} images, {metrics.get('n_classes', '?')} classes)\n\n" + _markdown(header, rows)


# ----- result files ------------------------------------------------------------


def write_split_result(result_dir: Optional[str], split_name: str, epoch, payload: dict) -> Optional[str]:
    """Write ``result_dir/<split>_<epoch>.json`` atomically and return its path (None without a result folder)."""
    if not result_dir:
        return None
    path = os.path.join(result_dir, f"{split_name}_{epoch}.json")
    atomic_write_text(path, json.dumps({"split": split_name, "epoch": epoch, **payload}, indent=2) + "\n")
    return path


@dataclass
class SplitResult:
    """The metrics of one split of one run, as written to ``result/<split>_<epoch>.json``."""

    method: str
    split: str
    epoch: str
    protocol: str
    metrics: dict
    path: str


def protocol_of(metrics: dict) -> Optional[str]:
    """Return the protocol a result file records: its ``protocol`` field, or the one its metric names imply."""
    if metrics.get("protocol") in PROTOCOL_ORDER:
        return metrics["protocol"]
    for protocol in PROTOCOL_ORDER:
        if any(_METRIC_PATTERNS[protocol].match(key) for key in metrics):
            return protocol
    return None


def load_results(results_dir) -> List[SplitResult]:
    """Read the result files under ``results_dir``: per run and split, the ``best`` epoch, else the latest.

    A run is a folder holding ``result/``; ``results_dir`` may be an output
    folder of many runs, one run folder, or a ``result`` folder. Files that
    hold no known metrics are skipped with a warning.
    """
    root = Path(results_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"Results folder {root} not found")
    chosen: Dict[tuple, tuple] = {}
    for path in sorted(root.rglob("*.json")):
        if path.parent.name != "result":
            continue
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            logger.warning("Skipped %s: not valid JSON (%s)", path, error)
            continue
        protocol = protocol_of(metrics) if isinstance(metrics, dict) else None
        if protocol is None:
            logger.warning("Skipped %s: no retrieval, joint or classification metrics", path)
            continue
        split, _, epoch = path.stem.rpartition("_")
        split, epoch = str(metrics.get("split", split)), str(metrics.get("epoch", epoch))
        run_dir = path.parent.parent
        key = (str(run_dir), split)
        order = (1, 0) if epoch == "best" else (0, int(epoch) if epoch.isdigit() else -1)
        if key not in chosen or order > chosen[key][0]:
            method = str(metrics.get("method") or _run_label(run_dir, root))
            chosen[key] = (order, SplitResult(method, split, epoch, protocol, metrics, str(path)))
    return [result for _, result in chosen.values()]


def _run_label(run_dir: Path, root: Path) -> str:
    try:
        relative = run_dir.relative_to(root)
    except ValueError:
        relative = Path(run_dir.name)
    return str(relative) if str(relative) != "." else run_dir.name


# ----- report ------------------------------------------------------------------------


def _method_cell(result: SplitResult) -> str:
    return result.method if result.epoch == "best" else f"{result.method} (epoch {result.epoch})"


def _value(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _retrieval_table(split: str, results: List[SplitResult]) -> str:
    pattern = _METRIC_PATTERNS["retrieval"]
    ks = sorted({k for r in results for k in _cutoffs(r.metrics, pattern)})
    header = ["method", *[f"T2I R@{k}" for k in ks], *[f"I2T R@{k}" for k in ks]]
    rows = [[_method_cell(r), *[_value(r.metrics, f"t2i_r{k}") for k in ks], *[_value(r.metrics, f"i2t_r{k}") for k in ks]] for r in results]
    sizes = {(r.metrics.get("n_images"), r.metrics.get("n_texts")) for r in results}
    size = ""
    if len(sizes) == 1:
        n_images, n_texts = sizes.pop()
        if n_images is not None and n_texts is not None:
            size = f" ({n_images} images, {n_texts} captions)"
    return f"### {split}{size}\n\n" + _markdown(header, rows)


def _joint_table(split: str, results: List[SplitResult]) -> str:
    ks = sorted({k for r in results for k in _cutoffs(r.metrics, _METRIC_PATTERNS["joint"])})
    header = ["method", *[f"T2I mAP@{k}" for k in ks], *[f"I2T mAP@{k}" for k in ks]]
    rows = [[_method_cell(r), *[_value(r.metrics, f"t2i_map{k}") for k in ks], *[_value(r.metrics, f"i2t_map{k}") for k in ks]] for r in results]
    return f"### {split} (global+local joint test)\n\n" + _markdown(header, rows)


def _classification_table(results: List[SplitResult]) -> str:
    splits = sorted({r.split for r in results})
    ks = sorted({k for r in results for k in _cutoffs(r.metrics, _METRIC_PATTERNS["classification"])})
    header = ["method", *[f"{split} top-{k}" for split in splits for k in ks]]
    by_method: Dict[str, Dict[str, SplitResult]] = {}
    for result in results:
        by_method.setdefault(result.method, {})[result.split] = result
    rows = []
    for method, per_split in by_method.items():
        cells = [method]
        for split in splits:
            metrics = per_split[split].metrics if split in per_split else {}
            cells += [_value(metrics, f"top{k}") for k in ks]
        rows.append(cells)
    return "### Zero-shot classification\n\n" + _markdown(header, rows)


def render_markdown(results: List[SplitResult]) -> str:
    """Return the report: one table per retrieval or joint split, one table for classification."""
    sections = ["# Results", ""]
    for protocol in PROTOCOL_ORDER:
        subset = [r for r in results if r.protocol == protocol]
        if not subset:
            continue
        sections.append({"retrieval": "## Retrieval (R@K, %)", "joint": "## Global+local joint test (mAP@K, %)",
                         "classification": "## Zero-shot classification (accuracy, %)"}[protocol])
        sections.append("")
        if protocol == "classification":
            sections += [_classification_table(sorted(subset, key=lambda r: r.method)), ""]
            continue
        for split in sorted({r.split for r in subset}):
            rows = sorted((r for r in subset if r.split == split), key=lambda r: r.method)
            table = _retrieval_table(split, rows) if protocol == "retrieval" else _joint_table(split, rows)
            sections += [table, ""]
    return "\n".join(sections)


def render_csv(results: List[SplitResult]) -> str:
    """Return CSV text with one row per method, split and metric."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "split", "epoch", "protocol", "metric", "value"])
    for result in sorted(results, key=lambda r: (r.method, PROTOCOL_ORDER.index(r.protocol), r.split)):
        pattern = _METRIC_PATTERNS[result.protocol]
        for key, value in result.metrics.items():
            if pattern.match(key) and isinstance(value, (int, float)):
                writer.writerow([result.method, result.split, result.epoch, result.protocol, key, f"{value:.4f}"])
    return buffer.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lavis_goal.report", description="Write a Markdown and a CSV report of every result/*.json under a folder.")
    parser.add_argument("results_dir", help="an output folder of runs, one run folder, or a result folder")
    parser.add_argument("--output", help="path prefix of the report files (default: RESULTS_DIR/report, giving report.md and report.csv)")
    args = parser.parse_args(argv)

    results = load_results(args.results_dir)
    if not results:
        parser.error(f"no result files (result/<split>_<epoch>.json with metrics) under {args.results_dir}")
    prefix = args.output or os.path.join(args.results_dir, "report")
    markdown = render_markdown(results)
    atomic_write_text(prefix + ".md", markdown)
    atomic_write_text(prefix + ".csv", render_csv(results))
    print(markdown)
    print(f"Wrote {prefix}.md and {prefix}.csv ({len(results)} split results)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
