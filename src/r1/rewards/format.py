"""Format reward and answer extraction for the ``<think>…</think><answer>…</answer>`` layout.

R1-Zero's format reward (DeepSeek-R1, arXiv 2501.12948, §2.2.2) asks the model to put
its reasoning between ``<think>`` and ``</think>`` and its answer between
``<answer>`` and ``</answer>``. Here a completion earns 1.0 when it is exactly one
think block followed by exactly one answer block, with only whitespace between,
before and after them (newlines inside the tags are fine), else 0.0.
"""

from __future__ import annotations

import re

from r1.models.tokenizer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

_LAYOUT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def format_reward(completion: str) -> float:
    """1.0 if ``completion`` is one ``<think>`` block then one ``<answer>`` block, else 0.0.

    ``completion`` is the decoded text without the end-of-sequence token.
    """
    if any(completion.count(tag) != 1 for tag in _TAGS):
        return 0.0
    return 1.0 if _LAYOUT.fullmatch(completion) else 0.0


def extract_answer(completion: str) -> str | None:
    """The text of the last ``<answer>`` block after ``</think>``, stripped; None if there is none.

    Only text after the (last) ``</think>`` is read, so an answer written inside
    the reasoning is never graded.
    """
    tail = completion.rsplit(THINK_CLOSE, 1)[-1] if THINK_CLOSE in completion else completion
    found = _ANSWER.findall(tail)
    return found[-1].strip() if found else None


def thinking(completion: str) -> str:
    """The text inside the first ``<think>`` block ('' if there is none)."""
    m = re.search(r"<think>(.*?)</think>", completion, re.DOTALL)
    return m.group(1) if m else ""
