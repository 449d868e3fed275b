"""Preference-consistency weights from a reference RM (paper section 4.2).

For a partial pair with reference rewards ``r_w`` and ``r_l``::

    p   = sigmoid(|r_w - r_l|)
    H   = -(p log p + (1 - p) log(1 - p))          # binary entropy, nats
    w   = 1 / H   if r_w > r_l   else 0             # pair dropped

``H`` shrinks to 0 as the gap grows, so ``1/H`` is unbounded: weights are capped
at ``cap`` (default 100, reached at a gap of about 6.64; 1/H is 1/ln 2 =
1.443 at a zero gap and 24.9 at a gap of 5). ``normalize="mean"`` then rescales
the kept weights to mean 1, which keeps the loss scale (and so the learning
rate) comparable to the unweighted loss (Eq. 2).

The entropy is computed from the gap in fp32 with softplus, never from ``p``
itself: with ``a = |gap|``, ``log p = -softplus(-a)``,
``log(1 - p) = -softplus(a)`` and ``1 - p = sigmoid(-a)``, so large gaps give a tiny positive ``H``
instead of ``0 * log 0 = nan``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CAP = 100.0


def binary_entropy_of_gap(gap: torch.Tensor) -> torch.Tensor:
    """``H(sigmoid(|gap|))`` in nats, fp32, stable for any finite gap."""
    a = gap.float().abs()
    # 1 - p is computed as sigmoid(-a), not 1 - sigmoid(a), which rounds to 0 in fp32 beyond a ~ 17.
    return torch.sigmoid(a) * F.softplus(-a) + torch.sigmoid(-a) * F.softplus(a)


def preference_weights(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    cap: float | None = DEFAULT_CAP,
    normalize: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(keep, weight)``: the pairs the reference agrees with and their weights (0 if dropped)."""
    chosen_rewards, rejected_rewards = chosen_rewards.float(), rejected_rewards.float()
    if not (torch.isfinite(chosen_rewards).all() and torch.isfinite(rejected_rewards).all()):
        raise ValueError("reference rewards contain NaN or inf")
    gap = chosen_rewards - rejected_rewards
    keep = gap > 0
    entropy = binary_entropy_of_gap(gap)
    weight = torch.where(entropy > 0, 1.0 / entropy, torch.full_like(entropy, float("inf")))
    if cap is not None:
        if cap <= 0:
            raise ValueError(f"weight cap must be > 0, got {cap}")
        weight = weight.clamp(max=cap)
    weight = torch.where(keep, weight, torch.zeros_like(weight))
    if normalize == "mean":
        if keep.any():
            weight = weight / weight[keep].mean()
    elif normalize != "none":
        raise ValueError(f"weight normalize must be 'none' or 'mean', got {normalize!r}")
    if not torch.isfinite(weight).all():
        raise ValueError("an infinite weight: set a weight cap (weight_cap) for gaps this large")
    return keep, weight
