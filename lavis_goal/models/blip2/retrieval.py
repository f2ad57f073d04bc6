"""Retrieval scores for BLIP-2: query-max similarities and ITM re-ranking of each query's top k.

The re-ranking follows LAVIS's BLIP-2 retrieval evaluation: every image
query's ``k`` most similar captions, and every caption query's ``k`` most
similar images, get the score ``ITM match logit + contrastive similarity``.
LAVIS writes -100 into every other entry. Here the other entries keep their
contrastive order below the re-ranked ones, so Recall@K for K above ``k``
still means something.
"""

from typing import Callable, Tuple

import torch
from tqdm import tqdm

from lavis_goal.common import dist as goal_dist
from lavis_goal.losses import query_max_similarity

# Images scored per block when the similarity matrix is built, which bounds
# the (block, n_texts, queries) intermediate.
SIMILARITY_BLOCK = 256


def similarity_matrix(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Return ``(n_images, n_texts)`` fp32 similarities of ``(n_images, Q, D)`` query sets and ``(n_texts, D)`` texts."""
    image_embeds, text_embeds = image_embeds.float(), text_embeds.float()
    blocks = [
        query_max_similarity(image_embeds[start : start + SIMILARITY_BLOCK], text_embeds)
        for start in range(0, image_embeds.shape[0], SIMILARITY_BLOCK)
    ]
    return torch.cat(blocks) if blocks else image_embeds.new_zeros(0, text_embeds.shape[0])


def image_owners(local_index: torch.Tensor, n_images: int) -> torch.Tensor:
    """Return, for every image, the lowest rank that encoded it: ``(n_images,)`` int64.

    A sharded loader gives each rank part of the images (and
    ``DistributedSampler`` repeats a few to even the shards), so each ITM
    pair is scored once, on its image's owner.
    """
    has_image = torch.zeros(1, n_images, dtype=torch.uint8, device=local_index.device)
    has_image[0, local_index] = 1
    table = goal_dist.all_gather_no_grad(has_image)  # (world, n_images)
    if not bool(table.any(0).all()):
        missing = (~table.any(0)).nonzero().flatten()[:10].tolist()
        raise RuntimeError(f"No rank encoded images {missing} of the evaluation set; the loader must cover every image")
    return table.argmax(0)  # argmax returns the first maximal index


def rerank_with_itm(
    sim: torch.Tensor,
    encoder_tokens: torch.Tensor,
    local_index: torch.Tensor,
    text_ids: torch.Tensor,
    score_pairs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    k: int,
    batch_size: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Re-rank the top ``k`` of every row and column of ``sim`` with ITM scores.

    Args:
        sim: ``(n_images, n_texts)`` contrastive similarities, equal on every rank.
        encoder_tokens: ``(n_local, T, W)`` vision-encoder tokens (after
            ``ln_vision``) of the images this rank encoded, on any device.
        local_index: ``(n_local,)`` dataset indices of those images.
        text_ids: ``(n_texts, L)`` token ids of every caption.
        score_pairs: ``(image_tokens (P, T, W), text_ids (P, L)) -> (P,)``
            ITM match logits, on the device of ``sim``.
        k: candidates per query.
        batch_size: pairs per ``score_pairs`` call.

    Returns ``(score_i2t, score_t2i)``, ``(n_images, n_texts)`` and
    ``(n_texts, n_images)``, equal on every rank.
    """
    n_images, n_texts = sim.shape
    device = sim.device
    top_i2t = sim.topk(min(k, n_texts), dim=1).indices
    top_t2i = sim.t().topk(min(k, n_images), dim=1).indices
    mask_i2t = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, top_i2t, True)
    mask_t2i = torch.zeros(n_texts, n_images, dtype=torch.bool, device=device).scatter_(1, top_t2i, True)

    # A pair in both top-k lists is scored once, by the rank that owns its image.
    owners = image_owners(local_index.to(device), n_images)
    mine = (mask_i2t | mask_t2i.t()) & (owners == goal_dist.get_rank())[:, None]
    image_rows, text_rows = mine.nonzero(as_tuple=True)
    position = torch.full((n_images,), -1, dtype=torch.long)
    position[local_index.cpu()] = torch.arange(local_index.shape[0])

    itm = torch.zeros_like(sim)
    starts = range(0, image_rows.shape[0], batch_size)
    for start in tqdm(starts, desc="ITM re-ranking", disable=not goal_dist.is_main_process(), leave=False):
        images = image_rows[start : start + batch_size]
        texts = text_rows[start : start + batch_size]
        tokens = encoder_tokens[position[images.cpu()]].to(device)
        itm[images, texts] = score_pairs(tokens, text_ids[texts.cpu()].to(device)).float()
    itm = goal_dist.all_reduce_sum(itm)

    return _rank_reranked(sim, itm, mask_i2t), _rank_reranked(sim.t(), itm.t(), mask_t2i)


def _rank_reranked(sim: torch.Tensor, itm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Score re-ranked entries ``itm + sim`` and shift the others below each row's lowest re-ranked score."""
    reranked = itm + sim
    lowest = torch.where(mask, reranked, torch.full_like(sim, float("inf"))).amin(dim=1, keepdim=True)
    below = sim - sim.amax(dim=1, keepdim=True) + lowest - 1.0
    return torch.where(mask, reranked, below)
