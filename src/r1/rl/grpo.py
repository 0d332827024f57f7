"""GRPO as pure tensor functions: group-relative advantages, the k3 KL estimator, the loss.

Shape vocabulary: ``B`` prompts, ``G`` completions per prompt, ``L`` completion
tokens. Rows are grouped prompt-major: rows ``i*G .. i*G+G-1`` share prompt ``i``.

Sources:
* DeepSeek-R1, arXiv 2501.12948, §2.2.1, Eq. 1-3 (objective, KL, advantage).
* DeepSeekMath, arXiv 2402.03300, §4.1.1, Eq. 3 (the per-token form: token mean
  per completion, then mean over the group) and Eq. 4 (the k3 KL estimator,
  Schulman 2020, "Approximating KL divergence").
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages ``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)``.

    R1 Eq. 3. The std is the sample std (Bessel-corrected, as TRL computes it).
    A group whose rewards are all equal gets zero advantages (never NaN).

    Args:
        rewards: [B*G] float, one scalar reward per completion.
        group_size: G >= 2.
    Returns:
        [B*G] advantages, same dtype as ``rewards``.
    Raises:
        ValueError: ``rewards`` does not split into groups of ``group_size``.
    """
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"rewards of size {rewards.numel()} cannot be split into groups of {group_size} (need G >= 2)")
    grouped = rewards.view(-1, group_size)  # [B, G]
    mean = grouped.mean(-1, keepdim=True)  # [B, 1]
    std = grouped.std(-1, keepdim=True)  # [B, 1]
    return ((grouped - mean) / (std + eps)).view(-1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref): ``exp(q - p) - (q - p) - 1``.

    With ``p = logp`` and ``q = ref_logp`` (DeepSeekMath Eq. 4, R1 Eq. 2); unbiased
    and always >= 0. Shapes: [N, L] in, [N, L] out.
    """
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def grpo_loss(
    logp: torch.Tensor,  # [B*G, L] log pi_theta(o_t | q, o_<t), with grad
    old_logp: torch.Tensor,  # [B*G, L] log pi_theta_old, detached
    ref_logp: torch.Tensor | None,  # [B*G, L] log pi_ref, or None when beta == 0
    advantages: torch.Tensor,  # [B*G] one advantage per completion
    mask: torch.Tensor,  # [B*G, L] 1 on completion tokens (EOS included), 0 on padding
    clip_eps: float = 0.2,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective of R1 Eq. 1, negated for minimisation, in DeepSeekMath's per-token form.

    ``loss = mean_i [ (1/|o_i|) sum_t ( -min(r_t A_i, clip(r_t, 1-eps, 1+eps) A_i) + beta * KL_t ) ]``
    with ``r_t = exp(logp - old_logp)`` the importance ratio: token mean per
    completion, then mean over all completions (equal to the mean over groups of
    the mean within each group, since groups have equal size).

    Returns:
        (loss, stats): a scalar tensor with grad, and detached floats
        ``clipfrac`` (share of tokens where the clipped term was chosen and differs),
        ``kl`` (masked token mean of k3), ``ratio_mean``, ``ratio_max_dev`` (max |r - 1|).
    Raises:
        ValueError: ``ref_logp`` is None while ``beta`` > 0.
    """
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta={beta} needs ref_logp; pass the reference model's log-probabilities")
    adv = advantages.unsqueeze(-1)  # [B*G, 1]
    ratio = torch.exp(logp - old_logp)  # [B*G, L]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)  # [B*G, L]
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta > 0:
        per_token = per_token + beta * kl
    tokens = mask.sum(-1).clamp(min=1.0)  # [B*G]
    loss = ((per_token * mask).sum(-1) / tokens).mean()

    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        was_clipped = (clipped < unclipped).float()
        stats = {
            "clipfrac": ((was_clipped * mask).sum() / n).item(),
            "kl": ((kl * mask).sum() / n).item(),
            "ratio_mean": ((ratio * mask).sum() / n).item(),
            "ratio_max_dev": ((ratio - 1).abs() * mask).max().item() if mask.any() else 0.0,
        }
    return loss, stats
