"""Math accuracy reward: the final answer of a completion against a gold answer, built on math-verify.

Parsing and equivalence are math-verify's (``math_verify.parse`` / ``math_verify.verify``,
huggingface/Math-Verify 0.9.0, with latex2sympy2_extended); this module only decides *what*
is graded and corrects a few known mistakes of the library around it.

What is graded (never the prompt):

1. The final-answer region: the text after the last ``</think>``. A completion that opens
   ``<think>`` and never closes it is unfinished and scores 0 (``unfinished_thinking``); one
   without any think tag is graded whole (R1-distill templates open ``<think>`` in the prompt,
   so their completions hold only the closing tag).
2. In that region, the first marker found in this order: the last ``\\boxed{...}`` /
   ``\\fbox{...}`` / ``\\framebox{...}`` (nested braces handled, ``\\boxed 5`` too), else the
   content of the last ``<answer>...</answer>`` block, else (only with ``hash_marker=True``,
   the GSM8K convention) the text after the last ``#### ``. No marker: 0 (``no_final_answer``).
   A number merely written somewhere in the text is never graded: a reward that takes "the last
   number" rewards answers the model did not commit to.
3. The marker's text and the gold are both wrapped as ``\\boxed{...}`` before ``parse``: bare
   gold strings are misread by ``parse`` (``0,1`` becomes 0.1, ``1-\\frac{1}{e}`` becomes 1,
   ``\\dfrac{9}{7}`` and ``\\frac{1}{2004!}`` do not parse; Math-Verify issue #70). An answer
   written as ``$...$`` is unwrapped first; one that is prose with math in it (``<answer>The
   answer is $5$.</answer>``) is left to math-verify's own extraction. A gold that math-verify
   reads only as text (no sympy value) is compared as normalised text, exactly.

Outcomes (``Grade.reason``): ``correct``; ``wrong``; ``no_final_answer``, ``unfinished_thinking``
and ``unparseable_completion`` (0, counted); ``unparseable_gold`` (``correct`` is None: the
sample is skipped and counted, never rewarded; open-r1 issues #86/#293 rewarded 1.0 there).

Corrections around math-verify 0.9.0 (each has a test in tests/test_math_reward.py):

* ``\\fbox{7}`` is not extracted by ``parse`` (as in lm-evaluation-harness issue #3116):
  r1 extracts the box itself.
* Numbers that differ only far below 1e-6 compare equal (``1/2004!`` vs ``1/2006!``,
  ``1/2^99`` vs ``1/2^98``, Math-Verify issue #14; ``0.000001`` vs ``0.0000014`` by the 6-decimal
  float rounding): an accepted pair of numbers must also agree, at 30 digits, to a relative
  ``REL_TOL_EXACT`` = 1e-9, or ``REL_TOL_FLOAT`` = 5e-6 when one side is a float
  (``0.333333`` still equals ``1/3``).
* A sequence with ``\\ldots`` parses to one of its terms (``1, 2, \\ldots, n`` became 2 and
  matched ``1, 3, 5, \\ldots, 2n-1``; Math-Verify issue #14): such answers are compared as text,
  whitespace removed.
* An equation answer is reduced to its right-hand side when the gold is not an equation, so
  ``3x+4y+14=0`` matched gold ``0`` (Math-Verify issue #60): r1 takes the right-hand side only
  when the left-hand side is a single symbol (``x=5``) or holds no variable (``2+3=5``).
* Unit removal (latex2sympy2_extended's list holds ``t``, ``s``, ``c``, ``ab``, ...) also removes
  variables: gold ``4t`` parsed as 4 and ``2ab`` as 2 (so ``\\boxed{4}`` was right), and
  ``a + b + c`` as ``a +``. When an answer ends in one or two bare letters, r1 parses it without
  unit removal; units written as ``\\text{ cm}`` are still removed.
* A time of day is a ratio to math-verify (``8:34`` = ``4:17``; ``05:00`` is 5/0). A gold that
  is unambiguously a time (a.m./p.m., seconds or a zero-padded hour: ``8\\!:\\!34 \\text{ p.m.}``,
  ``05:00``) is compared as a time (``clock``); ``9:24`` stays a ratio.
* ``\\mathrm{e}`` truncates the parse (``1-\\frac{1}{\\mathrm{e}}`` parsed as ``1``): rewritten
  as ``e`` first. Thousands written ``1\\,000`` parsed as ``1*0``, and ``29,\\!322,\\!216`` inside
  a fraction did not parse: those separators are dropped. A trailing ``.``/``,`` (``30^\\circ.``,
  a MATH gold) is dropped.

Percentages: ``\\%`` (and ``%``) is stripped from both sides before parsing, as Hendrycks'
MATH grader does. So gold ``50\\%`` accepts ``50`` and ``50\\%``; it rejects ``0.5``, and gold
``0.5`` rejects ``50\\%``; gold ``3`` rejects ``300\\%`` (math-verify alone accepts those
conversions in both directions). The question fixes the unit; the answer must be in it.

Numbers: ``115,000`` = ``115000`` (comma followed by groups of three digits is a thousands
separator, math-verify's rule), while ``0,1`` is the set {0, 1}; ``033`` = ``33``,
``80.0`` = ``80``; a float answer matches to 6 decimals (math-verify's ``float_rounding``) and to
a relative 5e-6 (above).

Timeouts: math-verify bounds ``parse`` and ``verify`` with ``signal.alarm``, which only works in
the main thread (Math-Verify issues #50/#55). r1 passes 5 s timeouts in the main thread and
``None`` (no timeout) elsewhere, as TRL does (huggingface/trl PR #5281); a final answer longer
than ``MAX_ANSWER_CHARS`` is not parsed at all, which bounds the work without a timeout.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from typing import NamedTuple

import sympy
from latex2sympy2_extended import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

MAX_ANSWER_CHARS = 1000  # longer final answers are not parsed (a bound on work when no timeout applies)
TIMEOUT_SECONDS = 5  # math-verify's default, used in the main thread only (signal.alarm)
REL_TOL_EXACT = 1e-9  # two exact numbers accepted by math-verify must also agree to this relative difference
REL_TOL_FLOAT = 5e-6  # ... and when one is a float (0.333333 = 1/3 passes: 1e-6; 0.0000014 != 0.000001)

_BOX = re.compile(r"\\(?:boxed|fbox|framebox)\s*(\{)|\\boxed[ \t]+([^\s${}]+)")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_HASH = re.compile(r"####[ \t]*([^\n]*)")
_PERCENT = re.compile(r"\\?%")
_MATHRM_E = re.compile(r"\\(?:mathrm|text|operatorname)\{e\}")
_THOUSANDS = re.compile(r"(?<=\d)(?:\\[,!;: ]\s*|,\\!|\{,\})(?=\d{3}(?!\d))")  # 1\,000  29,\!322  20{,}000
_TRAILING = re.compile(r"[\s.,;]+$")
_BARE_LETTERS_END = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{1,2}\s*$")  # "4t", "2ab", "a + b + c"; not "\pi", "\text{ m}"
_DELIMITED = re.compile(r"^\s*(?:\$\$?([^$]*?)\$\$?|\\\((.*?)\\\)|\\\[(.*?)\\\])\s*[.,;]?\s*$", re.DOTALL)
_DOTS = re.compile(r"\\(?:[lc]?dots|ldotp)(?![A-Za-z])|\.\.\.")
_CLOCK_STRIP = re.compile(r"\\(?:text|mbox|mathrm|textrm)\s*\{|\\[!, ]|[{}\s.]")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?([ap]m)?")
_MATH_ENV = re.compile(r"(?<!\\)\$|\\\(|\\\[")
_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
_CONFIG_NO_UNITS = [LatexExtractionConfig(boxed_match_priority=0, normalization_config=NormalizationConfig(
    basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False)),
    ExprExtractionConfig()]  # the default LatexExtractionConfig normalisation, less unit removal

REASONS = ("correct", "wrong", "no_final_answer", "unfinished_thinking", "unparseable_completion", "unparseable_gold")


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one completion.

    correct: True / False, or None when the gold answer cannot be parsed (skip the sample).
    reason: one of ``REASONS``.
    extracted: the final-answer text that was graded (None when there was none).
    """

    correct: bool | None
    reason: str
    extracted: str | None = None

    @property
    def reward(self) -> float | None:
        """1.0 / 0.0, or None for an unparseable gold answer."""
        return None if self.correct is None else float(self.correct)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{}``, ``\\fbox{}`` or ``\\framebox{}`` in ``text`` (or ``\\boxed x``).

    Braces nest (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); escaped braces ``\\{ \\}``
    do not count. A box that never closes is ignored. None when there is no box.
    """
    found = None
    for m in _BOX.finditer(text):
        if m.group(2) is not None:  # \boxed 5
            found = m.group(2)
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "\\":
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[m.end():i - 1]
    return found


def final_answer(completion: str, hash_marker: bool = False) -> tuple[str | None, str]:
    """The final-answer text of ``completion`` and why it is missing: ``(text, "")`` or ``(None, reason)``.

    Region: after the last ``</think>``; an unclosed ``<think>`` is unfinished. Marker order:
    last box, else last ``<answer>`` block, else (``hash_marker``) the text after the last ``####``.
    """
    if "</think>" in completion:
        region = completion.rsplit("</think>", 1)[1]
    elif "<think>" in completion:
        return None, "unfinished_thinking"
    else:
        region = completion
    boxed = last_boxed(region)
    if boxed is not None:
        return boxed, ""
    blocks = _ANSWER.findall(region)
    if blocks:
        inner = last_boxed(blocks[-1])
        return (inner if inner is not None else blocks[-1]), ""
    if hash_marker:
        marks = _HASH.findall(region)
        if marks:
            return marks[-1], ""
    return None, "no_final_answer"


def _clean(answer: str) -> str:
    """Rewrites applied to both sides before ``parse`` (see the module docstring)."""
    answer = answer.strip()
    m = _DELIMITED.match(answer)  # "<answer>$\frac12$</answer>": the box replaces the math delimiters
    if m:
        answer = next(g for g in m.groups() if g is not None).strip()
    answer = _PERCENT.sub("", answer)
    answer = _MATHRM_E.sub("e", answer)
    answer = _THOUSANDS.sub("", answer)
    return _TRAILING.sub("", answer)  # "30^\circ." and "\text{(E)}," end sentences in MATH answers


def _timeout() -> int | None:
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _parse(answer: str) -> list:
    """math-verify's parse of ``\\boxed{answer}``: sympy values first, then the normalised string.

    An answer that still holds math delimiters after cleaning is prose with math in it
    (``The answer is $5$.``): math-verify's own extraction reads it as it is.
    """
    if len(answer) > MAX_ANSWER_CHARS:
        return []
    answer = _clean(answer)
    if _DOTS.search(answer):  # a sequence: math-verify reads "1, 2, \ldots, n" as 2 (Math-Verify #14)
        return ["".join(answer.split())]
    text = answer if _MATH_ENV.search(answer) else "\\boxed{" + answer + "}"
    config = _CONFIG_NO_UNITS if _BARE_LETTERS_END.search(answer) else _CONFIG
    return parse(text, extraction_config=config, parsing_timeout=_timeout())


class Clock(NamedTuple):
    """A time of day: ``8:34 p.m.`` is ``Clock(8, 34, 0, "pm")``; math-verify reads ``8:34`` as the ratio 4/17."""

    hour: int
    minute: int
    second: int
    meridiem: str  # "am", "pm" or ""


def clock(answer: str) -> Clock | None:
    """``answer`` as a time of day (``5:00``, ``05\\!:\\!00``, ``\\text{4:30 p.m.}``, ``4:51:06 PM``), else None."""
    m = _CLOCK.fullmatch(_CLOCK_STRIP.sub("", answer).lower())
    if not m or int(m[1]) > 24 or int(m[2]) > 59 or int(m[3] or 0) > 59:
        return None
    return Clock(int(m[1]), int(m[2]), int(m[3] or 0), m[4] or "")


def _is_clock_gold(text: str) -> Clock | None:
    """A gold that is unambiguously a time (a.m./p.m., seconds, or a zero-padded hour), not a ratio like ``9:24``."""
    c = clock(text)
    return c if c and (c.meridiem or c.second or re.match(r"\D*0\d", text)) else None


def _same_time(gold: Clock, pred: Clock | None) -> bool:
    """Same time of day; a side without a.m./p.m. is read on a 24-hour clock when its hour is over 12."""
    if pred is None or (gold.minute, gold.second) != (pred.minute, pred.second):
        return False

    def h24(c: Clock) -> int:
        return c.hour % 12 + (12 if c.meridiem == "pm" else 0) if c.meridiem else c.hour

    if gold.meridiem and pred.meridiem or not gold.meridiem and not pred.meridiem:
        return h24(gold) == h24(pred)
    bare, stated = (pred, gold) if gold.meridiem else (gold, pred)
    return h24(stated) == bare.hour if bare.hour > 12 else h24(stated) % 12 == bare.hour % 12


@functools.lru_cache(maxsize=65536)
def parse_gold(gold: str) -> tuple | None:
    """The parsed gold answer (cached), or None when it cannot be parsed (empty, or nothing math-verify can read).

    ``gold`` may itself hold a ``\\boxed{}`` (its last box is used).
    """
    text = str(gold)
    boxed = last_boxed(text)
    text = boxed if boxed is not None else text
    if not text.strip():
        return None
    time = _is_clock_gold(text)
    if time:
        return (time,)
    parsed = _parse(text)
    return tuple(parsed) if parsed else None


def _is_equation(v) -> bool:
    return isinstance(v, sympy.Eq)


def _numbers(a, b) -> bool:
    return all(isinstance(v, sympy.Expr) and v.is_number for v in (a, b))


def _vetoed(g, p) -> bool:
    """True when math-verify accepted ``p`` for ``g`` for a reason r1 does not accept (see the module docstring)."""
    if _is_equation(p) and not _is_equation(g):
        lhs = p.lhs
        if not isinstance(lhs, sympy.Symbol) and lhs.free_symbols:  # 3x+4y+14=0 is not "0" (Math-Verify #60)
            return True
        p = p.rhs
    if _numbers(g, p):  # 1/2004! vs 1/2006! (Math-Verify #14); 0.000001 vs 0.0000014 (6-decimal rounding)
        floats = g.has(sympy.Float) or p.has(sympy.Float)
        try:
            gv, pv = sympy.N(g, 30), sympy.N(p, 30)
            scale = max(abs(gv), abs(pv))
            return bool(scale != 0 and abs(gv - pv) > sympy.Float(REL_TOL_FLOAT if floats else REL_TOL_EXACT) * scale)
        except (TypeError, ValueError, ArithmeticError):
            return False
    return False


def _equal(gold: tuple, pred: list) -> bool:
    """math-verify's ``verify`` over every (gold, prediction) pair, less the vetoed acceptances."""
    timeout = _timeout()
    for g in gold:
        for p in pred:
            if type(g) is str or type(p) is str:  # math-verify compares strings only with strings, exactly
                if type(g) is type(p) and verify(g, p, timeout_seconds=timeout):
                    return True
                continue
            if verify(g, p, timeout_seconds=timeout) and not _vetoed(g, p):
                return True
    return False


def grade(completion: str, gold: str, hash_marker: bool = False) -> Grade:
    """Grade the final answer of ``completion`` against ``gold`` (rules in the module docstring).

    Args:
        completion: the decoded completion (no prompt).
        gold: the gold answer, LaTeX or plain (``"72"``, ``"\\frac{1}{2}"``, ``"\\boxed{5}"``).
        hash_marker: also accept ``#### 72`` as the final-answer marker (GSM8K's own format).
    """
    gold_parsed = parse_gold(gold)
    if gold_parsed is None:
        return Grade(None, "unparseable_gold")
    answer, why = final_answer(completion, hash_marker)
    if answer is None:
        return Grade(False, why)
    if isinstance(gold_parsed[0], Clock):  # times of day: compared as times, not as ratios
        ok = _same_time(gold_parsed[0], clock(answer))
        return Grade(ok, "correct" if ok else "wrong", answer)
    pred = _parse(answer)
    if not pred:
        return Grade(False, "unparseable_completion", answer)
    ok = _equal(gold_parsed, pred)
    return Grade(ok, "correct" if ok else "wrong", answer)


def math_accuracy(completion: str, gold: str, hash_marker: bool = False) -> float | None:
    """1.0 if the final answer of ``completion`` equals ``gold``, 0.0 if not, None if ``gold`` cannot be parsed."""
    return grade(completion, gold, hash_marker).reward
