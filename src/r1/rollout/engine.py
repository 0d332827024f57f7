"""The CPU rollout engine: batched sampling with `transformers`' own ``generate``.

Shapes: ``N`` = B*G sequences, ``P`` prompt tokens (left-padded), ``L`` completion
tokens (right-padded after the end-of-sequence token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig


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


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of tokens up to and including the first EOS, and the truncation flags.

    Args:
        completion_ids: [N, L] sampled token ids.
    Returns:
        mask [N, L] float (1 up to and including the first EOS), truncated [N] bool
        (no EOS anywhere in the row).
    """
    is_eos = completion_ids == eos_id  # [N, L]
    # Tokens strictly after the first EOS are those with at least one EOS before them.
    after = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return (~after).float(), ~is_eos.any(-1)


@torch.no_grad()
def generate_rollouts(model, tokenizer, prompts: list[str], num_samples: int, max_new_tokens: int,
                      temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 512) -> RolloutBatch:
    """Sample ``num_samples`` completions for each prompt (full sampling, no top-k).

    Args:
        prompts: B prompt strings, already rendered with the chat template.
        num_samples: G completions per prompt; rows are grouped prompt-major
            (rows ``i*G .. i*G+G-1`` belong to prompt ``i``).
        max_new_tokens: completion limit in tokens.
        batch_size: sequences sampled at once (memory bound).
    Randomness comes from torch's global generator: seed it before calling.
    """
    was_training = model.training
    model.eval()
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    prompt_ids = enc.input_ids.repeat_interleave(num_samples, 0)  # [N, P]
    prompt_mask = enc.attention_mask.repeat_interleave(num_samples, 0)  # [N, P]
    gen_cfg = GenerationConfig(
        do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        return_dict_in_generate=True, output_logits=True)
    chunks, chunk_logp = [], []
    for start in range(0, len(prompt_ids), batch_size):
        out = model.generate(input_ids=prompt_ids[start:start + batch_size],
                             attention_mask=prompt_mask[start:start + batch_size], generation_config=gen_cfg)
        ids = out.sequences[:, prompt_ids.shape[1]:]  # [n, l]
        logits = torch.stack(out.logits, 1).float() / temperature  # [n, l, V] raw logits at the temperature
        chunks.append(ids)
        chunk_logp.append(torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1))
    width = max(c.shape[1] for c in chunks)
    pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
    completion_ids = torch.cat([pad(c, tokenizer.pad_token_id) for c in chunks])
    sampler_logp = torch.cat([pad(c, 0.0) for c in chunk_logp])
    mask, truncated = completion_mask(completion_ids, tokenizer.eos_token_id)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    sampler_logp = sampler_logp * mask
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=False)
    texts = [t.replace(tokenizer.pad_token, "").replace(tokenizer.eos_token, "") for t in texts]
    model.train(was_training)
    return RolloutBatch(prompt_ids, prompt_mask, completion_ids, mask, truncated, texts, sampler_logp)
