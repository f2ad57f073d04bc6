"""Feature helpers shared by the GOAL models and the evaluation tasks.

``masked_mean`` pools tokens under region or span masks, ``gather_rows``
collects evaluation features from every rank in dataset order,
``encode_rank_share`` splits items such as captions across ranks, and
``eval_autocast`` reads the task's mixed-precision settings.
"""

from typing import Callable

import torch
from tqdm import tqdm

from lavis_goal.common import dist as goal_dist


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average ``(B, N, C)`` tokens over ``(B, K, N)`` masks into ``(B, K, C)``, with zeros where a mask is empty."""
    weights = mask.to(tokens.dtype)
    summed = torch.einsum("bkn,bnc->bkc", weights, tokens)
    return summed / weights.sum(-1, keepdim=True).clamp(min=1)


def gather_rows(rows: torch.Tensor, index: torch.Tensor, total: int) -> torch.Tensor:
    """Collect ``(n, D)`` ``rows`` from every rank into a ``(total, D)`` tensor, row ``index[i]`` from ``rows[i]``.

    Ranks may have different numbers of rows, and a distributed sampler's padded
    duplicates carry the same index and write the same row twice.
    """
    if goal_dist.get_world_size() > 1:
        counts = goal_dist.all_gather_no_grad(torch.tensor([rows.shape[0]], device=rows.device))
        longest = int(counts.max())
        padded = rows.new_zeros(longest, rows.shape[1])
        padded[: rows.shape[0]] = rows
        padded_index = index.new_full((longest,), -1)
        padded_index[: index.shape[0]] = index
        rows = goal_dist.all_gather_no_grad(padded)
        index = goal_dist.all_gather_no_grad(padded_index)
        keep = index >= 0
        rows, index = rows[keep], index[keep]
    out = rows.new_zeros(total, rows.shape[1])
    out[index] = rows
    return out


def encode_rank_share(total: int, batch_size: int, encode: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor,
                      desc: str = "Encoding texts") -> torch.Tensor:
    """Encode items ``0 .. total - 1`` split across ranks and return all ``(total, D)`` rows on every rank.

    Each rank takes every ``world_size``-th item and calls ``encode`` with a
    1-D tensor of up to ``batch_size`` item indices, which returns their
    ``(n, D)`` rows. A rank left without items contributes an empty tensor
    with the dtype, device and last dimension of ``like``.
    """
    rank, world = goal_dist.get_rank(), goal_dist.get_world_size()
    own_ids = torch.arange(total)[rank::world]
    rows = []
    starts = range(0, len(own_ids), batch_size)
    for start in tqdm(starts, desc=desc, disable=not goal_dist.is_main_process(), leave=False):
        rows.append(encode(own_ids[start : start + batch_size]))
    rows = torch.cat(rows) if rows else like.new_zeros(0, like.shape[-1])
    return gather_rows(rows, own_ids.to(like.device), total)


def eval_autocast(task_cfg, device: torch.device):
    """Return the autocast context for evaluation: on with ``run.amp`` on CUDA only, in ``run.amp_dtype`` (bfloat16 by default)."""
    dtype_name = task_cfg.get("amp_dtype", "bfloat16") if task_cfg is not None else "bfloat16"
    enabled = bool(task_cfg.get("amp", False)) if task_cfg is not None else False
    enabled = enabled and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype_name), enabled=enabled)
