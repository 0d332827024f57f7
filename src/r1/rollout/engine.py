"""Rollout engines: batched sampling of G completions per prompt (r1's lean KV-cache sampler or
`transformers`' ``generate`` in this process; vLLM, on a GPU or with its CPU build, in ``r1.rollout.vllm_engine``).

Shapes: ``N`` = B*G sequences, ``P`` prompt tokens (left-padded), ``L`` completion
tokens (right-padded after the end-of-sequence token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList


@dataclass
class RolloutBatch:
    """Sampled completions for a batch of prompts, ready for scoring and the policy update."""

    prompt_ids: torch.Tensor  # [N, P] long, left-padded with pad id
    prompt_mask: torch.Tensor  # [N, P] long, 1 on prompt tokens
    completion_ids: torch.Tensor  # [N, L] long, pad after the first EOS
    completion_mask: torch.Tensor  # [N, L] float, 1 on completion tokens up to and including EOS
    truncated: torch.Tensor  # [N] bool, True when no EOS was sampled within the limit
    texts: list[str]  # N decoded completions, without EOS or padding
    sampler_logp: torch.Tensor | None = None  # [N, L] float, the sampler's log-prob of each token at its
    # temperature (before top-p truncation); 0 on padding

    @property
    def lengths(self) -> torch.Tensor:
        """[N] completion lengths in tokens (EOS included)."""
        return self.completion_mask.sum(-1)

    def select(self, rows: list[int]) -> "RolloutBatch":
        """The rows ``rows`` of every field, in that order."""
        idx = torch.tensor(rows, dtype=torch.long)
        return RolloutBatch(self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx],
                            self.completion_mask[idx], self.truncated[idx], [self.texts[i] for i in rows],
                            None if self.sampler_logp is None else self.sampler_logp[idx])


def concat_rollouts(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One batch from several: prompts re-padded on the left, completions on the right."""
    p_width = max(b.prompt_ids.shape[1] for b in batches)
    c_width = max(b.completion_ids.shape[1] for b in batches)
    left = lambda t, v: torch.nn.functional.pad(t, (p_width - t.shape[1], 0), value=v)  # noqa: E731
    right = lambda t, v: torch.nn.functional.pad(t, (0, c_width - t.shape[1]), value=v)  # noqa: E731
    logps = [b.sampler_logp for b in batches]
    return RolloutBatch(
        torch.cat([left(b.prompt_ids, pad_id) for b in batches]), torch.cat([left(b.prompt_mask, 0) for b in batches]),
        torch.cat([right(b.completion_ids, pad_id) for b in batches]),
        torch.cat([right(b.completion_mask, 0.0) for b in batches]), torch.cat([b.truncated for b in batches]),
        [t for b in batches for t in b.texts],
        None if any(x is None for x in logps) else torch.cat([right(x, 0.0) for x in logps]))


def completion_mask(completion_ids: torch.Tensor, eos_id: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of tokens up to and including the first end-of-sequence token, and the truncation flags.

    Any id in ``eos_id`` ends a completion (Qwen: ``<|im_end|>`` and ``<|endoftext|>``; Llama 3:
    ``<|eot_id|>``, ``<|eom_id|>``, ``<|end_of_text|>``). The first one stays in the mask, a target
    like any other token, also when the pad id is an EOS id: padding is what follows it.

    Args:
        completion_ids: [N, L] sampled token ids.
        eos_id: one id or several.
    Returns:
        mask [N, L] float (1 up to and including the first EOS), truncated [N] bool
        (no EOS anywhere in the row).
    """
    ids = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), dtype=torch.long,
                       device=completion_ids.device)
    is_eos = torch.isin(completion_ids, ids)  # [N, L]
    # Tokens strictly after the first EOS are those with at least one EOS before them.
    after = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return (~after).float(), ~is_eos.any(-1)


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and ``generation_config.eos_token_id``
    (an int or a list; instruct checkpoints list the end-of-turn token and the end-of-text token)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in ([gen] if isinstance(gen, int) else list(gen or [])):
        if i not in ids:
            ids.append(i)
    return ids


class _SamplerLogp(LogitsProcessor):
    """Records log p(sampled token) at the sampling temperature, one step at a time.

    ``generate`` calls it with the raw next-token scores before any warper (temperature, top-p),
    and shows which token was drawn only at the next call, so one step of log-probabilities
    ([n, V]) is kept instead of every step's logits ([n, L, V]; 0.6 GB per 1k tokens and sequence
    at a 150k vocabulary).
    """

    def __init__(self, temperature: float):
        self.temperature, self.last, self.steps = temperature, None, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.last is not None:
            self.steps.append(self.last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.last = torch.log_softmax(scores.float() / self.temperature, -1)  # [n, V]
        return scores

    def result(self, ids: torch.Tensor) -> torch.Tensor:
        """[n, l] log-probabilities of ``ids`` [n, l], the tokens generate returned."""
        if ids.shape[1] == 0:
            return ids.float()
        steps = self.steps + [self.last.gather(-1, ids[:, -1:]).squeeze(-1)]
        return torch.stack(steps, 1)


@contextmanager
def _bare_generation_config(model):
    """Sampling follows the policy alone: the checkpoint's generation_config.json (top_k=20,
    repetition_penalty=1.05 in Qwen2.5-Instruct, ...) is set aside while sampling, since
    transformers 5 fills every field we leave unset from it, and a penalty or truncation would make
    the sampler differ from the policy the loss assumes."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = hf.generation_config
    hf.generation_config = GenerationConfig()
    try:
        yield
    finally:
        hf.generation_config = saved


@torch.no_grad()
def generate_rollouts(model, tokenizer, prompts: list[str], num_samples: int, max_new_tokens: int,
                      temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 512,
                      eos_token_id: int | Sequence[int] | None = None, sampler: str = "auto",
                      dtype: torch.dtype | None = None) -> RolloutBatch:
    """Sample ``num_samples`` completions for each prompt (full sampling, no top-k).

    Args:
        prompts: B prompt strings, already rendered (``r1.models.prompts.render_prompt``: the BOS is
            in the text; they are tokenised without adding special tokens).
        num_samples: G completions per prompt; rows are grouped prompt-major
            (rows ``i*G .. i*G+G-1`` belong to prompt ``i``).
        max_new_tokens: completion limit in tokens.
        batch_size: sequences sampled at once (memory bound).
        eos_token_id: ids that end a completion; None = :func:`eos_ids` (the tokenizer's EOS and the
            model's ``generation_config.eos_token_id``).
        sampler: "lean" (:func:`r1.models.lean.sample`: each prompt prefilled once, finished rows no longer
            computed; Llama/Qwen2/Qwen3 families), "generate" (transformers' ``generate``), or "auto"
            (lean where the model allows it, else generate). Both draw from the same distribution, from
            different random streams (a seed gives different samples under the two).
        temperature: > 0, the logits are divided by it; top_p: nucleus mass in (0, 1], 1 = full sampling.
        dtype: compute dtype; ``torch.bfloat16`` on a float32 model = bf16 mixed precision (the lean
            sampler casts the weights once per call; ``generate`` runs under ``torch.autocast``); None = the model's.
    Returns:
        a :class:`RolloutBatch` of B*G rows (prompt-major), ``sampler_logp`` filled.
    Randomness comes from torch's global generator: seed it before calling.

    Raises:
        ValueError: ``sampler="lean"`` for a model the lean sampler does not support, an unknown sampler, no
            prompts, ``num_samples`` < 1, ``max_new_tokens`` < 0, ``temperature`` not finite and > 0, or ``top_p``
            outside (0, 1] (whichever sampler runs).
    """
    if not prompts or num_samples < 1 or max_new_tokens < 0:
        raise ValueError(f"generate_rollouts: {len(prompts)} prompts, num_samples={num_samples}, "
                         f"max_new_tokens={max_new_tokens}; expected at least one prompt, num_samples >= 1 and "
                         "max_new_tokens >= 0")
    if not 0 < temperature < math.inf or not 0 < top_p <= 1:
        raise ValueError(f"generate_rollouts: temperature={temperature}, top_p={top_p}; expected a finite temperature > 0 "
                         "and 0 < top_p <= 1")
    stop = eos_ids(model, tokenizer) if eos_token_id is None else \
        ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    pad_id = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    device = next(model.parameters()).device
    prompt_ids = enc.input_ids.repeat_interleave(num_samples, 0).to(device)  # [N, P]
    prompt_mask = enc.attention_mask.repeat_interleave(num_samples, 0).to(device)  # [N, P]
    if sampler not in ("auto", "lean", "generate"):
        raise ValueError(f"sampler={sampler!r}: expected auto, lean or generate")
    from r1.models import lean
    why_not = lean.unsupported(model)
    if sampler == "lean" and why_not:
        raise ValueError(f"sampler=lean: {why_not}; use sampler=generate")
    chunks, chunk_logp = [], []
    if sampler != "generate" and not why_not:
        per_call = max(1, batch_size // num_samples)  # distinct prompts per call
        ids_u, mask_u = enc.input_ids.to(device), enc.attention_mask.to(device)
        for start in range(0, len(prompts), per_call):
            ids, logp = lean.sample(model, ids_u[start:start + per_call], mask_u[start:start + per_call], num_samples,
                                    max_new_tokens, temperature, top_p, stop_ids=stop, pad_id=pad_id, dtype=dtype)
            chunks.append(ids)
            chunk_logp.append(logp)
    else:
        gen_cfg = GenerationConfig(
            do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
            pad_token_id=pad_id, eos_token_id=stop, bos_token_id=None)
        from r1.rl.logprobs import autocast
        with _bare_generation_config(model), autocast(model, dtype):
            for start in range(0, len(prompt_ids), batch_size):
                recorder = _SamplerLogp(temperature)
                out = model.generate(input_ids=prompt_ids[start:start + batch_size],
                                     attention_mask=prompt_mask[start:start + batch_size], generation_config=gen_cfg,
                                     logits_processor=LogitsProcessorList([recorder]))
                ids = out[:, prompt_ids.shape[1]:]  # [n, l]
                chunks.append(ids)
                chunk_logp.append(recorder.result(ids))
    width = max(c.shape[1] for c in chunks)
    pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
    completion_ids = torch.cat([pad(c, pad_id) for c in chunks])
    sampler_logp = torch.cat([pad(c, 0.0) for c in chunk_logp])
    mask, truncated = completion_mask(completion_ids, stop)
    completion_ids = completion_ids.masked_fill(mask == 0, pad_id)
    sampler_logp = sampler_logp * mask
    # Texts: the completion tokens before the EOS (special tokens the model wrote stay visible).
    keep = (mask > 0) & ~torch.isin(completion_ids, torch.tensor(stop + [pad_id], dtype=torch.long, device=device))
    texts = tokenizer.batch_decode([row[k].tolist() for row, k in zip(completion_ids, keep)],
                                   skip_special_tokens=False)
    model.train(was_training)
    return RolloutBatch(prompt_ids, prompt_mask, completion_ids, mask, truncated, texts, sampler_logp)


class RolloutEngine(Protocol):
    """What the GRPO trainer needs from a sampler; two implementations: :class:`TransformersEngine`
    (this process, the policy module itself) and ``r1.rollout.vllm_engine.VLLMEngine`` (vLLM on a GPU, or its CPU build).

    ``generate`` returns a :class:`RolloutBatch` whose ``sampler_logp`` holds the sampler's
    log-probability of every completion token at the sampling temperature (the trainer compares it
    with its own: ``train/sampler_ratio_max_dev``). ``sync_weights`` is called after every optimizer
    step so the next rollout is sampled from the updated policy (on-policy GRPO).
    """

    name: str

    def generate(self, prompts: list[str], num_samples: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0) -> RolloutBatch: ...

    def sync_weights(self, policy) -> None: ...


class TransformersEngine:
    """Rollouts from the policy module itself (CPU or GPU): :func:`generate_rollouts`.

    ``sampler``: "lean" (r1's KV-cache sampler, :mod:`r1.models.lean`), "generate" (transformers'
    ``generate``) or "auto" (lean where the model family allows it). ``dtype``: compute dtype
    (``torch.bfloat16`` on float32 weights = bf16 mixed precision; None = the weights'). ``sync_weights``
    has nothing to do: the engine samples from the very module the optimizer updates.
    """

    name = "transformers"

    def __init__(self, model, tokenizer, sampler: str = "auto", batch_size: int = 512,
                 dtype: torch.dtype | None = None):
        self.model, self.tokenizer, self.sampler, self.batch_size = model, tokenizer, sampler, batch_size
        self.dtype = dtype

    def generate(self, prompts: list[str], num_samples: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0) -> RolloutBatch:
        return generate_rollouts(self.model, self.tokenizer, prompts, num_samples, max_new_tokens, temperature, top_p,
                                 batch_size=self.batch_size, sampler=self.sampler, dtype=self.dtype)

    def sync_weights(self, policy) -> None:
        """Nothing to push (the engine samples from ``policy`` itself).

        Raises:
            ValueError: ``policy`` is not the module this engine was built with.
        """
        if policy is not self.model:
            raise ValueError("TransformersEngine samples from the module it was built with; pass that policy")


def compute_dtype(cfg) -> torch.dtype | None:
    """The RL step's compute dtype: ``torch.bfloat16`` for ``mixed_precision="bf16"``, else None (the weights')."""
    return torch.bfloat16 if getattr(cfg, "mixed_precision", "no") == "bf16" else None


def make_engine(cfg, policy, tokenizer) -> RolloutEngine:
    """The rollout engine ``cfg.rollout_engine`` names, for ``policy``.

    Raises:
        ValueError: an unknown engine name, or ``rollout_engine="vllm"`` without a CUDA GPU and without
            vLLM's CPU build.
        ImportError: ``rollout_engine="vllm"`` without vLLM installed (``pip install -e ".[vllm]"``).
    ``load_config`` refuses both vLLM cases earlier, in one line, before a run starts.
    """
    if cfg.rollout_engine == "transformers":
        return TransformersEngine(policy, tokenizer, sampler=cfg.sampler, dtype=compute_dtype(cfg))
    if cfg.rollout_engine == "vllm":
        from r1.rollout.vllm_engine import VLLMEngine
        return VLLMEngine.from_config(cfg, policy, tokenizer)
    raise ValueError(f"rollout_engine={cfg.rollout_engine!r}: expected transformers or vllm")
