"""Evaluation metrics over k sampled completions per problem: pass@1, unbiased pass@k, cons@k, and their
standard errors. Pure functions of correctness flags and final answers; no model, no task.

Notation: a benchmark has ``N`` problems; problem ``i`` has ``n`` samples of which ``c_i`` are correct.

* **pass@1** (DeepSeek-R1, arXiv 2501.12948, §3 "Evaluation Setup"): ``p_i = c_i / n``, the share of
  correct samples of problem ``i``; the benchmark figure is the mean of ``p_i`` over problems.
* **pass@k** (Chen et al. 2021, arXiv 2107.03374, Eq. 1): the probability that at least one of ``k``
  samples drawn without replacement from the ``n`` is correct, ``1 - C(n-c, k) / C(n, k)``, estimated
  per problem and averaged over problems. Unbiased for every ``k <= n``.
* **cons@k** (R1 §3: cons@64 on AIME): the majority answer of the ``k`` samples is correct.

Uncertainty (``mean_se``): every benchmark figure is a mean over problems of a per-problem value
``x_i`` (``p_i``, the per-problem pass@k estimate, or the 0/1 correctness of the vote). Its standard
error is the standard error of that mean over problems, ``sd(x_i) / sqrt(N)`` with the sample
standard deviation (``N - 1`` in the denominator). It treats the problems as drawn from a larger
population of similar problems, and it contains the sampling noise of the ``n`` completions as well
(each ``x_i`` is itself noisy). It is undefined (None) for fewer than two problems. A 95% interval
is about ``mean ± 1.96 se``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from ``n`` samples of which ``c`` are correct.

    Chen et al. 2021 (arXiv 2107.03374), Eq. 1: ``1 - C(n-c, k) / C(n, k)``, computed as their
    numerically stable product ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (their Figure 3) rather than with
    binomials, which overflow float64 for n in the hundreds.

    Hand-worked: n=10, c=3, k=5: ``1 - (3/8)(4/9)(5/10) = 1 - 1/12 = 0.916667``; n=4, c=1, k=4: fewer
    than k wrong samples, so every k-subset holds the right one: 1.0; n=5, c=0: 0.0.

    Args:
        n: samples drawn for the problem (>= 1).
        c: correct samples among them (0..n).
        k: the k of pass@k (1..n).
    Raises:
        ValueError: ``n < 1``, ``c`` outside 0..n or ``k`` outside 1..n.
    """
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k(n={n}, c={c}, k={k}): expected n >= 1, 0 <= c <= n and 1 <= k <= n")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_curve(n: int, c: int) -> list[float]:
    """``[pass@1, pass@2, ..., pass@n]`` of one problem (``pass_at_k(n, c, k)`` for every k <= n)."""
    return [pass_at_k(n, c, k) for k in range(1, n + 1)]


def pass_at_1(correct: Sequence[bool]) -> float:
    """Mean correctness of the k samples of one problem (R1 §3: pass@1 averaged over k samples).

    Raises:
        ValueError: no samples.
    """
    if not correct:
        raise ValueError("pass_at_1: expected at least one sample")
    return sum(bool(x) for x in correct) / len(correct)


def mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """``(mean, standard error of the mean)`` of per-problem values (module docstring).

    The standard error is ``sd / sqrt(N)`` with the sample standard deviation (``N - 1``), None for
    ``N < 2``; the mean is None for ``N = 0``.
    """
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote over one problem's final answers.

    answer: the winning cluster's representative (None when no sample had a usable answer).
    votes: samples in the winning cluster.
    correct: the representative's grade (False when there is no answer).
    clusters: ``[(representative, votes), ...]`` in the order they were formed (sorted representatives).
    """

    answer: str | None
    votes: int
    correct: bool
    clusters: tuple[tuple[str, int], ...]


def cons_at_k(answers: Sequence[str | None], correct: Sequence[bool],
              equivalent: Callable[[str, str], bool]) -> Vote:
    """Majority vote (cons@k) over the final answers of one problem's k samples.

    Rules, chosen so that the result depends only on the multiset of (answer, grade) pairs, never on
    the order of the samples:

    1. A missing or unparseable answer is given as None by the caller and never votes, so it can
       never win; when every answer is None the vote is wrong (``answer=None``).
    2. Clustering: the distinct answer strings are sorted (Python string order, by code point) and
       taken in that order; each joins the first cluster whose representative it is equivalent to
       (``equivalent(rep, a) or equivalent(a, rep)``, so a one-sided verifier still groups), else it
       opens a new cluster and becomes its representative. A representative is thus the
       first-sorting member of its cluster (``0.5`` before ``\\frac{1}{2}``).
    3. A cluster's votes are the samples whose answer is in it. The winner has the most votes; among
       clusters tied on votes, the one whose representative sorts first wins.
    4. The vote is correct when the winning representative was graded correct (if the same string
       was graded differently in different samples, when any of them was correct).

    Args:
        answers: [k] final answers, None for missing/unparseable.
        correct: [k] the verifier's grade of each sample.
        equivalent: ``(a, b) -> bool``, the verifier's equivalence of two final answers
            (``r1.eval.benchmarks.equivalence``: math-verify for math tasks).
    Raises:
        ValueError: ``answers`` and ``correct`` differ in length.
    """
    if len(answers) != len(correct):
        raise ValueError(f"cons_at_k: {len(answers)} answers but {len(correct)} grades; expected one grade per answer")
    counts: dict[str, int] = {}
    graded: dict[str, bool] = {}
    for a, ok in zip(answers, correct):
        if a is None:
            continue
        counts[a] = counts.get(a, 0) + 1
        graded[a] = graded.get(a, False) or bool(ok)
    reps: list[str] = []
    votes: list[int] = []
    for a in sorted(counts):
        for j, rep in enumerate(reps):
            if equivalent(rep, a) or equivalent(a, rep):
                votes[j] += counts[a]
                break
        else:
            reps.append(a)
            votes.append(counts[a])
    clusters = tuple(zip(reps, votes))
    if not reps:
        return Vote(None, 0, False, ())
    best = max(votes)
    winner = min(r for r, v in clusters if v == best)  # tie: the representative that sorts first
    return Vote(winner, best, graded[winner], clusters)
