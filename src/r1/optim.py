"""The optimizer every r1 training loop uses (pretraining, SFT, GRPO)."""

from __future__ import annotations

from typing import Any, Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")  # device types whose AdamW r1 runs fused (torch >= 2.4 has the CPU kernel)


def adamw(params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float, betas: tuple[float, float],
          weight_decay: float) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params``, fused into one kernel per step where torch has one.

    The update is torch's AdamW (after Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Algorithm 2,
    with the decay scaled by the learning rate as torch does it; eps 1e-8, bias-corrected moments): for each parameter
    p with gradient g at step t,
    p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).

    ``fused=True`` when every parameter (of every group) is a floating-point tensor on CPU or CUDA: one pass over each
    parameter and its two moments instead of a kernel per operation and parameter. The same update up to float
    rounding. On the 2-core CPU of docs/performance.md, in float32: 26.6 -> 6.4 ms per step for a 10M-parameter Qwen2
    (98 tensors; 33 -> 8 ms inside a GRPO step), 2.2 -> 0.6 ms for the main job's 0.8M-parameter policy. Elsewhere
    (other devices, complex parameters), torch's default implementation.

    The flag travels in the optimizer's state dict: a run resumed from a checkpoint keeps the implementation it was
    saved with (an older, unfused checkpoint resumes unfused).

    Args:
        params: the tensors to train (those with ``requires_grad``), or torch-style parameter groups: dicts with
            ``"params"`` (the group's tensors) and optionally their own ``lr``, ``betas`` or ``weight_decay`` (for
            example no decay on norms and biases), the arguments below being the defaults. Named parameters,
            ``(name, tensor)`` pairs as torch takes them, are fused alike. A group's ``"params"`` iterator is read
            once into a list in the caller's dict, which becomes the optimizer's group, as torch does.
        lr: learning rate (a schedule may overwrite ``param_groups[i]["lr"]`` before each step).
        betas: (b1, b2), the moments' decay rates.
        weight_decay: wd, decoupled (applied to the weights, not added to the gradient).
    Returns:
        the optimizer.
    Raises:
        ValueError: from torch, for no parameters, a negative ``lr``, a beta outside [0, 1) or a negative
            ``weight_decay``. Only these arguments are checked: torch does not check values given inside a group.
        KeyError: from torch, for a group without ``"params"``.
        TypeError: from torch, for one tensor in place of a list, a group whose ``"params"`` is a set (its order
            changes between runs), or tensors mixed with groups.
    """
    if isinstance(params, torch.Tensor):  # torch refuses it (iterated, it would be its rows)
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    params = [_listed(g) for g in params]
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) and "params" in g else [g])]
    tensors = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in tensors]  # named parameters
    fused = all(isinstance(p, torch.Tensor) and p.is_floating_point() and p.device.type in FUSED_DEVICES
                for p in tensors)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)


def _listed(group: Any) -> Any:
    """A torch-style parameter group with its ``"params"`` read into a list, in place (torch takes any iterable there,
    and keeps the caller's dict as its group); one tensor (torch wraps it), a set (torch refuses it) or anything
    malformed as is, for torch to handle with its own message."""
    if isinstance(group, dict) and "params" in group and not isinstance(group["params"], (torch.Tensor, set)):
        group["params"] = list(group["params"])
    return group
