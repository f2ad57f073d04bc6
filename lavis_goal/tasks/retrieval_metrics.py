"""Recall@K for image-text retrieval, vectorized."""

from typing import Dict, Mapping, Sequence

import numpy as np
import torch

DEFAULT_RECALL_K = (1, 5, 10, 25, 50)


def _as_tensor(scores) -> torch.Tensor:
    return torch.as_tensor(np.asarray(scores), dtype=torch.float32)


def retrieval_ranks(score_i2t, score_t2i, img2txt: Mapping[int, Sequence[int]], txt2img: Mapping[int, int], chunk: int = 1024):
    """Return ``(i2t_ranks, t2i_ranks)``: the 0-based rank of the first correct item per query.

    The rank of a query is the number of *wrong* items that score at least as
    high as its best correct item, so ties count against the model: a model
    that gives every item the same score gets rank ``n - 1``, not 0.

    Args:
        score_i2t: ``(n_images, n_texts)`` similarities.
        score_t2i: ``(n_texts, n_images)`` similarities.
        img2txt: image id to the ids of its captions.
        txt2img: caption id to its image id.
    """
    score_i2t = _as_tensor(score_i2t)
    score_t2i = _as_tensor(score_t2i)
    n_images, n_texts = score_i2t.shape

    text_owner = torch.tensor([txt2img[t] for t in range(n_texts)], dtype=torch.long)
    i2t_ranks = torch.empty(n_images, dtype=torch.long)
    for start in range(0, n_images, chunk):
        rows = score_i2t[start : start + chunk]
        image_ids = torch.arange(start, start + rows.shape[0])
        correct = text_owner[None, :] == image_ids[:, None]  # (chunk, n_texts)
        if not bool(correct.any(1).all()):
            missing = int(image_ids[~correct.any(1)][0])
            raise ValueError(f"Image {missing} has no caption in txt2img; every image needs at least one caption")
        best = torch.where(correct, rows, torch.full_like(rows, float("-inf"))).max(1).values
        i2t_ranks[start : start + rows.shape[0]] = ((rows >= best[:, None]) & ~correct).sum(1)

    t2i_ranks = torch.empty(n_texts, dtype=torch.long)
    for start in range(0, n_texts, chunk):
        rows = score_t2i[start : start + chunk]
        owners = text_owner[start : start + rows.shape[0]]
        correct_score = rows.gather(1, owners[:, None])
        t2i_ranks[start : start + rows.shape[0]] = (rows >= correct_score).sum(1) - 1
    return i2t_ranks, t2i_ranks


def retrieval_metrics(score_i2t, score_t2i, img2txt, txt2img, recall_k: Sequence[int] = DEFAULT_RECALL_K) -> Dict[str, float]:
    """Recall@K in percent for both directions.

    Keys: ``t2i_r{K}`` (text query, image gallery), ``i2t_r{K}``,
    ``t2i_mean`` and ``i2t_mean`` (mean over K), ``mean_r1`` (mean of the
    two R@1) and ``r_mean`` (mean of every recall).
    """
    i2t_ranks, t2i_ranks = retrieval_ranks(score_i2t, score_t2i, img2txt, txt2img)
    metrics = {}
    for k in recall_k:
        metrics[f"t2i_r{k}"] = 100.0 * float((t2i_ranks < k).float().mean())
    for k in recall_k:
        metrics[f"i2t_r{k}"] = 100.0 * float((i2t_ranks < k).float().mean())
    metrics["t2i_mean"] = float(np.mean([metrics[f"t2i_r{k}"] for k in recall_k]))
    metrics["i2t_mean"] = float(np.mean([metrics[f"i2t_r{k}"] for k in recall_k]))
    if 1 in recall_k:
        metrics["mean_r1"] = (metrics["t2i_r1"] + metrics["i2t_r1"]) / 2
    metrics["r_mean"] = (metrics["t2i_mean"] + metrics["i2t_mean"]) / 2
    return metrics
