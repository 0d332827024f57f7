"""Per-token log-probabilities of completions under a causal LM."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def token_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                   completion_mask: torch.Tensor, temperature: float = 1.0,
                   entropy_grad: bool = False, chunk_size: int | None = None,
                   lean: bool = False, dtype: torch.dtype | None = None,
                   entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities and entropies of the completion tokens, at the sampling temperature.

    Position ids follow the attention mask, as ``generate`` assigns them to
    left-padded prompts, so the forward pass sees what the sampler saw.

    With ``chunk_size`` the decoder runs once for the hidden states and the output head, softmax,
    gather and entropy run on ``chunk_size`` completion positions at a time, each chunk
    recomputed in the backward pass (activation checkpointing), so at most [N, chunk_size, V]
    float32 logits exist at once instead of [N, L, V] (at V = 152k, N = 64, L = 1024: 40 GB).
    The result equals the unchunked one, gradients included.

    Args:
        prompt_ids, prompt_mask: [N, P] left-padded prompts.
        completion_ids, completion_mask: [N, L] completions (mask 1 up to and including EOS).
        temperature: logits are divided by it before the softmax.
        entropy_grad: keep the entropy in the autograd graph (for an entropy bonus).
        chunk_size: completion positions per chunk; 0 or None = all at once.
        lean: use :func:`r1.models.lean.token_logprobs` (each distinct prompt once, no compute on
            completion padding; same values within float rounding) when the model family allows it
            and no ``chunk_size`` is set; otherwise this function's transformers forward.
        dtype: compute dtype; ``torch.bfloat16`` on a float32 model = bf16 mixed precision (the lean
            forward's own casts, or ``torch.autocast`` around the transformers forward; the results are
            float32 either way); None = the model's.
        entropy: compute the entropies; False returns None in their place and skips their pass over the
            [N, L, V] probabilities (the reference's and the old policy's forwards need none).
    Returns:
        logp [N, L] (with grad if the model has it) and entropy [N, L] (detached unless
        ``entropy_grad``; None unless ``entropy``), in nats. The lean path returns 0 on completion padding.
    Raises:
        ValueError: ``chunk_size`` on a model without a decoder to split off or with logit soft-capping;
            a ``dtype`` the lean forward refuses.
    """
    if lean and not chunk_size:
        from r1.models import lean as lean_forward
        if lean_forward.unsupported(model, training=torch.is_grad_enabled()) is None:
            return lean_forward.token_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                               temperature, entropy_grad, dtype=dtype, entropy=entropy)
    with autocast(model, dtype):
        return _transformers_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
                                      entropy_grad, chunk_size, entropy)


def autocast(model, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` (a reduced-precision type: bf16, or fp16 on a GPU) on the model's
    device when ``dtype`` is set and differs from the model's weights (mixed precision); otherwise a
    context that changes nothing."""
    param = next(model.parameters())
    return torch.autocast(param.device.type, dtype=dtype, enabled=dtype is not None and dtype != param.dtype)


def _transformers_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
                           entropy_grad, chunk_size, entropy=True):
    """:func:`token_logprobs` by the model's own forward (padded rows, prompt recomputed per row)."""
    input_ids = torch.cat([prompt_ids, completion_ids], 1)  # [N, P+L]
    attention = torch.cat([prompt_mask, completion_mask.long()], 1)  # [N, P+L]
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    want_entropy_grad = entropy_grad and torch.is_grad_enabled()
    if not chunk_size:
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                       use_cache=False).logits
        logits = logits[:, prompt_ids.shape[1] - 1:-1]  # [N, L, V]
        return _head_logprobs(logits, completion_ids, temperature, want_entropy_grad, entropy)
    hidden = _decoder(model)(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                             use_cache=False).last_hidden_state
    hidden = hidden[:, prompt_ids.shape[1] - 1:-1]  # [N, L, H]: the states that predict each completion token
    head = model.get_output_embeddings()

    def chunk(h, ids):  # h [N, c, H], ids [N, c] -> logp [N, c] (and entropy [N, c] when ``entropy``)
        lp, ent = _head_logprobs(head(h), ids, temperature, want_entropy_grad, entropy)
        return (lp, ent) if entropy else lp

    logps, entropies = [], []
    for s in range(0, completion_ids.shape[1], chunk_size):
        h, ids = hidden[:, s:s + chunk_size], completion_ids[:, s:s + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            out = checkpoint(chunk, h, ids, use_reentrant=False)
        else:
            out = chunk(h, ids)
        logps.append(out[0] if entropy else out)
        if entropy:
            entropies.append(out[1])
    return torch.cat(logps, 1), torch.cat(entropies, 1) if entropy else None


def _head_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float,
                   entropy_grad: bool, entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logp and entropy [N, c] (None unless ``entropy``) of ``ids`` [N, c] from ``logits`` [N, c, V], in
    float32."""
    logp_all = torch.log_softmax(logits.float() / temperature, -1)  # [N, c, V]
    logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [N, c]
    if not entropy:
        return logp, None
    with torch.set_grad_enabled(entropy_grad):
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # [N, c]
    return logp, entropy


def _decoder(model):
    """The decoder stack under the output head (``model.model`` in every family here), through a
    peft wrapper too; its adapters stay active or disabled as the wrapper says."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model:
        raise ValueError(f"chunked log-probabilities: {type(model).__name__} exposes no decoder "
                         "(get_decoder); use chunk_size=0")
    if getattr(getattr(model, "config", None), "final_logit_softcapping", None):
        raise ValueError("chunked log-probabilities: logit soft-capping is not applied here; use chunk_size=0")
    return decoder


def reference_logprobs(policy, reference, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                       completion_ids: torch.Tensor, completion_mask: torch.Tensor, temperature: float = 1.0,
                       chunk_size: int | None = None, lean: bool = False,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """[N, L] log-probabilities of the completions under the reference model, without gradients.

    ``reference=None`` with a LoRA (peft) policy: the reference is the policy's own base weights,
    its adapters switched off for this forward (``PeftModel.disable_adapter``) and in eval mode,
    so no second copy of the model is held. ``lean``, ``dtype``: as in :func:`token_logprobs`.

    Raises:
        ValueError: ``reference`` is None and the policy has no adapters to disable.
    """
    args = (prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
    with torch.no_grad():
        if reference is not None:
            return token_logprobs(reference, *args, chunk_size=chunk_size, lean=lean, dtype=dtype, entropy=False)[0]
        if not hasattr(policy, "disable_adapter"):
            raise ValueError("reference=None needs a LoRA (peft) policy whose adapters can be disabled; "
                             "pass a reference model")
        was_training = policy.training
        policy.eval()
        try:
            with policy.disable_adapter():
                return token_logprobs(policy, *args, chunk_size=chunk_size, dtype=dtype, entropy=False)[0]
        finally:
            policy.train(was_training)
