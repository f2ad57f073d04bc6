"""The GOAL objective on embeddings, independent of the backbone.

``L = w_g * L_global + w_l * L_local + w_ti * L_tsl_image + w_tt * L_tsl_text``
with the reference weights ``1.0, 0.5, 1.0, 1.0``. A weight of 0 switches a
term off and skips its computation. The four ablations of the GOAL paper
(global only, local only, without TSL, full GOAL) are four weight settings.

Every term is a mean over the valid samples of the *global* batch, all ranks
together. Each rank returns ``world_size * (its share of the sum) / count``,
so DistributedDataParallel's gradient averaging reproduces the gradient of a
single process that saw the whole batch.

Image embeddings are ``(B, D)`` vectors (CLIP) or ``(B, Q, D)`` sets of query
embeddings (BLIP-2's Q-Former). A query set is scored against a text
embedding by the maximum over its queries, as BLIP-2's image-text
contrastive loss does, and two query sets are compared query by query.
"""

import logging
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lavis_goal.common import dist as goal_dist
from lavis_goal.common.config_check import check_keys

logger = logging.getLogger(__name__)

TSL_TARGETS = ("diagonal", "matrix")


@dataclass
class GoalLossConfig:
    """Weights of the four GOAL terms and the TSL target.

    ``tsl_target``: ``"diagonal"`` pulls each pooled region or span towards its
    own local embedding, ``(1 - cos)^2``, as the GOAL reference code trains.
    ``"matrix"`` compares every pooled feature with every local embedding of
    the batch and regresses the cosine matrix onto the identity, as the GOAL
    paper's text describes.
    """

    global_weight: float = 1.0
    local_weight: float = 0.5
    tsl_image_weight: float = 1.0
    tsl_text_weight: float = 1.0
    tsl_target: str = "diagonal"

    def __post_init__(self):
        if self.tsl_target not in TSL_TARGETS:
            raise ValueError(f"loss.tsl_target must be one of {TSL_TARGETS}, got {self.tsl_target!r}")
        for name in ("global_weight", "local_weight", "tsl_image_weight", "tsl_text_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def uses_local_inputs(self) -> bool:
        """True when any term needs the local crops and sentences encoded."""
        return self.local_weight > 0 or self.tsl_image_weight > 0 or self.tsl_text_weight > 0

    @classmethod
    def from_dict(cls, cfg: Optional[dict]) -> "GoalLossConfig":
        cfg = dict(cfg or {})
        check_keys(cfg, cls.__dataclass_fields__, "model.loss")
        return cls(**cfg)


def _global_mean(per_sample: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sum ``per_sample`` over valid rows, divided by the valid count of all ranks.

    Multiplied by the world size so that averaging the per-rank values (as DDP
    does with gradients) gives the global mean. Returns 0 with a graph when no
    rank has a valid row.
    """
    count = goal_dist.all_reduce_sum(valid.sum().to(torch.float64)).item()
    total = torch.where(valid, per_sample, torch.zeros_like(per_sample)).sum()
    if count == 0:
        return total * 0.0
    return total * goal_dist.get_world_size() / count


def query_max_similarity(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Score ``(B, Q, D)`` query sets against ``(C, D)`` text embeddings: ``(B, C)``, the max over queries."""
    return torch.einsum("bqd,cd->bcq", image, text).amax(dim=-1)


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalized image and ``(B, D)`` text embeddings.

    ``image`` is ``(B, D)``, or ``(B, Q, D)`` query embeddings scored with
    ``query_max_similarity``. Columns come from every rank (gathered with
    gradient); rows are this rank's samples. Invalid samples are neither rows
    nor columns.
    """
    batch = image.shape[0]
    if valid is None:
        valid = torch.ones(batch, dtype=torch.bool, device=image.device)

    all_image = goal_dist.all_gather_with_grad(image)
    all_text = goal_dist.all_gather_with_grad(text)
    all_valid = goal_dist.all_gather_no_grad(valid)

    if image.ndim == 3:
        logits_i2t = logit_scale * query_max_similarity(image, all_text)  # (B, world * B)
        logits_t2i = logit_scale * query_max_similarity(all_image, text).T
    else:
        logits_i2t = logit_scale * image @ all_text.T  # (B, world * B)
        logits_t2i = logit_scale * text @ all_image.T
    column_mask = ~all_valid[None, :]
    logits_i2t = logits_i2t.masked_fill(column_mask, float("-inf"))
    logits_t2i = logits_t2i.masked_fill(column_mask, float("-inf"))

    labels = torch.arange(batch, device=image.device) + goal_dist.get_rank() * batch
    # Rows of invalid samples would be all -inf at their own label; give them a
    # finite dummy target and drop them in _global_mean.
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    safe_i2t = torch.where(valid[:, None], logits_i2t, torch.zeros_like(logits_i2t))
    safe_t2i = torch.where(valid[:, None], logits_t2i, torch.zeros_like(logits_t2i))
    per_row = 0.5 * (
        F.cross_entropy(safe_i2t, safe_labels, reduction="none")
        + F.cross_entropy(safe_t2i, safe_labels, reduction="none")
    )
    return _global_mean(per_row, valid)


def tsl_loss(pooled: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, mode: str = "diagonal") -> torch.Tensor:
    """Token similarity loss between pooled-token embeddings and local embeddings.

    Args:
        pooled: ``(B, D)`` projected means of the region's patch tokens or the
            sentence's caption tokens, or ``(B, Q, D)`` query embeddings (BLIP-2).
        target: embeddings of the crop or sentence encoded alone, the same shape as ``pooled``.
        valid: ``(B,)`` False where the box left the image or the span was truncated.
        mode: ``"diagonal"``: ``(1 - cos(pooled_b, target_b))^2``; ``"matrix"``:
            mean over valid columns ``c`` of ``(cos(pooled_b, target_c) - [b == c])^2``.
            For query sets ``cos`` is the mean over ``q`` of ``cos(pooled_bq, target_cq)``.

    Gradients flow into both arguments.
    """
    if pooled.ndim == 3 and pooled.shape[1:] != target.shape[1:]:
        raise ValueError(f"TSL query sets must have the same shape, got {tuple(pooled.shape)} and {tuple(target.shape)}")
    pooled = F.normalize(pooled, dim=-1)
    target = F.normalize(target, dim=-1)
    if mode == "diagonal":
        cosine = (pooled * target).sum(-1)
        if cosine.ndim == 2:  # (B, Q) query-wise cosines
            cosine = cosine.mean(-1)
        per_row = (1.0 - cosine).pow(2)
        return _global_mean(per_row, valid)

    all_target = goal_dist.all_gather_with_grad(target)
    all_valid = goal_dist.all_gather_no_grad(valid)
    if pooled.ndim == 3:
        cosine = torch.einsum("bqd,cqd->bc", pooled, all_target) / pooled.shape[1]
    else:
        cosine = pooled @ all_target.T  # (B, world * B)
    identity = torch.zeros_like(cosine)
    rows = torch.arange(pooled.shape[0], device=pooled.device)
    identity[rows, rows + goal_dist.get_rank() * pooled.shape[0]] = 1.0
    squared = (cosine - identity).pow(2) * all_valid[None, :]
    per_row = squared.sum(-1) / all_valid.sum().clamp(min=1)
    return _global_mean(per_row, valid)


class GoalLoss(nn.Module):
    """Combine the GOAL terms; returns ``{"loss", "loss_global", ...}`` for logging.

    ``forward`` takes L2-normalized embeddings (``(B, D)`` global, ``(M, D)``
    local with ``M = B * k`` local pairs) and projected, unnormalized pooled
    features of the same ``(M, D)`` shape. Image embeddings and
    ``region_pooled`` may instead be ``(B, Q, D)`` and ``(M, Q, D)`` query
    sets. Missing inputs are allowed only for terms whose weight is 0.
    """

    def __init__(self, cfg: GoalLossConfig):
        super().__init__()
        self.cfg = cfg

    def forward(
        self,
        logit_scale: torch.Tensor,
        image_global: torch.Tensor,
        text_global: torch.Tensor,
        image_local: Optional[torch.Tensor] = None,
        text_local: Optional[torch.Tensor] = None,
        local_valid: Optional[torch.Tensor] = None,
        region_pooled: Optional[torch.Tensor] = None,
        region_valid: Optional[torch.Tensor] = None,
        span_pooled: Optional[torch.Tensor] = None,
        span_valid: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        zero = image_global.sum() * 0.0
        terms = {
            "loss_global": zero,
            "loss_local": zero,
            "loss_tsl_image": zero,
            "loss_tsl_text": zero,
        }

        if cfg.global_weight > 0:
            terms["loss_global"] = contrastive_loss(image_global, text_global, logit_scale)
        if cfg.local_weight > 0:
            terms["loss_local"] = contrastive_loss(image_local, text_local, logit_scale, local_valid)
        if cfg.tsl_image_weight > 0:
            terms["loss_tsl_image"] = tsl_loss(region_pooled, image_local, region_valid & local_valid, cfg.tsl_target)
        if cfg.tsl_text_weight > 0:
            terms["loss_tsl_text"] = tsl_loss(span_pooled, text_local, span_valid & local_valid, cfg.tsl_target)

        total = (
            cfg.global_weight * terms["loss_global"]
            + cfg.local_weight * terms["loss_local"]
            + cfg.tsl_image_weight * terms["loss_tsl_image"]
            + cfg.tsl_text_weight * terms["loss_tsl_text"]
        )
        return {"loss": total, **terms}
