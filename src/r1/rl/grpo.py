"""GRPO as pure tensor functions: group-relative advantages, KL estimators, the loss and its variants.

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


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, baseline: str = "mean",
                     scale: str = "group") -> torch.Tensor:
    """Group-relative advantages ``A_i = (r_i - b_i) / (s + eps)``.

    Defaults are GRPO (R1 Eq. 3): ``b_i`` = the group mean, ``s`` = the group's
    sample std (Bessel-corrected, as TRL computes it). Variants:

    * ``baseline="loo"``: leave-one-out mean of the other G-1 rewards (RLOO,
      Ahmadian et al. 2024, arXiv 2402.14740, Eq. 6);
    * ``scale="batch"``: one std over the whole batch; ``scale="none"``: no
      division, as Dr. GRPO (arXiv 2503.20783, §3.1) recommends, which removes the
      bias toward groups whose rewards barely vary.

    A group whose rewards are all equal gets zero advantages (never NaN). A NaN
    reward (a verifier that could not grade) is left out of the group's
    statistics and its completion gets advantage 0; count them with
    ``rewards.isnan().sum()``.

    Args:
        rewards: [B*G] float, one scalar reward per completion (NaN = not graded).
        group_size: G >= 2.
    Returns:
        [B*G] advantages, same dtype as ``rewards``.
    Raises:
        ValueError: ``rewards`` does not split into groups of ``group_size``, or an unknown option.
    """
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"rewards of size {rewards.numel()} cannot be split into groups of {group_size} (need G >= 2)")
    if baseline not in ("mean", "loo") or scale not in ("group", "batch", "none"):
        raise ValueError(f"baseline={baseline!r}, scale={scale!r}: expected mean|loo and group|batch|none")
    grouped = rewards.view(-1, group_size)  # [B, G]
    valid = ~grouped.isnan()  # [B, G]
    r = grouped.nan_to_num(0.0)
    n = valid.sum(-1, keepdim=True)  # [B, 1] graded completions per group
    total = r.sum(-1, keepdim=True)
    mean = total / n.clamp(min=1)  # [B, 1]
    if baseline == "mean":
        base = mean.expand_as(r)
    else:  # mean of the other graded completions of the group
        base = (total - r) / (n - valid.long()).clamp(min=1)
    if scale == "group":
        var = (((r - mean) ** 2) * valid).sum(-1, keepdim=True) / (n - 1).clamp(min=1)
        std = var.sqrt()  # [B, 1]
    elif scale == "batch":
        std = r[valid].std() if valid.sum() > 1 else torch.zeros((), dtype=r.dtype)
    else:
        std, eps = torch.ones((), dtype=r.dtype), 0.0
    adv = (r - base) / (std + eps)
    return torch.where(valid, adv, torch.zeros_like(adv)).view(-1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman 2020).

    With ``log_r = ref_logp - logp``: k1 = ``-log_r`` (unbiased, can be negative),
    k2 = ``log_r**2 / 2`` (biased, low variance), k3 = ``exp(log_r) - log_r - 1``
    (unbiased, >= 0; DeepSeekMath Eq. 4 and R1 Eq. 2). Shapes: [N, L] in and out.

    Raises:
        ValueError: an unknown estimator.
    """
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r ** 2
    if estimator == "k3":
        return torch.exp(log_r) - log_r - 1.0
    raise ValueError(f"kl estimator {estimator!r}: expected k1, k2 or k3")


AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "seq_mean_token_mean",
              norm_tokens: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss [N, L] to a scalar over the completion tokens in ``mask`` [N, L].

    * ``seq_mean_token_mean``: token mean per completion, then mean over completions
      (GRPO, DeepSeekMath Eq. 3);
    * ``token_mean``: one mean over all tokens of the batch, so long completions
      weigh more (DAPO, arXiv 2503.14476, Eq. 8-9, "token-level policy gradient loss");
    * ``seq_mean_token_sum_norm``: token sum per completion divided by a constant
      ``norm_tokens`` (default L), then mean over completions (Dr. GRPO, arXiv
      2503.20783, §3.1: removes the length bias of the per-completion mean).
    """
    if mode == "seq_mean_token_mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if mode == "token_mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "seq_mean_token_sum_norm":
        return (per_token * mask).sum(-1).mean() / float(norm_tokens or mask.shape[-1])
    raise ValueError(f"aggregation {mode!r}: expected one of {', '.join(AGGREGATIONS)}")


def grpo_loss(
    logp: torch.Tensor,  # [B*G, L] log pi_theta(o_t | q, o_<t), with grad
    old_logp: torch.Tensor,  # [B*G, L] log pi_theta_old, detached
    ref_logp: torch.Tensor | None,  # [B*G, L] log pi_ref, or None when beta == 0
    advantages: torch.Tensor,  # [B*G] one advantage per completion
    mask: torch.Tensor,  # [B*G, L] 1 on completion tokens (EOS included), 0 on padding
    clip_eps: float = 0.2,
    beta: float = 0.0,
    clip_eps_high: float | None = None,
    ratio_level: str = "token",
    kl_estimator: str = "k3",
    aggregation: str = "seq_mean_token_mean",
    norm_tokens: int | None = None,
    entropy: torch.Tensor | None = None,  # [B*G, L] per-token entropy with grad, for the bonus
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective of R1 Eq. 1, negated for minimisation, in DeepSeekMath's per-token form.

    Default: ``loss = mean_i [ (1/|o_i|) sum_t ( -min(r_t A_i, clip(r_t, 1-eps, 1+eps) A_i) + beta * KL_t ) ]``
    with ``r_t = exp(logp - old_logp)`` the importance ratio and KL the k3 estimator.
    Variants, each one argument:

    * ``clip_eps_high``: upper clip range apart from the lower one ``clip_eps``
      (DAPO clip-higher, arXiv 2503.14476, Eq. 10: 0.2 / 0.28);
    * ``ratio_level="sequence"``: one length-normalised ratio per completion,
      ``s_i = exp(mean_t (logp - old_logp))``, clipped per sequence (GSPO, arXiv
      2507.18071, Eq. 5-7); the KL term stays per token;
    * ``kl_estimator``: k1, k2 or k3 (:func:`kl_estimate`); beta = 0 needs no reference;
    * ``aggregation``: see :func:`aggregate` (GRPO, DAPO token mean, Dr. GRPO);
    * ``entropy_coef``: subtracts ``entropy_coef * aggregate(entropy)`` (an entropy bonus).

    Returns:
        (loss, stats): a scalar tensor with grad, and detached floats ``clipfrac``
        (share of tokens where the clipped term was chosen and differs),
        ``clipfrac_low`` / ``clipfrac_high`` (its parts below 1 - eps and above 1 + eps_high),
        ``kl`` (masked token mean of the estimator), ``ratio_mean``, ``ratio_max_dev`` (max |r - 1|)
        and ``entropy`` when given.
    Raises:
        ValueError: ``ref_logp`` is None while ``beta`` > 0, or an unknown option.
    """
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta={beta} needs ref_logp; pass the reference model's log-probabilities")
    if ratio_level not in ("token", "sequence"):
        raise ValueError(f"ratio_level={ratio_level!r}: expected token or sequence")
    eps_low, eps_high = clip_eps, clip_eps if clip_eps_high is None else clip_eps_high
    adv = advantages.unsqueeze(-1)  # [B*G, 1]
    log_ratio = logp - old_logp  # [B*G, L]
    if ratio_level == "sequence":
        seq_log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
        log_ratio = seq_log_ratio.expand_as(logp)  # [B*G, L], the same s_i on every token of completion i
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)  # [B*G, L]
    kl = kl_estimate(logp, ref_logp, kl_estimator) if ref_logp is not None else torch.zeros_like(logp)
    if beta > 0:
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, aggregation, norm_tokens)
    if entropy is not None and entropy_coef:
        loss = loss - entropy_coef * aggregate(entropy, mask, aggregation, norm_tokens)

    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        was_clipped = (clipped < unclipped).float() * mask
        stats = {
            "clipfrac": (was_clipped.sum() / n).item(),
            "clipfrac_low": ((was_clipped * (ratio < 1.0 - eps_low)).sum() / n).item(),
            "clipfrac_high": ((was_clipped * (ratio > 1.0 + eps_high)).sum() / n).item(),
            "kl": ((kl * mask).sum() / n).item(),
            "ratio_mean": ((ratio * mask).sum() / n).item(),
            "ratio_max_dev": ((ratio - 1).abs() * mask).max().item() if mask.any() else 0.0,
        }
        if entropy is not None:
            stats["entropy"] = ((entropy * mask).sum() / n).item()
    return loss, stats
