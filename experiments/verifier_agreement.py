"""Verifier quality on reference data: agreement with gold solutions and false accepts -> docs/verifiers.md.

For each training problem, its own worked solution is graded as a completion by the task's
reward (``MathTask.grade``, the function training uses):

* agreement: the solution against its own gold answer (target >= 99.5 % correct);
* false accept: the same solution against the gold answer of another problem whose answer has a
  different value (target <= 0.5 % accepted). The other problem is the next one, in a seeded
  permutation, whose answer math-verify does not call equal to this one's (both directions).

MATH (``math/train.jsonl``, 12,000): the completion is ``solution`` (its final answer is its last
``\\boxed{}``), the gold is ``answer``. GSM8K (``gsm8k/train.jsonl``, 7,473): the completion is the
``answer`` text, which ends with ``#### 72``; the gold is the number after ``####``.
Problems whose gold cannot be parsed are skipped and counted.

For comparison, the same pairs are graded by math-verify 0.9.0 alone, the completion parsed whole
with the default configuration: "bare" parses the gold as written (``verify(parse(gold),
parse(completion))``, its README's example), "boxed" parses ``\\boxed{gold}`` (as verl's and
SimpleRL-Zoo's math-verify rewards do).

    nice -n 19 .venv/bin/python experiments/verifier_agreement.py --limit 500     # a quick subset
    nice -n 19 .venv/bin/python experiments/verifier_agreement.py                 # full (~ CPU-minutes)

Writes ``runs/verifier_agreement/<task>.json`` (figures and every disagreement) and prints the figures.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from math_verify import parse, verify
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from r1.cli import OneLineParser
from r1.tasks.math import MathTask, read_rows

ROOT = Path(__file__).resolve().parents[1]


def _same_value(task: MathTask, a: str, b: str) -> bool:
    """True if math-verify calls gold answers ``a`` and ``b`` equal, in either direction."""
    return bool(task.grade(f"\\boxed{{{b}}}", a).correct) or bool(task.grade(f"\\boxed{{{a}}}", b).correct)


def pairs(task: MathTask) -> list[tuple[str, str]]:
    """(completion, gold) per training problem: the worked solution as written in the file, and the task's gold."""
    if task.name == "gsm8k":  # the raw answer text, "#### 72" line included
        return [(row["answer"], task.gold(row["answer"])) for row in read_rows(task.train_file)]
    return [(p.solution, p.answer) for p in task.train_problems]


def baseline(completion_parsed: list, gold: str) -> tuple[bool, bool]:
    """math-verify alone: (gold parsed bare, gold parsed as ``\\boxed{gold}``) against the parsed completion."""
    return (bool(verify(parse(gold), completion_parsed)),
            bool(verify(parse(f"\\boxed{{{gold}}}"), completion_parsed)))


def measure(task: MathTask, limit: int | None, seed: int, progress: Progress) -> dict:
    rows = pairs(task)
    n = len(rows) if limit is None else min(limit, len(rows))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    position = {i: k for k, i in enumerate(order)}
    counts = {"problems": n, "skipped_gold": 0, "agree": 0, "disagree": 0, "pairs": 0, "false_accept": 0,
              "bare_agree": 0, "bare_false_accept": 0, "boxed_agree": 0, "boxed_false_accept": 0}
    disagreements, false_accepts, baseline_misses = [], [], []
    bar = progress.add_task(task.name, total=n)
    start = time.time()
    for i in range(n):
        completion, gold = rows[i]
        own = task.grade(completion, gold)
        if own.correct is None:
            counts["skipped_gold"] += 1
            disagreements.append({"index": i, "gold": gold, "reason": own.reason, "extracted": own.extracted})
            progress.advance(bar)
            continue
        completion_parsed = parse(completion)
        base_own = baseline(completion_parsed, gold)
        counts["bare_agree"] += base_own[0]
        counts["boxed_agree"] += base_own[1]
        if own.correct:
            counts["agree"] += 1
        else:
            counts["disagree"] += 1
            disagreements.append({"index": i, "gold": gold, "reason": own.reason, "extracted": own.extracted})
        k = position[i]
        for step in range(1, 50):  # the next problem in the permutation with a different answer
            j = order[(k + step) % len(order)]
            other = rows[j][1]
            if task.grade(f"\\boxed{{{other}}}", other).correct and not _same_value(task, gold, other):
                break
        else:
            progress.advance(bar)
            continue
        cross = task.grade(completion, other)
        base_cross = baseline(completion_parsed, other)
        counts["bare_false_accept"] += base_cross[0]
        counts["boxed_false_accept"] += base_cross[1]
        if not base_own[1] or base_cross[1]:
            baseline_misses.append({"index": i, "gold": gold, "other_gold": other, "boxed_agree": base_own[1],
                                    "boxed_false_accept": base_cross[1]})
        counts["pairs"] += 1
        if cross.correct:
            counts["false_accept"] += 1
            false_accepts.append({"index": i, "other": j, "own_gold": gold, "other_gold": other,
                                  "extracted": cross.extracted})
        progress.advance(bar)
    graded = counts["agree"] + counts["disagree"]
    counts["agreement"] = counts["agree"] / max(1, graded)
    counts["false_accept_rate"] = counts["false_accept"] / max(1, counts["pairs"])
    for kind in ("bare", "boxed"):
        counts[f"{kind}_agreement"] = counts[f"{kind}_agree"] / max(1, graded)
        counts[f"{kind}_false_accept_rate"] = counts[f"{kind}_false_accept"] / max(1, counts["pairs"])
    counts["seconds"] = round(time.time() - start, 1)
    return {"task": task.name, "file": task.train_file, "seed": seed, **counts,
            "disagreements": disagreements, "false_accepts": false_accepts, "baseline_misses": baseline_misses}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["math", "gsm8k"], choices=["math", "gsm8k"])
    parser.add_argument("--limit", type=int, default=None, help="first N problems only (development)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutation that pairs problems")
    parser.add_argument("--out", default=str(ROOT / "runs" / "verifier_agreement"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    results = []
    with Progress(*columns) as progress:
        for name in args.tasks:
            result = measure(MathTask(name), args.limit, args.seed, progress)
            suffix = f"-limit{args.limit}" if args.limit else ""
            (out / f"{name}{suffix}.json").write_text(json.dumps(result, indent=1))
            results.append(result)
    for r in results:
        print(f"{r['task']}: {r['problems']} problems ({r['file']}), gold unparseable (skipped) {r['skipped_gold']}; "
              f"agreement {r['agree']}/{r['agree'] + r['disagree']} = {100 * r['agreement']:.2f}%; "
              f"false accept {r['false_accept']}/{r['pairs']} = {100 * r['false_accept_rate']:.2f}%; "
              f"{r['seconds']:.0f} s")
        for kind in ("bare", "boxed"):
            print(f"    math-verify alone, {kind} gold: agreement {100 * r[f'{kind}_agreement']:.2f}%, "
                  f"false accept {100 * r[f'{kind}_false_accept_rate']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
