"""Multi-digit multiplication (as TinyZero ships it): ``a*b``, the product in ``<answer>``.

The base corpus mixes two styles (the latent reasoning that RL can elicit):

* long, written out by partial products (one per digit of ``b``), then summed one
  place value at a time::

      <think>
      47*8=320+56=376
      47*30=1200+210=1410
      1410+300=1710
      1710+70=1780
      1780+6=1786
      </think>
      <answer>1786</answer>

* direct, an empty thought and the answer guessed at once::

      <think>
      </think>
      <answer>1786</answer>

**Mixed language.** R1-Zero's chains of thought mixed languages because its base had read reasoning
in several (R1 §2.3). The corpus reproduces that: each step-by-step line is written, with probability
``mixed_frac``, in a second notation whose operators are Chinese words (``乘`` times, ``加`` plus),
the same arithmetic in another script::

      47乘8=320加56=376
      47*30=1200+210=1410
      1410加300=1710

Both notations are equally easy (the same digits and steps), so accuracy alone gives RL no reason to
prefer one; the readability stand-in (``r1.rewards.language.readability_reward``: the share of
thinking lines in the first notation) and the language-consistency reward can.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from r1.rewards.format import extract_answer, thinking

_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    """One problem: the question shown to the policy and the gold answer."""

    question: str  # e.g. "47*38"
    answer: str  # e.g. "1786"
    key: tuple  # identity used to keep held-out problems out of training


def multiplication_verifier(completion: str, answer: str) -> float:
    """1.0 if the ``<answer>`` block (after ``</think>``) is exactly the integer ``answer``, else 0.0.

    The block must be an integer written with digits only (optional leading ``-``,
    surrounding whitespace ignored); ``1,786``, ``1786.0`` or an expression score 0.
    """
    got = extract_answer(completion)
    if got is None or not _INT.fullmatch(got):
        return 0.0
    return 1.0 if int(got) == int(answer) else 0.0


def second_notation(line: str) -> str:
    """``line`` with its operators written as Chinese words: ``47*30=1200+210=1410`` -> ``47乘30=1200加210=1410``."""
    return line.replace("*", "乘").replace("+", "加")


class MultiplicationTask:
    """Products of a ``d1``-digit and a ``d2``-digit number."""

    name = "multiplication"

    def __init__(self, d1: int = 2, d2: int = 2, mixed_frac: float = 0.0):
        self.d1, self.d2, self.mixed_frac = d1, d2, mixed_frac

    def sample(self, rng: random.Random) -> Problem:
        a = rng.randint(10 ** (self.d1 - 1), 10 ** self.d1 - 1)
        b = rng.randint(10 ** (self.d2 - 1), 10 ** self.d2 - 1)
        # The key ignores the order of the factors: a held-out 47*38 keeps 38*47 out of training too.
        return Problem(f"{a}*{b}", str(a * b), (min(a, b), max(a, b)))

    def verify(self, completion: str, answer: str) -> float:
        return multiplication_verifier(completion, answer)

    def trace(self, problem: Problem, long: bool, rng: random.Random, mixed_frac: float | None = None) -> str:
        """The base-corpus completion for ``problem``: step by step if ``long``, else direct.

        Each step-by-step line is written in the second notation (module docstring) with probability
        ``mixed_frac`` (default: the task's); 0 gives the readable trace and draws nothing from ``rng``.

        The long style multiplies by one digit of ``b`` per line, split by the
        digits of ``a`` (``47*8=320+56=376``), then adds the partial products one
        place value at a time (``1410+300=1710``): every step is a one-digit
        product or a one-digit addition with at most one carry, which a
        1M-parameter model can learn in general rather than memorise per problem.
        """
        if not long:
            return f"<think>\n</think>\n<answer>{problem.answer}</answer>"
        a, b = map(int, problem.question.split("*"))
        lines, partials = [], []
        for i, digit in enumerate(reversed(str(b))):
            part = int(digit) * 10**i
            if part:
                # a*part split by the digits of a: one single-digit product per term
                terms = [int(x) * 10 ** (len(str(a)) - 1 - j) * part for j, x in enumerate(str(a))]
                terms = [t for t in terms if t]
                split = "+".join(map(str, terms)) + "=" if len(terms) > 1 else ""
                lines.append(f"{a}*{part}={split}{a * part}")
                partials.append(a * part)
        total = partials[-1]  # start from the largest partial product
        for part in reversed(partials[:-1]):
            for i, digit in enumerate(str(part)):
                step = int(digit) * 10 ** (len(str(part)) - 1 - i)
                if step:
                    lines.append(f"{total}+{step}={total + step}")
                    total += step
        mixed_frac = self.mixed_frac if mixed_frac is None else mixed_frac
        if mixed_frac > 0:
            lines = [second_notation(x) if rng.random() < mixed_frac else x for x in lines]
        return "<think>\n" + "\n".join(lines) + "\n</think>\n" + f"<answer>{a * b}</answer>"

    def reasons(self, completion: str) -> bool:
        """True if the thinking holds at least one worked step (``x*y=z``)."""
        return "=" in thinking(completion)
