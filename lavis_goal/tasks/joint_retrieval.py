"""The global+local joint test: mAP@K in both directions over a gallery of global and local items.

The gallery and its relevance lists come from ``JointRetrievalDataset``
(``goal_joint`` builder): a global image is relevant to its caption and to
its local sentences, a local region to its sentence and to its parent's
caption, and text queries likewise. Relevance is linked by record id.
"""

import logging
from typing import Dict, Sequence

import numpy as np
import torch
from lavis.common.registry import registry

from lavis_goal.tasks.goal_retrieval import RUN_CONFIG_KEYS, GoalRetrievalTask, record_split_result

logger = logging.getLogger(__name__)

DEFAULT_MAP_K = (10,)


def mean_average_precision(scores, relevant: Sequence[Sequence[int]], ks: Sequence[int] = DEFAULT_MAP_K, chunk: int = 256) -> Dict[int, float]:
    """Return ``{K: mAP@K}`` in percent for queries with one or more relevant gallery items.

    For query ``q`` with relevant set ``R_q`` and the gallery ranked by
    descending score::

        AP@K(q) = 1 / min(|R_q|, K) * sum_{i=1..K} P_q(i) * rel_q(i)

    where ``rel_q(i)`` is 1 if the item at rank ``i`` is in ``R_q`` and
    ``P_q(i)`` is the fraction of relevant items among ranks ``1..i``.
    mAP@K is the mean of AP@K over queries. A perfect ranking scores 100.
    Among items with equal scores the irrelevant ones rank first, so ties
    never earn credit. When ``|R_q| <= K``, as in the joint test (2 or 3
    relevant items, K = 10), the normalizer is ``|R_q|``.

    Args:
        scores: ``(n_queries, n_items)`` similarities.
        relevant: for each query, the gallery indices relevant to it (not empty).
        ks: the cut-offs K.
        chunk: queries ranked at a time; memory grows with ``chunk * n_items``.
    """
    scores = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    n_queries, n_items = scores.shape
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"mAP cut-offs must be positive integers, got {ks}")
    if len(relevant) != n_queries:
        raise ValueError(f"{len(relevant)} relevance lists for {n_queries} queries; give one list per query")

    lengths = torch.tensor([len(r) for r in relevant], dtype=torch.long)
    if n_queries and int(lengths.min()) == 0:
        raise ValueError(f"Query {int((lengths == 0).nonzero()[0])} has no relevant item; every query needs at least one")
    flat = torch.tensor([int(i) for r in relevant for i in r], dtype=torch.long)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n_items):
        raise ValueError(f"Relevant indices must lie in [0, {n_items}); got {int(flat.min())}..{int(flat.max())}")
    offsets = torch.zeros(n_queries + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)

    top = min(ks[-1], n_items)
    ranks = torch.arange(1, top + 1, dtype=torch.float32)
    totals = {k: 0.0 for k in ks}
    for start in range(0, n_queries, chunk):
        rows = scores[start : start + chunk]
        mask = torch.zeros(rows.shape, dtype=torch.bool)
        row_of = torch.repeat_interleave(torch.arange(rows.shape[0]), lengths[start : start + rows.shape[0]])
        mask[row_of, flat[offsets[start] : offsets[start + rows.shape[0]]]] = True

        # Two stable sorts: first irrelevant before relevant, then by descending score,
        # so that equal scores keep the irrelevant items in front.
        by_relevance = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
        by_score = torch.argsort(rows.gather(1, by_relevance), dim=1, descending=True, stable=True)
        ranked = by_relevance.gather(1, by_score[:, :top])  # (chunk, top)
        hits = mask.gather(1, ranked).float()
        precision = hits.cumsum(1) / ranks
        n_relevant = mask.sum(1).float()
        for k in ks:
            cut = min(k, top)
            ap = (precision[:, :cut] * hits[:, :cut]).sum(1) / n_relevant.clamp(max=k)
            totals[k] += float(ap.sum())
    return {k: 100.0 * totals[k] / max(n_queries, 1) for k in ks}


def joint_evaluation(model, data_loader, run_cfg) -> dict:
    """Score the joint gallery with the model's ``compute_sim_matrix`` and return what ``joint_metrics`` needs."""
    dataset = data_loader.dataset
    score_i2t, score_t2i = model.compute_sim_matrix(data_loader, task_cfg=run_cfg)
    n_local = sum(item.pair_index >= 0 for item in dataset.items)
    return {
        "protocol": "joint",
        "benchmark": getattr(dataset, "benchmark", None),
        "score_i2t": score_i2t,
        "score_t2i": score_t2i,
        "relevant": dataset.relevant,
        "map_k": getattr(dataset, "map_k", None),
        "n_global": len(dataset.items) - n_local,
        "n_local": n_local,
    }


def joint_metrics(result: dict, map_k: Sequence[int]) -> Dict[str, float]:
    """mAP@K for image and text queries: keys ``t2i_map{K}``, ``i2t_map{K}`` and ``mean_map{K}``."""
    map_k = sorted({int(k) for k in map_k})
    i2t = mean_average_precision(result["score_i2t"], result["relevant"], map_k)
    t2i = mean_average_precision(result["score_t2i"], result["relevant"], map_k)
    metrics = {}
    for k in map_k:
        metrics[f"t2i_map{k}"] = t2i[k]
    for k in map_k:
        metrics[f"i2t_map{k}"] = i2t[k]
    for k in map_k:
        metrics[f"mean_map{k}"] = (t2i[k] + i2t[k]) / 2
    metrics["agg_metrics"] = metrics[f"mean_map{map_k[0]}"]
    metrics["n_global"] = result["n_global"]
    metrics["n_local"] = result["n_local"]
    return metrics


@registry.register_task("goal_joint_retrieval")
class GoalJointRetrievalTask(GoalRetrievalTask):
    """Train like ``goal_retrieval``; evaluate ``goal_joint`` splits with mAP@K (``run.map_k``, default 10)."""

    RUN_KEYS = RUN_CONFIG_KEYS | {"map_k"}

    def __init__(self, run_cfg=None):
        super().__init__(run_cfg)
        self.map_k = tuple(int(k) for k in self.run_cfg.get("map_k", DEFAULT_MAP_K))

    def evaluation(self, model, data_loader, cuda_enabled=True):
        if getattr(data_loader.dataset, "protocol", None) != "joint":
            raise ValueError("goal_joint_retrieval evaluates goal_joint splits only; use goal_benchmark_suite for mixed benchmarks")
        return joint_evaluation(model, data_loader, self.run_cfg)

    def after_evaluation(self, val_result, split_name, epoch, **kwargs):
        metrics = joint_metrics(val_result, val_result.get("map_k") or self.map_k)
        extra = {"benchmark": val_result.get("benchmark"), "protocol": "joint"}
        record_split_result(split_name, epoch, metrics, extra, "joint test", ("t2i_map", "i2t_map", "mean_map"))
        return metrics
