"""Held-out evaluation with the R1 protocol (DeepSeek-R1, arXiv 2501.12948, §3, "Evaluation Setup").

For each problem, k completions are sampled at temperature 0.6 and top-p 0.95;
pass@1 = mean over problems of the share of correct completions among the k.
Scoring uses the same verifier as training.
"""

from __future__ import annotations

import random

import torch

from r1.models.prompts import grading_text, prompt_for
from r1.rewards.format import extract_answer
from r1.rewards.language import language_reward
from r1.rewards.math import final_answer
from r1.rl.trainer import nanmean, score
from r1.rollout.engine import generate_rollouts


def heldout_problems(task, n: int, seed: int) -> list:
    """``n`` distinct problems drawn with a fixed seed; training excludes their keys.

    A task read from files (``task.test_problems``, the math tasks) gives its first ``n`` test problems
    in file order instead.
    """
    if getattr(task, "test_problems", None):
        return list(task.test_problems[:n])
    rng = random.Random(f"{seed}/heldout")
    return distinct_problems(lambda: task.sample(rng), n)


def distinct_problems(draw, n: int) -> list:
    """Up to ``n`` problems with distinct keys from ``draw()`` (at most ``100 n`` draws), in draw order."""
    seen, problems = set(), []
    for _ in range(100 * n):
        p = draw()
        if p.key not in seen:
            seen.add(p.key)
            problems.append(p)
            if len(problems) == n:
                break
    return problems


def evaluate(model, tokenizer, task, problems: list, cfg, progress=None, on_chunk=None) -> dict:
    """pass@1 over ``cfg.eval_k`` samples per problem, mean length, format and reasoning shares, and the mean
    language-consistency reward (``cfg.language``) and, for multiplication, readability stand-in of the thinking.

    Sampling is seeded here (``cfg.seed``), so one call gives the same completions whatever ran before it.
    ``cfg.eval_batch_size`` fixes how problems are chunked, which is part of the random stream.

    Args:
        problems: held-out problems.
        progress: optional callable ``(n_done)`` advanced by completions sampled.
        on_chunk: optional callable ``(n_done, tokens_done)`` after each sampled chunk (tokens incl. EOS).
    Returns:
        ``{"summary": {...}, "problems": [{question, answer, samples: [{completion, extracted, correct, ...}]}]}``;
        lengths are in tokens (EOS included); ``extracted`` is the final answer the task grades
        (:func:`extracted_answer`), None when there is none.
    """
    k = cfg.eval_k
    per_chunk = max(1, cfg.eval_batch_size // k)
    torch.manual_seed(cfg.seed * 7919 + 17)
    texts, lengths, truncated = [], [], []
    for start in range(0, len(problems), per_chunk):
        chunk = problems[start:start + per_chunk]
        rendered = [prompt_for(tokenizer, p.question, cfg) for p in chunk]
        batch = generate_rollouts(model, tokenizer, [r.text for r in rendered], k, cfg.max_new_tokens,
                                  cfg.eval_temperature, cfg.eval_top_p, batch_size=cfg.eval_batch_size,
                                  sampler=getattr(cfg, "sampler", "auto"))
        texts += [grading_text(rendered[i // k], t) for i, t in enumerate(batch.texts)]
        lengths += batch.lengths.tolist()
        truncated += batch.truncated.tolist()
        if progress is not None:
            progress(len(texts))
        if on_chunk is not None:
            on_chunk(len(texts), int(sum(lengths)))
    answers = [p.answer for p in problems for _ in range(k)]
    scores = score(task, texts, answers, cfg.format_weight)
    language = [language_reward(t, getattr(cfg, "language", "en")) for t in texts]
    readable = None if scores.readability is None else scores.readability.tolist()  # multiplication only
    correct = scores.accuracy.view(-1, k)  # [n, k]; NaN where the gold answer is unparseable
    records = []
    for i, p in enumerate(problems):
        records.append({"question": p.question, "answer": p.answer, "samples": [
            {"completion": texts[i * k + j], "extracted": extracted_answer(task, texts[i * k + j]),
             "correct": _correct(correct[i, j]), "format": scores.format[i * k + j].item(),
             "reasons": bool(scores.reasons[i * k + j]), "language": language[i * k + j],
             "readability": None if readable is None else readable[i * k + j], "length": lengths[i * k + j],
             "truncated": truncated[i * k + j]} for j in range(k)]})
    lens = torch.tensor(lengths, dtype=torch.float)
    ok = scores.accuracy > 0
    reasons = scores.reasons > 0
    valid = ~correct[:, 0].isnan()  # problems whose gold answer parses
    summary = {
        "pass@1": correct[valid].mean().item() if valid.any() else None,
        "unparseable_gold": int((~valid).sum().item()),
        "len_mean": lens.mean().item(),
        "len_correct": lens[ok].mean().item() if ok.any() else None,
        "reasoning_frac": scores.reasons.mean().item(),
        "acc_reasoning": nanmean(scores.accuracy[reasons]),
        "acc_direct": nanmean(scores.accuracy[~reasons]),
        "format": scores.format.mean().item(),
        "language": sum(language) / len(language),  # R1 §2.3.2 language consistency of the thinking, mean
        "readability": None if readable is None else sum(readable) / len(readable),  # tiny-task stand-in, mean
        "truncated_frac": sum(truncated) / len(truncated),
        "problems": len(problems),
        "k": k,
        "temperature": cfg.eval_temperature,
        "top_p": cfg.eval_top_p,
    }
    return {"summary": summary, "problems": records}


def extracted_answer(task, completion: str) -> str | None:
    """The final answer ``task`` grades in ``completion``, with the task's own extraction; None if there is none.

    Math tasks: :func:`r1.rewards.math.final_answer` (last box after ``</think>``, else ``<answer>``, else
    ``####`` for GSM8K). Multiplication and Countdown: :func:`r1.rewards.format.extract_answer`.
    """
    from r1.tasks.math import MathTask

    if isinstance(task, MathTask):
        return final_answer(completion, hash_marker=task.name == "gsm8k")[0]
    return extract_answer(completion)


def _correct(value: torch.Tensor) -> bool | None:
    """True / False, or None when the gold answer is unparseable (NaN accuracy)."""
    return None if value.isnan() else bool(value > 0)
