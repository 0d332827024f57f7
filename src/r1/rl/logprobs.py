"""Per-token log-probabilities of completions under a causal LM."""

from __future__ import annotations

import torch


def token_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                   completion_mask: torch.Tensor, temperature: float = 1.0,
                   entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities and entropies of the completion tokens, at the sampling temperature.

    Position ids follow the attention mask, as ``generate`` assigns them to
    left-padded prompts, so the forward pass sees what the sampler saw.

    Args:
        prompt_ids, prompt_mask: [N, P] left-padded prompts.
        completion_ids, completion_mask: [N, L] completions (mask 1 up to and including EOS).
        temperature: logits are divided by it before the softmax.
    Returns:
        logp [N, L] (with grad if the model has it) and entropy [N, L] (detached), in nats.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], 1)  # [N, P+L]
    attention = torch.cat([prompt_mask, completion_mask.long()], 1)  # [N, P+L]
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids).logits
    logits = logits[:, prompt_ids.shape[1] - 1:-1].float() / temperature  # [N, L, V]
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)  # [N, L]
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # [N, L]
    return logp, entropy
