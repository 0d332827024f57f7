"""``r1 sample``: rejection sampling (DeepSeek-R1, arXiv 2501.12948, §2.3.3), an SFT-ready jsonl and a summary.

    r1 sample MODEL --task TASK [--k K] [--out FILE.jsonl] [key=value ...]

For each training prompt of the task (held-out problems excluded, as in training), ``k`` completions
are drawn at ``temperature`` / ``top_p`` (R1's sampling settings: 0.6 / 0.95) and graded with the
task's rewards: ``task.verify`` (the math tasks: the math-verify reward), ``format_reward``, and the
language-consistency reward (``r1.rewards.language``). A completion is kept when no filter rejects it;
each one is counted under the **first** filter that rejects it, in this order, so the counts add up
(``sampled = kept + sum(dropped)``):

1. ``overlong``: truncated (no EOS within ``max_new_tokens``) or longer than ``max_tokens`` tokens
   (EOS included; 0 = only the truncation). R1 filters "long paragraphs".
2. ``unparseable_gold``: the gold answer does not parse (NaN accuracy: skipped, never kept).
3. ``wrong``: the verifier does not accept the final answer (R1 keeps "only the correct responses").
4. ``bad_format``: not exactly one think block then one answer block (``format_reward`` < 1).
5. ``mixed_language``: the language-consistency reward of the thinking (the share of words in
   ``language``'s script) is below ``min_language`` (R1: "chain-of-thought with mixed languages").
6. ``unreadable``: multiplication only, the readability stand-in (share of thinking lines in the trace
   grammar) is below ``min_readability`` (0 = off); other tasks: never.
7. ``repetitive``: the share of repeated token 4-grams (:func:`repeated_ngram_share`) exceeds
   ``max_repeat``. Tokens: each CJK/kana character, each run of other letters and digits, each
   other non-space character; a 4-gram is repeated when the same 4 tokens occurred earlier in the
   completion. One line repeated 12 times in a trace scores 0.72; the 2-digit multiplication traces < 0.2.
8. ``duplicate``: the same completion text for the same question as an already kept one.

``key=value`` items set the options below (``SampleOptions``: ``limit``, ``temperature``, ``top_p``,
``max_tokens``, ``min_language``, ``language``, ``min_readability``, ``max_repeat``) or a RunConfig key
(seed, max_new_tokens, prompt_format, instruction, eval_batch_size, digits, ...); the config is the
run's ``config.yaml`` when MODEL is in a run (as ``r1 eval``), else the defaults.

Output rows (one per kept completion): ``question``, ``prompt`` (rendered), ``completion`` (as sampled,
after the prompt, without EOS: what ``r1 sft`` trains on), ``answer``, ``rewards`` (``accuracy``,
``format``, ``language``, ``readability``, ``repeat``), ``length`` (tokens, EOS included).
``<out stem>.summary.json`` holds the settings and the counts.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from r1.config import ConfigError, RunConfig, load_config
from r1.eval.protocol import distinct_problems
from r1.rewards.format import format_reward
from r1.rewards.language import LANGUAGE_SCRIPTS, language_reward, readability_reward

FILTERS = ("overlong", "unparseable_gold", "wrong", "bad_format", "mixed_language", "unreadable", "repetitive",
           "duplicate")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[^\W{_CJK}]+|[{_CJK}]|[^\w\s]")


@dataclass
class SampleOptions:
    """Rejection-sampling settings (module docstring); every field can be set as ``key=value``."""

    k: int = 4  # completions per prompt
    limit: int = 256  # prompts: the first N training problems of a file task (0 = all), N distinct draws otherwise
    temperature: float = 0.6  # R1's sampling temperature
    top_p: float = 0.95  # R1's nucleus
    max_tokens: int = 0  # overlong filter: drop completions longer than this (tokens, EOS included); 0 = truncated only
    language: str = "en"  # target language of the thinking (r1.rewards.language.LANGUAGE_SCRIPTS)
    min_language: float = 0.95  # mixed-language filter: drop when the target-language share of the thinking is lower
    min_readability: float = 0.0  # multiplication: drop when the share of trace-grammar lines is lower (0 = off)
    max_repeat: float = 0.5  # repetitive filter: drop when the repeated 4-gram share is higher

    def validate(self) -> None:
        """Raise ConfigError with one line for an impossible value."""
        if self.k < 1:
            raise ConfigError(f"k={self.k}: expected >= 1")
        if self.limit < 0 or self.max_tokens < 0:
            raise ConfigError(f"limit={self.limit}, max_tokens={self.max_tokens}: expected >= 0")
        if not 0 < self.temperature or not 0 < self.top_p <= 1:
            raise ConfigError(f"temperature={self.temperature}, top_p={self.top_p}: expected > 0 and (0, 1]")
        for key in ("min_language", "min_readability", "max_repeat"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key}={getattr(self, key)}: expected a value in [0, 1]")
        if self.language not in LANGUAGE_SCRIPTS:
            raise ConfigError(f"language={self.language!r}: expected one of {', '.join(LANGUAGE_SCRIPTS)}")


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """Share of the token ``n``-grams of ``text`` that occurred earlier in it (0.0 with no n-gram).

    Example: tokens ``a b a b a b`` (n = 2) give the 2-grams ab, ba, ab, ba, ab: 3 of 5 repeat, 0.6.
    """
    tokens = _TOKEN.findall(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams) if grams else 0.0


def verdict(task, completion: str, answer: str, length: int, truncated: bool, opts: SampleOptions,
            kept_texts: set) -> tuple[str | None, dict]:
    """The first filter that rejects ``completion`` (None = keep) and its rewards.

    ``completion`` is the grading text (``grading_text``: with the ``<think>`` a prompt opened);
    ``kept_texts`` holds the completions already kept for this question (for ``duplicate``).
    """
    accuracy = task.verify(completion, answer)
    rewards = {"accuracy": accuracy, "format": format_reward(completion),
               "language": language_reward(completion, opts.language),
               "readability": readability_reward(completion) if task.name == "multiplication" else None,
               "repeat": repeated_ngram_share(completion)}
    checks = (("overlong", truncated or (opts.max_tokens and length > opts.max_tokens)),
              ("unparseable_gold", accuracy != accuracy),
              ("wrong", accuracy != 1.0),
              ("bad_format", rewards["format"] < 1.0),
              ("mixed_language", rewards["language"] < opts.min_language),
              ("unreadable", rewards["readability"] is not None and rewards["readability"] < opts.min_readability),
              ("repetitive", rewards["repeat"] > opts.max_repeat),
              ("duplicate", completion in kept_texts))
    return next((name for name, failed in checks if failed), None), rewards


def training_problems(task, cfg, limit: int) -> list:
    """Training problems, held-out ones excluded (the same sets as ``r1 run``): a file task's first ``limit``
    (0 = all) in file order; a generated task's first ``limit`` distinct draws of a ``(seed, "sample")`` stream.

    Raises:
        ConfigError: ``limit=0`` for a generated task (its problems are endless).
    """
    from r1.pretrain import sample_train_problem
    from r1.run import _eval_sets

    heldout = {p.key for problems in _eval_sets(cfg, task).values() for p in problems}
    if getattr(task, "trainable", None) is not None:
        problems = [p for p in task.trainable if p.key not in heldout]
        return problems[:limit] if limit else problems
    if limit == 0:
        raise ConfigError(f"limit=0 with task {task.name}: a generated task needs a number of prompts, e.g. limit=256")
    rng = random.Random(f"{cfg.seed}/sample")
    return distinct_problems(lambda: sample_train_problem(task, rng, heldout), limit)


def rejection_sample(model, tokenizer, task, problems: list, cfg, opts: SampleOptions, progress=None):
    """Sample ``opts.k`` completions per problem, filter them; return ``(kept rows, counts)``.

    Sampling is seeded here from ``cfg.seed``; problems go ``cfg.eval_batch_size // k`` at a time.
    ``progress(n_done)`` is called after each chunk. ``counts``: ``sampled``, ``kept``, ``dropped`` (per filter,
    ``FILTERS`` order), ``problems``, ``problems_kept`` (problems with at least one kept completion).
    """
    from r1.models.prompts import grading_text, prompt_for
    from r1.rollout.engine import generate_rollouts

    torch.manual_seed(cfg.seed * 7919 + 29)
    per_chunk, k = max(1, cfg.eval_batch_size // opts.k), opts.k
    rows, dropped, done, with_kept = [], dict.fromkeys(FILTERS, 0), 0, 0
    for start in range(0, len(problems), per_chunk):
        chunk = problems[start:start + per_chunk]
        rendered = [prompt_for(tokenizer, p.question, cfg) for p in chunk]
        batch = generate_rollouts(model, tokenizer, [r.text for r in rendered], k, cfg.max_new_tokens,
                                  opts.temperature, opts.top_p, batch_size=cfg.eval_batch_size,
                                  sampler=getattr(cfg, "sampler", "auto"))
        lengths = batch.lengths.tolist()
        for i, p in enumerate(chunk):
            kept_texts: set = set()
            for j in range(i * k, (i + 1) * k):
                graded = grading_text(rendered[i], batch.texts[j])
                why, rewards = verdict(task, graded, p.answer, int(lengths[j]), bool(batch.truncated[j]), opts,
                                       kept_texts)
                if why:
                    dropped[why] += 1
                    continue
                kept_texts.add(graded)
                rows.append({"question": p.question, "prompt": rendered[i].text, "completion": batch.texts[j],
                             "answer": p.answer, "rewards": rewards, "length": int(lengths[j])})
            with_kept += bool(kept_texts)
        done += len(chunk) * k
        if progress is not None:
            progress(done)
    counts = {"sampled": done, "kept": len(rows), "dropped": dropped, "problems": len(problems),
              "problems_kept": with_kept}
    return rows, counts


def sample_to_file(cfg: RunConfig, opts: SampleOptions, model_dir: str | Path, out: str | Path,
                   quiet: bool = False) -> dict:
    """Rejection-sample ``cfg.task`` from the model in ``model_dir`` into ``out`` (jsonl) and
    ``<out stem>.summary.json``; return the summary. For a pipeline stage: ``out = stage_dir / "samples.jsonl"``.

    Raises:
        ConfigError: bad option; r1.models.hf.ModelLoadError, r1.models.prompts.PromptFormatError: bad model.
    """
    from r1.models.hf import load_policy
    from r1.run import _device, _progress, console
    from r1.tasks import make_task

    opts.validate()
    started, out = time.time(), Path(out)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    task = make_task(cfg)
    try:
        problems = training_problems(task, cfg, opts.limit)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"task {cfg.task}: {str(exc).splitlines()[0]}") from None
    model, tokenizer = load_policy(model_dir, cfg.dtype, device=_device(cfg), trainable=False)
    if not quiet:
        console.print(f"rejection sampling: {len(problems)} prompts x k={opts.k} from {model_dir}, T={opts.temperature}, "
                      f"top-p {opts.top_p}, up to {cfg.max_new_tokens} tokens, seed {cfg.seed}")
    t0 = time.time()
    with _progress() as bar:
        t = bar.add_task("sample", total=len(problems) * opts.k, rate="", info="", visible=not quiet)
        rows, counts = rejection_sample(model, tokenizer, task, problems, cfg, opts, lambda n: bar.update(
            t, completed=n, rate=f"{n / max(1e-9, time.time() - t0):.1f} samples/s"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    summary = {"model": str(Path(model_dir).resolve()), "task": cfg.task, "out": str(out.resolve()),
               "options": dataclasses.asdict(opts), "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens,
               "prompt_format": cfg.prompt_format, "filters": list(FILTERS), **counts,
               "wall_seconds": time.time() - started}
    summary_path(out).write_text(json.dumps(summary, indent=1))
    if not quiet:
        drops = ", ".join(f"{k} {v}" for k, v in counts["dropped"].items())
        console.print(f"kept {counts['kept']} of {counts['sampled']} ({counts['problems_kept']} of "
                      f"{counts['problems']} prompts have one); dropped: {drops} -> {out}")
    return summary


def summary_path(out: str | Path) -> Path:
    """``FILE.summary.json`` next to ``FILE.jsonl``."""
    out = Path(out)
    return out.with_name(out.stem + ".summary.json")


def run_sample(model_arg: str, task: str, k: int | None, out: str | None, items: list[str]) -> Path:
    """``r1 sample``: resolve MODEL (as ``r1 eval``), options and config; sample; return the output path.

    Raises:
        ConfigError: bad key=value, option or task; r1.eval.command.EvalError: MODEL is not a model.
    """
    from r1.eval.command import resolve_model

    target = resolve_model(model_arg)
    fields = {f.name: f for f in dataclasses.fields(SampleOptions)}
    opts, overrides = SampleOptions(), [f"task={task}"]
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {item!r}: expected key=value (MODEL goes first)")
        if key == "k":
            raise ConfigError("k=...: use --k K")
        if key in fields:
            kind = type(fields[key].default)
            try:
                setattr(opts, key, kind(value) if kind is not int else int(value))
            except ValueError:
                raise ConfigError(f"{key}={value!r}: expected {kind.__name__}") from None
        else:
            overrides.append(item)
    if k is not None:
        opts.k = k
    opts.validate()
    cfg = load_config(target.run_dir / "config.yaml" if target.run_dir else None, overrides)
    if out is None:
        stem = Path("runs") / f"sample-{(target.run_dir or target.model_dir).name}-{task}"
        path, n = stem.with_suffix(".jsonl"), 1
        while path.exists():
            path, n = stem.with_name(f"{stem.name}-{n}.jsonl"), n + 1
    else:
        path = Path(out)
        if path.suffix != ".jsonl":
            raise ConfigError(f"--out {out!r}: expected a .jsonl file name")
    sample_to_file(cfg, opts, target.model_dir, path)
    return path
