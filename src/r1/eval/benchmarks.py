"""Benchmarks for ``r1 eval``: which task scores each, which file it reads, its default k, and the
per-problem metrics (pass@k curve, majority vote) computed from :func:`r1.eval.protocol.evaluate`'s records.

Every benchmark is scored by the task and reward function that training uses (one scoring function
for training and evaluation):

============  ==============================  ================================  ===========
benchmark     task                            default file (under shared/data)  default k
============  ==============================  ================================  ===========
``math500``   ``MathTask("math")``            math500/test.jsonl                4
``aime24``    ``MathTask("aime")``            aime/aime24.jsonl                 64
``aime25``    ``MathTask("aime")``            aime/aime25.jsonl                 64
``amc23``     ``MathTask("amc")``             amc/amc23.jsonl                   8
``gsm8k``     ``MathTask("gsm8k")``           gsm8k/test.jsonl                  8
``countdown`` ``CountdownTask(3, 100, 100)``  countdown/cd3_test.jsonl          8
``heldout``   the run's own task              the run's held-out set            the run's eval_k
============  ==============================  ================================  ===========

Default k follows public practice: 64 samples on AIME (R1 §3 reports pass@1 and cons@64 over 64
samples), 4 on MATH-500, 8 elsewhere. ``mbpp`` and ``humaneval`` are known names whose code task is
not built yet: asking for them is an error.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from r1.eval.metrics import cons_at_k, mean_se, pass_at_k_curve

CODE_BENCHMARKS = {"mbpp": "mbpp/mbpp.jsonl", "humaneval": "humaneval/HumanEval.jsonl.gz"}
_INT = re.compile(r"\s*[-+]?\d+\s*")


class BenchmarkError(ValueError):
    """A benchmark cannot be evaluated (unknown, not built, data missing); the message is one line."""


@dataclass(frozen=True)
class Benchmark:
    """A benchmark read from a file: the task that scores it and its default k."""

    name: str
    task: str  # "math", "aime", "amc", "gsm8k" (MathTask) or "countdown"
    file: str  # relative to the shared data folder
    k: int  # default samples per problem


BENCHMARKS = {b.name: b for b in (
    Benchmark("math500", "math", "math500/test.jsonl", 4),
    Benchmark("aime24", "aime", "aime/aime24.jsonl", 64),
    Benchmark("aime25", "aime", "aime/aime25.jsonl", 64),
    Benchmark("amc23", "amc", "amc/amc23.jsonl", 8),
    Benchmark("gsm8k", "gsm8k", "gsm8k/test.jsonl", 8),
    Benchmark("countdown", "countdown", "countdown/cd3_test.jsonl", 8),
)}
HELDOUT = "heldout"
KNOWN = (*BENCHMARKS, HELDOUT, *CODE_BENCHMARKS)


def check_name(name: str) -> None:
    """Raise BenchmarkError unless ``name`` is a benchmark that can run now."""
    if name in CODE_BENCHMARKS:
        raise BenchmarkError(f"benchmark {name!r} needs the code task (not built yet); "
                             f"expected one of {', '.join(b for b in KNOWN if b not in CODE_BENCHMARKS)}")
    if name not in KNOWN:
        raise BenchmarkError(f"benchmark {name!r}: unknown; expected a comma-separated list of {', '.join(KNOWN)}")


def default_file(name: str) -> str:
    """The benchmark's file in the shared data folder, or '' when that folder is not found."""
    from r1.tasks.math import data_dir

    root = data_dir()
    return str(root / BENCHMARKS[name].file) if root else ""


def load_benchmark(name: str, path: str):
    """``(task, problems)`` of benchmark ``name`` read from ``path`` (every problem, in file order).

    Raises:
        BenchmarkError: the file is missing or does not parse with the task's reader.
    """
    bench = BENCHMARKS[name]
    if not path:
        raise BenchmarkError(f"benchmark {name}: the shared data folder was not found; set {name}_file= "
                             f"(expected {bench.file}) or R1_DATA_DIR")
    if not Path(path).is_file():
        raise BenchmarkError(f"{name}_file={path!r}: file not found (expected the benchmark's data, e.g. "
                             f"shared/data/{bench.file})")
    try:
        if bench.task == "countdown":
            from r1.tasks.countdown import CountdownTask
            task = CountdownTask(3, 100, 100)  # cd3_test: 3 numbers in 1..100, target 1..100; every row fits
            return task, task.load_file(path)
        from r1.tasks.math import MathTask
        task = MathTask(bench.task, test_file=path)
        return task, task.test_problems
    except KeyError as exc:
        raise BenchmarkError(f"{name}_file={path!r}: cannot read it as {name} (a row has no field {exc})") from None
    except (ValueError, TypeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0].split("; set ")[0]  # field keys are run keys
        raise BenchmarkError(f"{name}_file={path!r}: cannot read it as {name} ({first[:200]})") from None


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the vote: which answers count, which are the same ---

def vote_answer(task, extracted: str | None) -> str | None:
    """The answer a sample casts in the vote, or None when it is missing or unparseable (it never wins).

    Math tasks: None when math-verify cannot parse it (``r1.rewards.math.parse_gold``, the gold parser).
    Multiplication: None unless an integer. Countdown: None when empty. Whitespace is stripped.
    """
    from r1.tasks.math import MathTask

    if extracted is None or not extracted.strip():
        return None
    text = extracted.strip()
    if isinstance(task, MathTask):
        from r1.rewards.math import parse_gold
        return text if parse_gold(text) is not None else None
    if task.name == "multiplication":
        return text if _INT.fullmatch(text) else None
    return text


def equivalence(task, problem):
    """``(a, b) -> bool``: the verifier's equivalence of two final answers of ``problem``.

    Math tasks: math-verify through :func:`r1.rewards.math.grade` with ``a`` as the gold (the same
    rules as the accuracy reward; so ``\\frac{1}{2}`` and ``0.5`` are one answer); two integers compare
    as integers without parsing. Multiplication: the same integer. Countdown: the same expression up to
    spaces, or both solving the puzzle (the verifier calls every solution right).
    """
    from r1.tasks.math import MathTask

    if isinstance(task, MathTask):
        from r1.rewards.math import grade

        def same(a: str, b: str) -> bool:
            if _INT.fullmatch(a) and _INT.fullmatch(b):
                return int(a) == int(b)
            return grade(f"</think><answer>{b}</answer>", a).correct is True
        return same
    if task.name == "multiplication":
        return lambda a, b: int(a) == int(b)

    def solves(a: str) -> bool:
        return task.verify(f"<answer>{a}</answer>", problem.answer) == 1.0
    return lambda a, b: a.replace(" ", "") == b.replace(" ", "") or (solves(a) and solves(b))


# --- per-problem and benchmark metrics ---

def add_metrics(result: dict, task, problems: list) -> dict:
    """Add pass@k, cons@k and their standard errors to an :func:`r1.eval.protocol.evaluate` result.

    Per problem (``result["problems"][i]``): ``correct`` (count), ``pass@k`` ([k] list: the unbiased
    estimate for k' = 1..k), ``vote`` (the cons@k answer, its votes, its grade, the clusters). Problems
    whose gold answer is unparseable get None there and are left out of every figure (as pass@1 does).
    Summary: ``pass@1_se``, ``pass@k`` (``{"1": {"mean", "se"}, ..., "k": ...}``), ``cons@k``,
    ``cons@k_se``, ``scored_problems``, ``no_answer_frac`` (samples without a usable final answer).
    The summary fields ``evaluate`` wrote are left as they are. Returns ``result``.
    """
    curves, p1, cons, no_answer, samples = [], [], [], 0, 0
    for record, problem in zip(result["problems"], problems):
        flags = [s["correct"] for s in record["samples"]]
        votes = [vote_answer(task, s["extracted"]) for s in record["samples"]]
        no_answer += sum(v is None for v in votes)
        samples += len(votes)
        if any(f is None for f in flags):  # unparseable gold: skipped and counted, never scored
            record.update({"correct": None, "pass@k": None, "vote": None})
            continue
        curve = pass_at_k_curve(len(flags), sum(flags))
        vote = cons_at_k(votes, flags, equivalence(task, problem))
        record.update({"correct": sum(flags), "pass@k": curve,
                       "vote": {"answer": vote.answer, "votes": vote.votes, "correct": vote.correct,
                                "clusters": [list(c) for c in vote.clusters]}})
        curves.append(curve)
        p1.append(curve[0])
        cons.append(float(vote.correct))
    k = result["summary"]["k"]
    summary = result["summary"]
    summary["pass@1_se"] = mean_se(p1)[1]
    summary["pass@k"] = {str(j): dict(zip(("mean", "se"), mean_se([c[j - 1] for c in curves])))
                         for j in range(1, k + 1)}
    summary["cons@k"], summary["cons@k_se"] = mean_se(cons)
    summary["scored_problems"] = len(curves)
    summary["no_answer_frac"] = no_answer / samples if samples else None
    return result
