"""The GRPO loop, top to bottom: rollout engine -> score -> advantages -> policy_update -> log/save.

GRPO as in DeepSeek-R1 (arXiv 2501.12948, §2.2): G completions per prompt at
temperature 1.0, rule-based rewards (accuracy + format), group-relative
advantages, clipped importance ratio, KL to the frozen reference (the base) by
the k3 estimator as a loss term, token mean per completion then mean over the
group. Deliberate departures, for a 1M-parameter policy on 2 CPU cores:
* beta = 0.02 and lr = 2e-4 (R1: 0.001 and 3e-6 at 671B parameters);
* G = 8 completions for each of 16 prompts per step (R1: G = 16);
* mu = 1 (strictly on-policy, so old log-probabilities are the current ones, detached).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from r1.models.hf import save_policy
from r1.models.lean import reuse_weights, unsupported
from r1.models.prompts import grading_text, prompt_for
from r1.pretrain import sample_train_problem
from r1.rewards.format import format_reward
from r1.rewards.length import soft_overlong_penalty
from r1.rl.grpo import group_advantages, grpo_loss
from r1.rl.logprobs import reference_logprobs, token_logprobs
from r1.rollout.engine import RolloutBatch, TransformersEngine, compute_dtype, concat_rollouts


@dataclass
class Scores:
    """Rewards of one rollout batch, one entry per completion ([B*G] each)."""

    accuracy: torch.Tensor  # 1.0 if the verifier accepts the answer
    format: torch.Tensor  # 1.0 if the think/answer layout is right
    total: torch.Tensor  # accuracy + format_weight * format
    reasons: torch.Tensor  # 1.0 if the thinking holds worked steps
    language: torch.Tensor | None = None  # language-consistency (or readability) reward, when weighted
    readability: torch.Tensor | None = None  # multiplication: readability stand-in, always measured (not rewarded unless weighted)


def score(task, texts: list[str], answers: list[str], format_weight: float, language_weight: float = 0.0,
          consistency: str = "language", language: str = "en") -> Scores:
    """Score completions with the task's verifier, the format reward and, when ``language_weight > 0``,
    the language-consistency reward of R1 §2.3.2 (share of the thinking in the target language's
    script, ``r1.rewards.language``) or its tiny-task stand-in (``consistency="readability"``), summed
    into the total: ``total = accuracy + format_weight * format + language_weight * language``; an empty
    thinking scores 0 on that term, so skipping the chain of thought earns nothing. For multiplication the
    readability stand-in is also measured (``Scores.readability``, empty thinking 1.0), weighted or not.
    With ``language_weight == 0`` the term is not computed at all (totals bit-identical to before).
    """
    acc = torch.tensor([task.verify(t, a) for t, a in zip(texts, answers)])
    fmt = torch.tensor([format_reward(t) for t in texts])
    reasons = torch.tensor([float(task.reasons(t)) for t in texts])
    total = acc + format_weight * fmt
    lang = None
    if language_weight > 0:
        from r1.rewards.language import language_reward, readability_reward
        # empty thinking earns no consistency credit (empty=0.0): otherwise answering without reasoning is paid
        lang = torch.tensor([readability_reward(t, empty=0.0) if consistency == "readability"
                             else language_reward(t, language, empty=0.0) for t in texts])
        total = total + language_weight * lang
    readable = None
    if getattr(task, "name", "") == "multiplication":
        from r1.rewards.language import readability_reward
        readable = torch.tensor([readability_reward(t) for t in texts])
    return Scores(acc, fmt, total, reasons, lang, readable)


def micro_batches(batch: RolloutBatch, group_size: int, budget: int) -> list[list[int]]:
    """Rows of ``batch`` cut into micro-batches of whole groups, in order, each holding at most ``budget``
    tokens (a group's prompt counted once, as the lean forward computes it, plus its completions up to
    EOS), and at least one group; a last micro-batch of at most a quarter of ``budget`` joins the one
    before it (which then holds up to 1.25 x ``budget``, more if that one is a single larger group): a pass
    of its own would cost a whole pass of kernel launches (~12 ms at 4 x 128 on 2 CPU cores) for a few
    hundred tokens and, in bf16, new kernel shapes for oneDNN to compile and keep. ``budget <= 0``: one
    micro-batch of every row."""
    n = batch.completion_ids.shape[0]
    if budget <= 0 or n <= group_size:
        return [list(range(n))]
    lengths = batch.completion_mask.sum(-1).tolist()
    prompt_len = batch.prompt_mask.sum(-1).tolist()
    out, sizes, cur, used = [], [], [], 0
    for start in range(0, n, group_size):
        rows = list(range(start, min(n, start + group_size)))
        tokens = prompt_len[start] + sum(lengths[r] for r in rows)
        if cur and used + tokens > budget:
            out.append(cur)
            sizes.append(used)
            cur, used = [], 0
        cur += rows
        used += tokens
    out.append(cur)
    sizes.append(used)
    if len(out) > 1 and sizes[-1] <= budget / 4:
        out[-2:] = [out[-2] + out[-1]]
    return out


def _cpu_model(model):
    """(first parameter, config) of a model on CPU whose config gives its widths; config None otherwise (a GPU
    model, or one without ``hidden_size``): the micro-batch rules then take the whole batch."""
    param = next(model.parameters())
    c = getattr(model, "config", None)
    if param.device.type != "cpu" or c is None or not hasattr(c, "hidden_size"):
        return param, None
    return param, c


UPDATE_ACTIVATION_MB = 1024  # CPU, float32 compute: activations a training micro-batch may hold, estimated
BF16_UPDATE_ACTIVATION_MB = 256  # CPU, bf16 compute (mixed precision or a bf16 model): the same
NO_GRAD_ACTIVATION_MB = 256  # CPU: what a forward without gradients may hold (reference, old policy)


def auto_micro_batch_tokens(model, dtype: torch.dtype | None = None, lean: bool = True) -> int:
    """Tokens per training micro-batch (update_micro_batch_tokens=0) holding about ``UPDATE_ACTIVATION_MB`` of
    activations on CPU in float32 compute, ``BF16_UPDATE_ACTIVATION_MB`` in bf16 compute (mixed precision or a
    bf16 model), from the model's depth and widths: ~(12 hidden + 3 intermediate) values saved per token and
    layer when the lean forward runs the update on float32 weights without mixed precision (``lean``: its MLP
    saves only gate | up, :class:`r1.models.lean._SwiGLUDown`; 8 x 320 in float32, 64 rows: 225 KB per
    completion token, 299 KB before that), ~(12 hidden + 5 intermediate) otherwise (the transformers forward,
    bf16 mixed precision, a model held in bf16).

    Both rules are fitted to the peak RSS of whole runs of the lean update on this machine (Qwen2 4 x 128
    and 8 x 320 with a 105-token vocabulary):

    - no mixed precision: the weights' element size per value (4 bytes in float32) plus ~40 KB per token
      whatever the size (logits, masks, bucket padding, allocator slack): ~82 KB per token at 4 x 128 and
      256 KB at 8 x 320 in float32, so 12,787 and 4,096 tokens for 1 GB (the main job's 16 x 8 rows and the
      benchmark's G 16 batch at 4 x 128 in one micro-batch, a G 8 batch at 8 x 320 in one and G 16 in two).
      Each micro-batch pass costs: on 12-05 (Intel Xeon, 2 threads, alternating processes), with 256 MB (3,196
      and 1,024 tokens) instead of 1 GB, the 8 x 320 update at beta 0.04 / G 8 took 1.49-1.66 s instead of
      1.37-1.51 s (peak RSS 988-1,013 MB instead of 1,409-1,428; TRL 1,492-1,604), at beta 0 / G 16 2.28-2.39 s
      instead of 1.95-2.17 s (1,012-1,045 MB instead of 1,481-1,515; TRL ~2,240), and the 4 x 128 update at
      0.04 / G 16 0.46-0.47 s instead of 0.41-0.44 s (673-683 MB instead of 808-825; TRL ~1,030).
    - bf16 (mixed precision, ``dtype`` bfloat16 on float32 weights, or a bf16 model): 3.75 bytes per value (the
      norms' inputs, the attention probabilities and the residual stream are saved in float32 beside bf16
      copies) plus 16 bytes per vocabulary entry (float32 logits, log-probabilities, probabilities and their
      gradient) plus 16 KB per token (allocator slack, the sampler lanes' thread arena), for 256 MB: 3,840 tokens
      at 4 x 128, 935 at 8 x 320 (one or two groups of 8). oneDNN compiles and keeps a bf16 kernel per matmul
      shape, so larger bf16 micro-batches cost memory for little time: at 8 x 320, beta 0.04 / G 8 (12-05),
      1,200 tokens gave update 0.89 s and 1,100 MB against 0.93-0.95 s and 908-910 MB at 992 tokens (TRL's bf16
      process: ~1,170 MB), and with the lean MLP's 3 values (1,190 tokens) 1,074 MB instead of 974, no faster.
      At 4 x 128, G 16, the 16 KB make micro-batches of 4 + 4 groups instead of 5 + 3: peak 760 MB instead of
      816-830 MB with the laned sampler (TRL 815-840), update no slower (0.220 vs 0.233 s).

    0 (whole batch) on a GPU, where the recipes bound memory with ``logprob_chunk_size`` and gradient
    checkpointing."""
    param, c = _cpu_model(model)
    if c is None:
        return 0
    mixed = dtype is not None and dtype != param.dtype
    fused = lean and not mixed and param.dtype == torch.float32  # the lean MLP that saves gate | up only
    inter = (3 if fused else 5) * getattr(c, "intermediate_size", 4 * c.hidden_size)
    values = c.num_hidden_layers * (12 * c.hidden_size + inter)
    if mixed:
        per_token = values * 3.75 + 16 * getattr(c, "vocab_size", 0) + 16 * 1024  # bytes
    else:
        per_token = values * param.element_size() + 40 * 1024
    budget = BF16_UPDATE_ACTIVATION_MB if mixed or param.dtype == torch.bfloat16 else UPDATE_ACTIVATION_MB
    return max(256, int(budget * 2**20 / per_token))


def auto_no_grad_micro_batch_tokens(model, context: int) -> int:
    """Tokens per micro-batch of a forward without gradients (the reference model's, the old policy's) holding
    about ``NO_GRAD_ACTIVATION_MB`` on CPU. Such a forward keeps no activations for a backward, only one layer's
    at a time, so it takes far more tokens than a training micro-batch: per token ~4 bytes x (4 intermediate +
    8 hidden + 3 heads x ``context`` (prompt + completion positions, the attention scores, bias and
    probabilities)) plus 16 bytes per vocabulary entry (logits, log-probabilities and their exponentials) plus
    16 KB of slack. 4 x 128 and 8 x 320 with a 105-token vocabulary: 7,880 and 4,775 tokens at context 120, 8,264
    and 5,061 at the benchmark's 87 (a G 8 batch in one pass); a Qwen2.5-0.5B shape (vocabulary 151,936) at
    context 1,200: 97, raised to the floor of 256 tokens that :func:`auto_micro_batch_tokens` also keeps. The
    update takes the larger of this and :func:`auto_micro_batch_tokens` (a training micro-batch holds more per
    token than a forward without gradients: float32 at 4 x 128, 12,787 tokens). 0 (whole batch) on a GPU, as there.

    One pass instead of many: the 8 x 320 reference forward, G 8, 64 rows in 1 pass 283 ms, in 8 passes of a
    group each 443 ms (fp32, 2 threads, Intel Xeon, 12-05; every pass runs every layer's ~40 operators per
    length bucket)."""
    c = _cpu_model(model)[1]
    if c is None:
        return 0
    inter = getattr(c, "intermediate_size", 4 * c.hidden_size)
    per_token = (4 * (4 * inter + 8 * c.hidden_size + 3 * c.num_attention_heads * max(int(context), 1))
                 + 16 * getattr(c, "vocab_size", 0) + 16 * 1024)
    return max(256, int(NO_GRAD_ACTIVATION_MB * 2**20 / per_token))


def _no_grad_logprobs(fn, batch: RolloutBatch, group_size: int, budget: int) -> torch.Tensor:
    """[N, L] float32 log-probabilities ``fn(prompt_ids, prompt_mask, completion_ids, completion_mask)`` returns for
    each micro-batch of ``budget`` tokens (:func:`micro_batches`), put back in the batch's rows; 0 past each
    micro-batch's longest completion."""
    N, L = batch.completion_ids.shape
    out = torch.zeros(N, L, dtype=torch.float32, device=batch.completion_ids.device)
    for rows in micro_batches(batch, group_size, budget):
        mb = _trimmed(batch, rows)
        logp = fn(mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask)
        out[rows, :logp.shape[1]] = logp.float()
    return out


def _trimmed(batch: RolloutBatch, rows: list[int]) -> RolloutBatch:
    """The rows ``rows``, prompt columns that are padding in all of them and completion columns after the
    longest of them dropped (nothing is computed on them)."""
    part = batch.select(rows)
    keep_p = int(part.prompt_mask.any(0).long().argmax()) if part.prompt_mask.any() else 0
    width = max(1, int(part.completion_mask.sum(-1).max()))
    return RolloutBatch(part.prompt_ids[:, keep_p:], part.prompt_mask[:, keep_p:], part.completion_ids[:, :width],
                        part.completion_mask[:, :width], part.truncated, part.texts,
                        None if part.sampler_logp is None else part.sampler_logp[:, :width])


def policy_update(policy, reference, optimizer, batch: RolloutBatch, advantages: torch.Tensor, cfg) -> dict:
    """``num_iterations`` optimizer steps on one rollout batch; returns detached statistics.

    Each optimizer step accumulates the gradient over micro-batches of whole groups of at most
    ``cfg.update_micro_batch_tokens`` tokens (:func:`micro_batches`; 0 = :func:`auto_micro_batch_tokens`), so the
    activations held at once are bounded; each micro-batch's loss is weighted by its share of the batch
    (tokens for ``token_mean``, completions otherwise), so the gradient is that of the whole batch's loss.
    ``reference=None`` with a LoRA policy: the reference is the policy with its adapters disabled
    (``reference_logprobs``). ``cfg.logprob_chunk_size`` (0 = off) bounds the logits held at once to
    [n, chunk, V]. The lean forward builds each model's weight matrices once per optimizer step, not once
    per micro-batch (:func:`r1.models.lean.reuse_weights`).
    """
    with reuse_weights():
        return _policy_update(policy, reference, optimizer, batch, advantages, cfg)


def _policy_update(policy, reference, optimizer, batch: RolloutBatch, advantages: torch.Tensor, cfg) -> dict:
    """:func:`policy_update`'s body."""
    chunk = cfg.logprob_chunk_size
    lean = getattr(cfg, "fast_logprobs", False)
    dtype = compute_dtype(cfg)
    loss_mask = batch.completion_mask  # [N, L]
    if cfg.overlong == "mask":  # DAPO overlong filtering: truncated completions teach nothing
        loss_mask = loss_mask * (~batch.truncated).float().unsqueeze(-1)
    parts = []
    total_tokens, total_rows = loss_mask.sum().clamp(min=1.0), loss_mask.shape[0]
    lean_update = lean and not chunk and unsupported(policy, training=True) is None
    explicit = getattr(cfg, "update_micro_batch_tokens", 0)
    budget = explicit or auto_micro_batch_tokens(policy, dtype, lean_update)
    # the forwards without gradients run on their own micro-batches, never smaller than the training ones (they
    # hold no activations for a backward); an explicit update_micro_batch_tokens applies to them too
    context = batch.prompt_ids.shape[1] + batch.completion_ids.shape[1]
    no_grad_budget = explicit or max(budget, auto_no_grad_micro_batch_tokens(policy, context))
    ref_all = old_all = None
    if cfg.beta > 0:  # no reference forward at all when beta = 0
        ref_all = _no_grad_logprobs(
            lambda *a: reference_logprobs(policy, reference, *a, cfg.temperature, chunk_size=chunk, lean=lean,
                                          dtype=dtype), batch, cfg.group_size, no_grad_budget)
    if cfg.num_iterations > 1:  # computed once per rollout batch (GRPO Algorithm 1, DeepSeekMath)
        with torch.no_grad():
            old_all = _no_grad_logprobs(
                lambda *a: token_logprobs(policy, *a, cfg.temperature, chunk_size=chunk, lean=lean, dtype=dtype,
                                          entropy=False)[0],
                batch, cfg.group_size, no_grad_budget)
    for rows in micro_batches(batch, cfg.group_size, budget):
        mb = _trimmed(batch, rows)
        width = mb.completion_ids.shape[1]
        lm = loss_mask[rows][:, :width]
        args = (mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask, cfg.temperature)
        ref_logp = None if ref_all is None else ref_all[rows, :width]
        old_logp = None if old_all is None else old_all[rows, :width]
        weight = lm.sum() / total_tokens if cfg.loss_aggregation == "token_mean" else len(rows) / total_rows
        parts.append((mb, args, lm, ref_logp, old_logp, advantages[rows], float(weight),
                      mb.completion_mask.sum().item()))
    stats, sampler_dev = {}, None
    n_tokens = sum(p[7] for p in parts)
    for it in range(cfg.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        acc, loss_total, ent_sum = {}, 0.0, 0.0
        for mb, args, lm, ref_logp, old_logp, adv, weight, tokens in parts:
            logp, entropy = token_logprobs(policy, *args, entropy_grad=cfg.entropy_coef > 0, chunk_size=chunk,
                                           lean=lean, dtype=dtype)
            if it == 0 and mb.sampler_logp is not None:  # trainer vs sampler: ~1e-6 in float32 unless something is off;
                # mixed_precision=bf16: ~0.1-0.3 (the two round differently: bf16 logits, float32 decode attention)
                dev = ((logp.detach() - mb.sampler_logp).exp() - 1).abs() * mb.completion_mask
                sampler_dev = max(sampler_dev or 0.0, dev.max().item())
            loss, part_stats = grpo_loss(logp, logp.detach() if old_logp is None else old_logp, ref_logp, adv, lm,
                                         cfg.clip_eps, cfg.beta,
                                         clip_eps_high=None if cfg.clip_eps_high < 0 else cfg.clip_eps_high,
                                         ratio_level=cfg.ratio_level, kl_estimator=cfg.kl_estimator,
                                         aggregation=cfg.loss_aggregation, norm_tokens=cfg.max_new_tokens,
                                         entropy=entropy, entropy_coef=cfg.entropy_coef)
            (loss * weight).backward()
            loss_total += loss.item() * weight
            share = lm.sum().item()  # the loss mask's tokens: what grpo_loss's statistics average over
            for key, value in part_stats.items():
                if key == "ratio_max_dev":
                    acc[key] = max(acc.get(key, 0.0), value)
                else:
                    acc[key] = acc.get(key, 0.0) + value * share
            acc["_tokens"] = acc.get("_tokens", 0.0) + share
            ent_sum += (entropy.detach() * mb.completion_mask).sum().item()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        denom = max(acc.pop("_tokens"), 1.0)
        stats = {k: (v if k == "ratio_max_dev" else v / denom) for k, v in acc.items()}
        stats.update(loss=loss_total, grad_norm=grad_norm.item(), sampler_ratio_max_dev=sampler_dev,
                     entropy=ent_sum / max(n_tokens, 1.0))
    return stats


def _rollout_round(rng, engine, tokenizer, task, heldout, cfg):
    """Draw B prompts, sample G completions each, score them: (prompts, answers, batch, scores, seconds)."""
    problems = [sample_train_problem(task, rng, heldout) for _ in range(cfg.prompts_per_step)]
    rendered = [prompt_for(tokenizer, p.question, cfg) for p in problems]
    prompts = [r.text for r in rendered]
    answers = [p.answer for p in problems for _ in range(cfg.group_size)]
    t0 = time.perf_counter()
    batch = engine.generate(prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature)
    t1 = time.perf_counter()
    graded = [grading_text(rendered[i // cfg.group_size], t) for i, t in enumerate(batch.texts)]
    scores = score(task, graded, answers, cfg.format_weight, cfg.language_weight, cfg.consistency_reward,
                   cfg.language)
    if cfg.overlong == "soft":
        scores.total = scores.total + soft_overlong_penalty(batch.lengths, cfg.max_new_tokens, cfg.overlong_cache)
    return prompts, answers, batch, scores, (t1 - t0, time.perf_counter() - t1)


def _informative_groups(scores: Scores, group_size: int) -> list[int]:
    """Indices of groups whose accuracy is neither all 0 nor all 1 (DAPO dynamic sampling, Eq. 11)."""
    acc = scores.accuracy.view(-1, group_size).mean(-1)
    return [i for i, a in enumerate(acc.tolist()) if 0.0 < a < 1.0]


def _merge_rounds(kept: list, G: int, B: int, pad_id: int):
    """At most B kept groups from the sampling rounds, as one (prompts, answers, batch, scores).

    ``kept`` holds ``(prompts, answers, batch, scores, group indices)`` per round. When no round
    kept a group, the last round is used whole (its advantages are then zero).
    """
    if not any(k[4] for k in kept):
        kept[-1] = kept[-1][:4] + (list(range(B)),)
    fields = [f for f in ("accuracy", "format", "total", "reasons", "language", "readability")
              if getattr(kept[0][3], f) is not None]
    parts, prompts, answers, per_round = [], [], [], []
    for p, a, b, s_, groups in kept:
        rows = [g * G + j for g in groups for j in range(G)]
        parts.append(b.select(rows))
        prompts += [p[g] for g in groups]
        answers += [a[r] for r in rows]
        per_round.append([getattr(s_, f)[rows] for f in fields])
    n_rows = min(B, len(prompts)) * G
    batch = concat_rollouts(parts, pad_id).select(list(range(n_rows)))
    scores = Scores(**{f: torch.cat([r[i] for r in per_round])[:n_rows] for i, f in enumerate(fields)})
    return prompts[:n_rows // G], answers[:n_rows], batch, scores


def rl_step(step: int, policy, reference, optimizer, tokenizer, task, heldout: set, cfg,
            engine=None) -> tuple[dict, list[dict]]:
    """One GRPO step; returns the metrics row and the rollout samples (prompt, completion, rewards).

    ``engine`` samples the rollouts (``r1.rollout.engine.RolloutEngine``; None = the transformers
    engine on ``policy`` with ``cfg.sampler``); its ``sync_weights(policy)`` runs after the optimizer step.

    With ``dynamic_sampling`` (DAPO, arXiv 2503.14476, §3.2), groups whose completions are all
    right or all wrong are dropped and more prompts are drawn until B groups are kept or
    ``dynamic_sampling_max_rounds`` rounds were sampled; the step then trains on what it kept
    (``rollout/prompts_drawn`` says how many prompts that took).
    """
    rng = random.Random(f"{cfg.seed}/rl/{step}")  # per-step seeds: a resumed run draws the same data
    torch.manual_seed(cfg.seed * 1_000_003 + step)
    G, B = cfg.group_size, cfg.prompts_per_step
    kept, gen_s, rew_s, drawn = [], 0.0, 0.0, 0
    rounds = cfg.dynamic_sampling_max_rounds if cfg.dynamic_sampling else 1
    engine = engine or TransformersEngine(policy, tokenizer, sampler=getattr(cfg, "sampler", "auto"),
                                          dtype=compute_dtype(cfg))
    for _ in range(rounds):
        prompts, answers, batch, scores, (g_s, r_s) = _rollout_round(rng, engine, tokenizer, task, heldout, cfg)
        gen_s, rew_s, drawn = gen_s + g_s, rew_s + r_s, drawn + B
        groups = _informative_groups(scores, G) if cfg.dynamic_sampling else list(range(B))
        kept.append((prompts, answers, batch, scores, groups))
        if sum(len(k[4]) for k in kept) >= B:
            break
    prompts, answers, batch, scores = _merge_rounds(kept, G, B, tokenizer.pad_token_id)

    advantages = group_advantages(scores.total, G, cfg.adv_eps, cfg.adv_baseline, cfg.adv_scale)  # [B*G]
    t_update = time.perf_counter()
    stats = policy_update(policy, reference, optimizer, batch, advantages, cfg)
    engine.sync_weights(policy)  # vLLM: the next rollout samples the updated weights
    update_s = time.perf_counter() - t_update

    lengths = batch.lengths
    correct = scores.accuracy > 0  # NaN (unparseable gold) is not correct
    zero_std = (scores.total.view(-1, G).std(-1) == 0).float().mean().item()
    row = {
        "step": step + 1,
        "reward/mean": nanmean(scores.total),
        "reward/accuracy": nanmean(scores.accuracy),
        "reward/unparseable_gold": int(scores.accuracy.isnan().sum().item()),
        **({"reward/language": scores.language.mean().item()} if scores.language is not None else {}),
        "reward/format": scores.format.mean().item(),
        "rollout/len_mean": lengths.mean().item(),
        "rollout/len_correct": lengths[correct].mean().item() if correct.any() else None,
        "rollout/len_incorrect": lengths[~correct].mean().item() if (~correct).any() else None,
        "rollout/reasoning_frac": scores.reasons.mean().item(),
        **({"rollout/readability": scores.readability.mean().item()} if scores.readability is not None else {}),
        "rollout/truncated_frac": batch.truncated.float().mean().item(),
        "rollout/zero_std_frac": zero_std,
        "train/loss": stats["loss"],
        "train/kl": stats["kl"],
        "train/clipfrac": stats["clipfrac"],
        "train/clipfrac_low": stats["clipfrac_low"],
        "train/clipfrac_high": stats["clipfrac_high"],
        "train/entropy": stats["entropy"],
        "train/grad_norm": stats["grad_norm"],
        "train/ratio_max_dev": stats["ratio_max_dev"],
        "train/sampler_ratio_max_dev": stats["sampler_ratio_max_dev"],
        "rollout/prompts_drawn": drawn,
        "time/generate_s": gen_s,
        "time/reward_s": rew_s,
        "time/update_s": update_s,
    }
    samples = [{"step": step + 1, "prompt": prompts[i // cfg.group_size], "completion": batch.texts[i],
                "answer": answers[i], "reward": scores.total[i].item(), "accuracy": scores.accuracy[i].item(),
                "format": scores.format[i].item(), "advantage": advantages[i].item()}
               for i in range(len(batch.texts))]
    return row, samples


def nanmean(x: torch.Tensor) -> float | None:
    """Mean over the finite entries (None when there is none)."""
    ok = ~x.isnan()
    return x[ok].mean().item() if ok.any() else None


def save_checkpoint(path: Path, policy, tokenizer, optimizer, step: int, reference=None) -> None:
    """``save_pretrained`` (safetensors) + tokenizer + ``trainer_state.pt`` (optimizer, step and,
    when given, the reference model's weights: a refreshed reference is not the base)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # what a kill during an earlier save left
    save_policy(policy, tokenizer, tmp)  # LoRA: the adapters, with the base's absolute path
    state = {"step": step, "optimizer": optimizer.state_dict()}
    if reference is not None:
        state["reference"] = reference.state_dict()
    torch.save(state, tmp / "trainer_state.pt")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)  # a checkpoint folder is complete or absent, never half-written


def append_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
