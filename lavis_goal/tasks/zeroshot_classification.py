"""Zero-shot classification: CLIP prompt ensembles as the classifier, top-K accuracy.

Each class's embedding is the normalized mean of its prompts' normalized text
embeddings (CLIP's prompt ensembling). An image's prediction is the class
with the highest cosine similarity. Datasets come from the ``cifar10``,
``cifar100`` and ``imagenet_o`` builders.
"""

import logging
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lavis.common.registry import registry
from tqdm import tqdm

from lavis_goal.common import dist as goal_dist
from lavis_goal.models.features import gather_rows
from lavis_goal.tasks.goal_retrieval import RUN_CONFIG_KEYS, GoalRetrievalTask, record_split_result

logger = logging.getLogger(__name__)

DEFAULT_TOPK = (1, 5)


def _pooled(features, key: str) -> torch.Tensor:
    # NOTE: goal_blip2's extract_features returns per-query and per-token
    # features instead of one embedding per input, so only goal_clip-style models work here.
    embeds = features[key]
    if embeds.dim() != 2:
        raise ValueError(
            f"Zero-shot classification needs one embedding per input, but the model's extract_features returned "
            f"{key} of shape {tuple(embeds.shape)}; use a model whose embeddings are (batch, dim), such as goal_clip"
        )
    return embeds.float()


def _autocast(run_cfg, device: torch.device):
    enabled = bool(run_cfg.get("amp", False)) and device.type == "cuda"
    dtype = getattr(torch, str(run_cfg.get("amp_dtype", "bfloat16")))
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def class_embeddings(model, prompts: Sequence[Sequence[str]], batch_size: int, autocast) -> torch.Tensor:
    """Return ``(n_classes, D)`` normalized classifier weights from each class's prompts."""
    per_class = len(prompts[0])
    if any(len(p) != per_class for p in prompts):
        raise ValueError("Every class needs the same number of prompts")
    flat = [text for class_prompts in prompts for text in class_prompts]
    rows = []
    show = goal_dist.is_main_process()
    for start in tqdm(range(0, len(flat), batch_size), desc="Encoding prompts", disable=not show, leave=False):
        with autocast:
            rows.append(_pooled(model.extract_features({"text_input": flat[start : start + batch_size]}, mode="text"), "text_embeds"))
    embeds = F.normalize(torch.cat(rows), dim=-1).view(len(prompts), per_class, -1)
    return F.normalize(embeds.mean(1), dim=-1)


@torch.no_grad()
def zeroshot_evaluation(model, data_loader, run_cfg) -> dict:
    """Return the ``(n_images, n_classes)`` cosine scores and the labels of ``data_loader.dataset``."""
    dataset = data_loader.dataset
    device = model.device
    autocast = _autocast(run_cfg, device)
    batch_size = int(run_cfg.get("batch_size_eval", 64))
    classifier = class_embeddings(model, dataset.prompts, batch_size, autocast)

    rows, index = [], []
    for batch in tqdm(data_loader, desc="Encoding images", disable=not goal_dist.is_main_process(), leave=False):
        with autocast:
            rows.append(_pooled(model.extract_features({"image": batch["image"].to(device)}, mode="image"), "image_embeds"))
        index.append(batch["index"].to(device))
    image_embeds = gather_rows(torch.cat(rows), torch.cat(index), len(dataset))
    scores = (image_embeds @ classifier.to(image_embeds.device).T).cpu().numpy()
    return {
        "protocol": "classification",
        "benchmark": getattr(dataset, "benchmark", None),
        "scores": scores,
        "labels": dataset.labels.numpy(),
        "topk": getattr(dataset, "topk", None),
    }


def topk_accuracy(scores, labels, ks: Sequence[int] = DEFAULT_TOPK) -> Dict[int, float]:
    """Return ``{K: accuracy}`` in percent; a label counts at K if fewer than K other classes score at least as high.

    Ties count against the model, as in the retrieval metrics.
    """
    scores = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows for {labels.shape[0]} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]):
        raise ValueError(f"Labels must lie in [0, {scores.shape[1]}), got {int(labels.min())}..{int(labels.max())}")
    true_scores = scores.gather(1, labels[:, None])
    rank = (scores >= true_scores).sum(1) - 1  # other classes scoring at least as high
    return {int(k): 100.0 * float((rank < int(k)).float().mean()) for k in ks}


def classification_metrics(result: dict, ks: Sequence[int]) -> Dict[str, float]:
    """Keys ``top{K}`` (percent), ``agg_metrics`` (top-1, or the smallest K), ``n_images`` and ``n_classes``."""
    ks = sorted({int(k) for k in ks})
    accuracy = topk_accuracy(result["scores"], result["labels"], ks)
    metrics: Dict[str, float] = {f"top{k}": accuracy[k] for k in ks}
    metrics["agg_metrics"] = metrics[f"top{ks[0]}"]
    metrics["n_images"] = int(len(result["labels"]))
    metrics["n_classes"] = int(np.asarray(result["scores"]).shape[1])
    return metrics


@registry.register_task("goal_zeroshot_classification")
class GoalZeroShotClassificationTask(GoalRetrievalTask):
    """Evaluate ``cifar10``, ``cifar100`` or ``imagenet_o`` splits: top-K accuracy (``run.topk``, default 1 and 5)."""

    RUN_KEYS = RUN_CONFIG_KEYS | {"topk"}

    def __init__(self, run_cfg=None):
        super().__init__(run_cfg)
        self.topk = tuple(int(k) for k in self.run_cfg.get("topk", DEFAULT_TOPK))

    def evaluation(self, model, data_loader, cuda_enabled=True):
        if getattr(data_loader.dataset, "protocol", None) != "classification":
            raise ValueError("goal_zeroshot_classification evaluates classification splits only; use goal_benchmark_suite for mixed benchmarks")
        return zeroshot_evaluation(model, data_loader, self.run_cfg)

    def after_evaluation(self, val_result, split_name, epoch, **kwargs):
        metrics = classification_metrics(val_result, val_result.get("topk") or self.topk)
        extra = {"benchmark": val_result.get("benchmark"), "protocol": "classification"}
        record_split_result(split_name, epoch, metrics, extra, "zero-shot classification", ("top",))
        return metrics
