"""Long-CLIP's positional-embedding stretching: 77 text positions to 248.

Long-CLIP (Zhang et al., ECCV 2024) keeps the first ``keep`` positions, which
carry most of CLIP's short-text training, and stretches each later position
``p`` into ``ratio`` entries blended linearly between ``pe[p]`` and
``pe[p + 1]`` at weights ``1, 1 - 1/ratio, ...``. The last original position
has no successor, so its entries extrapolate along ``pe[-1] - pe[-2]``. With
77 positions, ``keep = 20`` and ``ratio = 4``: ``20 + 57 * 4 = 248``.
"""

import math

import torch


def stretch_positional_embedding(
    positional_embedding: torch.Tensor, target_length: int = 248, keep: int = 20
) -> torch.Tensor:
    """Return a ``(target_length, D)`` positional embedding stretched from ``(L, D)``.

    The stretch ratio is the smallest integer that reaches ``target_length``;
    when ``keep + (L - keep) * ratio`` exceeds it, the tail is cut off. A
    ``target_length`` equal to ``L`` returns a copy; a shorter one is rejected.
    """
    length, _ = positional_embedding.shape
    if target_length == length:
        return positional_embedding.detach().clone()
    if target_length < length:
        raise ValueError(
            f"context_length {target_length} is shorter than the checkpoint's {length} text positions; "
            f"set context_length >= {length}"
        )
    if not 1 <= keep < length - 1:
        raise ValueError(f"keep must be in [1, {length - 2}] for {length} positions, got {keep}")

    ratio = math.ceil((target_length - keep) / (length - keep))
    pe = positional_embedding.detach().to(torch.float32)

    weights = torch.arange(ratio, dtype=torch.float32) / ratio  # (ratio,)
    current = pe[keep:-1]  # (L - keep - 1, D)
    following = pe[keep + 1 :]
    blended = current[:, None] * (1 - weights[:, None]) + following[:, None] * weights[:, None]
    blended = blended.reshape(-1, pe.shape[1])

    step = pe[-1] - pe[-2]
    last = pe[-1][None] + weights[:, None] * step[None]  # pe[-1] + k * step / ratio
    stretched = torch.cat([pe[:keep], blended, last], dim=0)[:target_length]
    return stretched.to(positional_embedding.dtype)


def causal_mask(length: int) -> torch.Tensor:
    """Return the additive ``(length, length)`` causal mask open_clip's text encoder uses."""
    return torch.full((length, length), float("-inf")).triu_(1)
