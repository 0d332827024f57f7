"""The base model: a short pretraining on a generated corpus in the R1-Zero template.

It stands in for the pretrained base of R1-Zero (DeepSeek-V3-Base). The corpus
mixes a step-by-step style (``long_frac`` of the traces) with direct answers, so
the base holds a latent way to reason that it uses only sometimes; RL with
verifiable rewards then has something to elicit. The loss is next-token
cross-entropy on completion tokens (the prompt is given, not learnt).
"""

from __future__ import annotations

import math
import random

import torch

from r1.models.tokenizer import prompt_text
from r1.optim import adamw


def sample_train_problem(task, rng: random.Random, heldout: set):
    """A training problem whose key is not in the held-out evaluation set.

    Raises:
        RuntimeError: 10,000 draws in a row were all held out (the problem space is too small).
    """
    for _ in range(10_000):
        problem = task.sample(rng)
        if problem.key not in heldout:
            return problem
    raise RuntimeError("every sampled problem is held out: lower eval_problems or enlarge the task")


def corpus_batch(task, tokenizer, rng: random.Random, heldout: set, batch_size: int, long_frac: float):
    """One batch of base-corpus examples: input_ids, attention_mask, labels ([N, T], right-padded).

    Labels are -100 on the prompt and on padding; the EOS that ends each
    completion is a target.
    """
    rows, labels = [], []
    for _ in range(batch_size):
        problem = sample_train_problem(task, rng, heldout)
        prompt = tokenizer(prompt_text(tokenizer, problem.question), add_special_tokens=False).input_ids
        completion = task.trace(problem, rng.random() < long_frac, rng)
        target = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    width = max(map(len, rows))
    ids = torch.full((batch_size, width), tokenizer.pad_token_id)
    lab = torch.full((batch_size, width), -100)
    att = torch.zeros((batch_size, width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, :len(r)] = torch.tensor(r)
        lab[i, :len(l)] = torch.tensor(l)
        att[i, :len(r)] = 1
    return ids, att, lab


def bucketed_loss_backward(model, ids, att, lab, buckets: int = 4) -> torch.Tensor:
    """Mean next-token loss over all target tokens of the batch, backpropagated bucket by bucket.

    Rows are sorted by length and cut into ``buckets`` micro-batches, each padded
    only to its own longest row: the gradient equals the full batch's (a sum over
    target tokens divided by their total count) while short direct answers no
    longer pay for the padding of long traces (~2x faster on the default corpus).

    Args:
        ids, att, lab: [N, T] right-padded input ids, attention mask, labels (-100 = ignored).
    Returns:
        the detached mean loss (nats per target token).
    """
    n_targets = (lab[:, 1:] != -100).sum().clamp(min=1)
    total = torch.zeros(())
    for rows in att.sum(1).argsort().chunk(buckets):
        width = int(att[rows].sum(1).max())
        logits = model(input_ids=ids[rows, :width], attention_mask=att[rows, :width]).logits  # [n, w, V]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                 lab[rows, 1:width].flatten(), ignore_index=-100, reduction="sum")
        (loss / n_targets).backward()
        total += loss.detach()
    return total / n_targets


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to 10% of it at ``total`` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pretrain(model, tokenizer, task, heldout: set, cfg, progress=None) -> dict:
    """Pretrain ``model`` in place for ``cfg.pretrain_steps`` steps; return loss statistics.

    ``progress`` is a callable ``(step, loss)`` called after every step.
    """
    rng = random.Random(f"{cfg.seed}/pretrain")
    torch.manual_seed(cfg.seed)
    optimizer = adamw(model.parameters(), lr=cfg.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.01)
    model.train()
    losses = []
    for step in range(cfg.pretrain_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.pretrain_steps, cfg.pretrain_warmup_steps, cfg.pretrain_lr)
        ids, att, lab = corpus_batch(task, tokenizer, rng, heldout, cfg.pretrain_batch_size, cfg.long_frac)
        optimizer.zero_grad(set_to_none=True)
        loss = bucketed_loss_backward(model, ids, att, lab)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, losses[-1])
    tail = losses[-50:]
    return {"steps": cfg.pretrain_steps, "loss_first": losses[0] if losses else None,
            "loss_last50": sum(tail) / max(1, len(tail))}
