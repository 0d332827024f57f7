"""Overlong reward shaping (DAPO, arXiv 2503.14476, §3.4, Eq. 13)."""

from __future__ import annotations

import torch


def soft_overlong_penalty(lengths: torch.Tensor, max_tokens: int, cache_tokens: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward.

    ``0`` while ``|y| <= L_max - L_cache``; ``((L_max - L_cache) - |y|) / L_cache`` (from 0 down
    to -1) inside the last ``L_cache`` tokens; ``-1`` beyond ``L_max``.

    Args:
        lengths: [N] completion lengths in tokens.
        max_tokens: L_max, the completion limit in tokens.
        cache_tokens: L_cache, the width of the linear zone in tokens (0 = no shaping).
    Returns:
        [N] float penalties in [-1, 0].
    Raises:
        ValueError: ``cache_tokens`` is negative or larger than ``max_tokens``.
    """
    if not 0 <= cache_tokens <= max_tokens:
        raise ValueError(f"cache_tokens={cache_tokens}: expected 0 <= cache_tokens <= max_tokens={max_tokens}")
    lengths = lengths.float()
    if cache_tokens == 0:
        return torch.where(lengths > max_tokens, -1.0, 0.0)
    start = max_tokens - cache_tokens
    return ((start - lengths) / cache_tokens).clamp(-1.0, 0.0)
