"""Verifiers and the format reward on tables of hand-made cases."""

import pytest

from r1.rewards.format import extract_answer, format_reward
from r1.tasks.countdown import countdown_verifier
from r1.tasks.multiplication import multiplication_verifier


def wrap(answer: str, think: str = "3+5=8") -> str:
    return f"<think>\n{think}\n</think>\n<answer>{answer}</answer>"


NUMS, TARGET = [3, 5, 4], 23


@pytest.mark.parametrize("completion, expected", [
    (wrap("(5*4)+3"), 1.0),                  # right
    (wrap("5*4+3"), 1.0),                    # right, precedence without parentheses
    (wrap(" 3 + 4*5 "), 1.0),                # right, spaces and another order
    (wrap("(5+4)+3"), 0.0),                  # wrong value (12)
    (wrap("5*4+3+3"), 0.0),                  # a number used twice
    (wrap("5*4+3-4+4"), 0.0),                # extra uses of a given number
    (wrap("5*4"), 0.0),                      # a number missing
    (wrap("5*4+3+0"), 0.0),                  # an extra number not given
    (wrap("(5*4+3)*(4-4)/(5-5)"), 0.0),      # division by zero
    (wrap("3/(4-4)+5"), 0.0),                # division by zero with the right multiset
    (wrap("23"), 0.0),                       # the target itself, numbers unused
    (wrap("-3+5*4+6"), 0.0),                 # unary minus
    (wrap("__import__('os')"), 0.0),         # garbage / code
    (wrap("5**4"), 0.0),                     # operator not allowed
    (wrap("(5*4)+3="), 0.0),                 # syntax error
    (wrap(""), 0.0),                         # empty answer
    ("", 0.0),                               # empty completion
    ("<think>\n(5*4)+3\n</think>", 0.0),     # answer only inside think, no answer block
    (wrap("(5*4)+3", think="") + "\n<answer>1</answer>", 0.0),  # the last answer block counts
])
def test_countdown_verifier(completion, expected):
    assert countdown_verifier(completion, NUMS, TARGET) == expected


def test_countdown_exact_fractions():
    # 7/2*4 = 14 exactly with rationals; 7//2*4 would be 12.
    assert countdown_verifier(wrap("7/2*4"), [7, 2, 4], 14) == 1.0
    assert countdown_verifier(wrap("(7/2)*4"), [7, 2, 4], 12) == 0.0


@pytest.mark.parametrize("completion, expected", [
    (wrap("1786"), 1.0),                     # right
    (wrap(" 1786\n"), 1.0),                  # whitespace around is fine
    (wrap("1787"), 0.0),                     # wrong value
    (wrap("01786"), 1.0),                    # leading zero: still the integer 1786
    (wrap("1,786"), 0.0),                    # separators are not digits-only
    (wrap("1786.0"), 0.0),                   # not an integer literal
    (wrap("47*38"), 0.0),                    # an expression, not the product
    (wrap("1786 1786"), 0.0),                # two numbers
    (wrap("abc"), 0.0),                      # garbage
    (wrap(""), 0.0),                         # empty answer
    ("", 0.0),                               # empty completion
    ("<think>\n<answer>1786</answer>\n</think>\n<answer>12</answer>", 0.0),  # right answer only inside think
    ("<think>\n</think>\n1786", 0.0),        # no answer block
])
def test_multiplication_verifier(completion, expected):
    assert multiplication_verifier(completion, "1786") == expected


@pytest.mark.parametrize("completion, expected", [
    ("<think>\na\n</think>\n<answer>1</answer>", 1.0),           # canonical
    ("<think>a</think><answer>1</answer>", 1.0),                 # no whitespace
    ("<think>\nline 1\nline 2\n</think>\n<answer>\n1\n</answer>\n", 1.0),  # newlines inside tags, trailing newline
    ("<think>\n</think>\n<answer>1</answer>", 1.0),              # empty thinking is still the format
    ("<think>a</think><think>b</think><answer>1</answer>", 0.0),  # two think blocks
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # two answer blocks
    ("<think>a<answer>1</answer>", 0.0),                         # missing </think>
    ("<think>a</think><answer>1", 0.0),                          # missing </answer>
    ("<think>a</think><answer>1</answer> more text", 0.0),       # text after </answer>
    ("hello <think>a</think><answer>1</answer>", 0.0),           # text before <think>
    ("<answer>1</answer><think>a</think>", 0.0),                 # wrong order
    ("<think>a</think> note <answer>1</answer>", 0.0),           # text between the blocks
    ("", 0.0),                                                   # empty
])
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


def test_extract_answer_reads_after_think_only():
    assert extract_answer("<think><answer>5</answer></think><answer>7</answer>") == "7"
    assert extract_answer("<think><answer>5</answer></think>") is None
    assert extract_answer("no tags") is None
