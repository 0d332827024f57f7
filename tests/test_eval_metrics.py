"""Evaluation metrics: pass@k (Chen et al. 2021, Eq. 1) against hand-worked values and a brute-force
float64 reference, standard errors, and the cons@k majority vote (grouping, ties, missing answers)."""

import functools
import itertools
import math
from fractions import Fraction

import pytest

from r1.eval.benchmarks import add_metrics, equivalence, vote_answer
from r1.eval.metrics import cons_at_k, mean_se, pass_at_1, pass_at_k, pass_at_k_curve
from r1.tasks.math import MathProblem, MathTask
from r1.tasks.multiplication import MultiplicationTask, Problem


@pytest.mark.parametrize("n, c, k, expected", [
    (10, 3, 5, 0.916667),  # 1 - (3/8)(4/9)(5/10) = 1 - 1/12
    (4, 1, 4, 1.0),  # 3 wrong samples < k = 4: every 4-subset holds the right one
    (5, 0, 1, 0.0),  # nothing right
    (5, 5, 1, 1.0),
    (8, 2, 1, 0.25),  # pass@1 = c / n
    (3, 1, 2, 2 / 3),  # subsets {12, 13, 23} of which 2 hold sample 1
])
def test_pass_at_k_hand_worked(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=5e-7)


def _brute_force(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (the first c correct) that hold a correct one, float64."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_the_average_over_every_k_subset():
    for n in range(1, 9):
        for c in range(n + 1):
            curve = pass_at_k_curve(n, c)
            assert len(curve) == n
            for k in range(1, n + 1):
                assert curve[k - 1] == pytest.approx(_brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_overflow():
    # C(1000, 100) ~ 6e139 is fine for ints but not for float64 ratios of large n; the product form stays exact
    n, c, k = 1000, 10, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(5000, 1, 1) == pytest.approx(1 / 5000, rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_pass_at_1_and_mean_se():
    assert pass_at_1([True, False, False, True]) == 0.5
    with pytest.raises(ValueError):
        pass_at_1([])
    # values 0, 1, 1, 0: mean 0.5, sample sd sqrt(1/3), se sqrt(1/3) / 2 = 0.288675
    mean, se = mean_se([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5 and se == pytest.approx(0.288675, abs=1e-6)
    assert mean_se([0.3]) == (0.3, None) and mean_se([]) == (None, None)
    assert mean_se([0.25, 0.25, 0.25]) == (0.25, 0.0)


@functools.lru_cache(maxsize=None)
def _math_same(a: str, b: str) -> bool:
    return equivalence(MathTask("math"), None)(a, b)


def test_vote_groups_answers_the_verifier_calls_equal():
    # \frac{1}{2} and 0.5 are one answer (2 votes) and beat 3 (1 vote); its representative sorts first
    vote = cons_at_k(["\\frac{1}{2}", "3", "0.5"], [True, False, True], _math_same)
    assert vote.answer == "0.5" and vote.votes == 2 and vote.correct
    assert vote.clusters == (("0.5", 2), ("3", 1))
    assert _math_same("033", "33") and not _math_same("50\\%", "0.5")


def test_vote_breaks_ties_the_same_way_for_every_order():
    # clusters {0.5, \frac{1}{2}}: 2, {7}: 2, {2}: 1, one missing answer; the tie 0.5 vs 7 goes to "0.5"
    answers = ["\\frac{1}{2}", "0.5", "7", "7", "2", None]
    correct = [False, False, True, True, False, False]
    outcomes = set()
    for order in itertools.permutations(range(len(answers))):
        outcomes.add(cons_at_k([answers[i] for i in order], [correct[i] for i in order], _math_same))
    assert len(outcomes) == 1
    vote = outcomes.pop()
    assert (vote.answer, vote.votes, vote.correct) == ("0.5", 2, False)
    assert vote.clusters == (("0.5", 2), ("2", 1), ("7", 2))


def test_missing_answers_never_win():
    same = lambda a, b: a == b  # noqa: E731
    vote = cons_at_k([None, None, None, "12"], [False, False, False, True], same)
    assert (vote.answer, vote.votes, vote.correct) == ("12", 1, True)
    assert cons_at_k([None, None], [False, False], same).answer is None
    assert not cons_at_k([None, None], [False, False], same).correct
    with pytest.raises(ValueError):
        cons_at_k(["1"], [True, False], same)
    task = MultiplicationTask()
    assert [vote_answer(task, a) for a in (None, "", " 42 ", "4x2", "-7")] == [None, None, "42", None, "-7"]
    assert [vote_answer(MathTask("math"), a) for a in (None, " ", "}{", "\\frac12")] == [None, None, None, "\\frac12"]


def _sample(extracted, correct):
    return {"completion": "", "extracted": extracted, "correct": correct}


def test_add_metrics_per_problem_and_summary():
    # problem 1: 1 of 4 right; problem 2: 3 of 4 right; problem 3: gold unparseable (skipped, counted)
    task = MultiplicationTask()
    problems = [Problem("2*3", "6", (2, 3)), Problem("4*5", "20", (4, 5)), Problem("x", "", ("x",))]
    result = {"summary": {"k": 4, "problems": 3}, "problems": [
        {"samples": [_sample("6", True), _sample("5", False), _sample("5", False), _sample(None, False)]},
        {"samples": [_sample("20", True), _sample("020", True), _sample("21", False), _sample(" 20", True)]},
        {"samples": [_sample("1", None)] * 4}]}
    add_metrics(result, task, problems)
    p1, p2, p3 = result["problems"]
    assert p1["correct"] == 1 and p1["pass@k"] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert p1["vote"]["answer"] == "5" and p1["vote"]["votes"] == 2 and not p1["vote"]["correct"]
    assert p2["correct"] == 3 and p2["pass@k"] == pytest.approx([0.75, 1.0, 1.0, 1.0])
    assert p2["vote"]["answer"] == "020" and p2["vote"]["votes"] == 3 and p2["vote"]["correct"]  # 020 = 20
    assert p3["correct"] is None and p3["vote"] is None
    s = result["summary"]
    assert s["scored_problems"] == 2 and s["no_answer_frac"] == 1 / 12
    # pass@1 per problem 0.25, 0.75: sample sd = sqrt(2 * 0.25^2 / 1) = 0.3536, se = sd / sqrt(2) = 0.25
    assert s["pass@1_se"] == pytest.approx(0.25)
    assert s["pass@k"]["2"]["mean"] == pytest.approx(0.75) and s["pass@k"]["2"]["se"] == pytest.approx(0.25)
    assert s["pass@k"]["4"] == {"mean": 1.0, "se": 0.0}
    assert s["cons@k"] == 0.5 and s["cons@k_se"] == pytest.approx(0.5)


def test_countdown_vote_counts_every_solution_as_one_answer():
    from r1.tasks.countdown import CountdownTask

    task = CountdownTask(3, 100, 100)
    prob = Problem("3 5 4 -> 23", "[[3, 5, 4], 23]", ((3, 4, 5), 23))
    same = equivalence(task, prob)
    assert same("(5*4)+3", "3+4*5") and same("5*4+3", "5 * 4 + 3") and not same("5+4+3", "5+4*3")
    vote = cons_at_k(["5+4+3", "(5*4)+3", "3+(4*5)", "5+4+3"], [False, True, True, False], same)
    assert vote.votes == 2 and vote.answer == "(5*4)+3" and vote.correct  # tie 2-2: "(" sorts before "5"


def test_math_problem_gold_rules_reach_the_vote():
    # AIME golds compare as numbers: "025" and "25" are one answer
    task = MathTask("aime")
    same = equivalence(task, MathProblem("q", "25", ("text", "q")))
    assert same("025", "25") and not same("25", "26")
