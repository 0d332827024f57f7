"""Countdown (as TinyZero ships it): reach a target with the given numbers and ``+ - * /``.

A completion is right when its ``<answer>`` block is an arithmetic expression that
uses each given number exactly once, only ``+ - * /`` and parentheses, and equals
the target exactly (rational arithmetic, no ``eval``).

Base-corpus traces: the long style is a search, one attempt per line, each a chain
of steps that combines the numbers left to right; 0-4 failed attempts come first and
the search stops at the first attempt that reaches the target::

    <think>
    3+5=8,8*4=32
    5*4=20,20+3=23
    </think>
    <answer>(5*4)+3</answer>

The direct style answers with an empty thought.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import random
from fractions import Fraction
from pathlib import Path

from r1.rewards.format import extract_answer, thinking
from r1.tasks.multiplication import Problem

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_ALLOWED = set("0123456789+-*/() ")


class _Invalid(Exception):
    pass


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    """Exact value of a parsed expression made only of integers, + - * / and parentheses."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise _Invalid("division by zero")
        return left / right
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    raise _Invalid(f"unsupported element {type(node).__name__}")


def countdown_verifier(completion: str, nums: list[int], target: int) -> float:
    """1.0 if the ``<answer>`` expression uses each of ``nums`` once and equals ``target``, else 0.0.

    Scores 0.0 for: no answer block, characters other than digits, ``+ - * /``,
    parentheses and spaces, unary signs, a number used twice, missing or not given,
    division by zero, or a value other than ``target``.
    """
    expr = extract_answer(completion)
    if not expr or not set(expr) <= _ALLOWED or len(expr) > 200:
        return 0.0
    try:
        used: list[int] = []
        value = _evaluate(ast.parse(expr, mode="eval").body, used)
    except (SyntaxError, _Invalid, RecursionError, ValueError):
        return 0.0
    if sorted(used) != sorted(nums):
        return 0.0
    return 1.0 if value == target else 0.0


def _chain(nums: list[int], ops: list[str], flips: list[bool]):
    """Combine ``nums`` left to right; yield the step strings, the value and the expression.

    Returns None when a step is not an integer (division with a remainder) or is negative.
    """
    value, expr, steps = nums[0], str(nums[0]), []
    for x, op, flip in zip(nums[1:], ops, flips):
        a, b = (x, value) if flip else (value, x)
        ea, eb = (str(x), expr) if flip else (expr, str(x))
        ea = f"({ea})" if not ea.isdigit() else ea
        eb = f"({eb})" if not eb.isdigit() else eb
        if op == "+":
            r = a + b
        elif op == "-":
            r = a - b
        elif op == "*":
            r = a * b
        else:
            if b == 0 or a % b:
                return None
            r = a // b
        if r < 0:
            return None
        steps.append(f"{a}{op}{b}={r}")
        value, expr = r, f"{ea}{op}{eb}"
    return steps, value, expr


@functools.lru_cache(maxsize=4096)
def _all_chains(nums: tuple) -> list[tuple]:
    out = []
    for order in itertools.permutations(nums):
        for ops in itertools.product("+-*/", repeat=len(nums) - 1):
            for flips in itertools.product((False, True), repeat=len(nums) - 1):
                found = _chain(list(order), list(ops), list(flips))
                if found:
                    out.append(found)
    return out


class CountdownTask:
    """Countdown with ``n`` numbers in ``1..max_num`` and a target in ``1..max_target``."""

    name = "countdown"

    def __init__(self, n: int = 3, max_num: int = 20, max_target: int = 100):
        self.n, self.max_num, self.max_target = n, max_num, max_target

    def _chains(self, nums: list[int]) -> list[tuple]:
        """Every left-to-right chain over ``nums`` with integer, non-negative steps."""
        return _all_chains(tuple(nums))

    def sample(self, rng: random.Random) -> Problem:
        while True:
            nums = [rng.randint(1, self.max_num) for _ in range(self.n)]
            reachable = sorted({c[1] for c in self._chains(nums) if 1 <= c[1] <= self.max_target})
            if reachable:
                target = rng.choice(reachable)
                return Problem(f"{' '.join(map(str, nums))} -> {target}", json.dumps([nums, target]),
                               (tuple(sorted(nums)), target))

    def verify(self, completion: str, answer: str) -> float:
        nums, target = json.loads(answer)
        return countdown_verifier(completion, nums, target)

    def trace(self, problem: Problem, long: bool, rng: random.Random) -> str:
        """The base-corpus completion: a search (0-4 failed attempts, then a solution) if ``long``,
        else a solution with an empty thought.
        """
        nums, target = json.loads(problem.answer)
        chains = self._chains(nums)
        solutions = [c for c in chains if c[1] == target]
        failures = [c for c in chains if c[1] != target]
        steps, _, expr = rng.choice(solutions)
        if not long:
            return f"<think>\n</think>\n<answer>{expr}</answer>"
        tried = rng.sample(failures, min(len(failures), rng.randint(0, 4)))
        lines = [",".join(c[0]) for c in tried] + [",".join(steps)]
        return "<think>\n" + "\n".join(lines) + "\n</think>\n" + f"<answer>{expr}</answer>"

    def reasons(self, completion: str) -> bool:
        return "=" in thinking(completion)

    def load_file(self, path: str | Path) -> list[Problem]:
        """Problems from a jsonl file with ``nums``/``target`` or ``input``/``output`` fields
        (TinyZero and d1 layouts) that fit this task (``n`` numbers, each <= ``max_num``).

        Raises:
            FileNotFoundError: ``path`` does not exist.
        """
        problems = []
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if "nums" in rec:
                nums, target = [int(x) for x in rec["nums"]], int(rec["target"])
            else:
                nums, target = [int(x) for x in str(rec["input"]).split(",")], int(rec["output"])
            if len(nums) == self.n and max(nums) <= self.max_num and 1 <= target <= self.max_target:
                problems.append(Problem(f"{' '.join(map(str, nums))} -> {target}", json.dumps([nums, target]),
                                        (tuple(sorted(nums)), target)))
        return problems
