"""Plain-text tables of a run's losses and recalls."""

from typing import Dict, List, Optional, Sequence

LOSS_KEYS = ("loss", "loss_global", "loss_local", "loss_tsl_image", "loss_tsl_text")


def _markdown(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(history: List[Dict], test_logs: Dict[str, Dict], recall_k: Sequence[int], best_epoch: Optional[int]) -> str:
    """Return Markdown tables: training losses and validation R@1 per epoch, then test recalls."""
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
        if not metrics:
            continue
        header = ["direction", *[f"R@{k}" for k in recall_k]]
        rows = [
            ["text-to-image", *[f"{metrics[f't2i_r{k}']:.2f}" for k in recall_k]],
            ["image-to-text", *[f"{metrics[f'i2t_r{k}']:.2f}" for k in recall_k]],
        ]
        parts.append(f"Retrieval on {split} ({metrics.get('n_images', '?')} images, {metrics.get('n_texts', '?')} captions)\n\n" + _markdown(header, rows))
    return "\n\n".join(parts) + "\n"
