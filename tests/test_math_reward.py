"""The math accuracy reward (r1/rewards/math.py) on a table of cases, most from public bug reports."""

import threading
from importlib.metadata import version

import pytest
from math_verify import parse, verify

from r1.rewards.math import Grade, final_answer, grade, last_boxed, math_accuracy, parse_gold


def done(answer: str, think: str = "some work") -> str:
    """A finished completion whose final region is ``answer``."""
    return f"<think>\n{think}\n</think>\n{answer}"


@pytest.mark.parametrize("completion, gold, expected", [
    # --- required by issue 4 (sources in the module docstring) ---
    (done(r"\boxed{\frac{1}{2}}"), "0.5", 1.0),
    (done(r"\fbox{7}"), "7", 1.0),                                   # \fbox is not extracted by parse alone
    (done(r"\boxed{115,000}"), "115000", 1.0),                       # thousands separator
    (done("<answer>115,000</answer>"), "115000", 1.0),
    (done(r"\boxed{115000}"), "115,000", 1.0),
    (done(r"\boxed{1}"), "0,1", 0.0),                                # gold is the set {0, 1}, not 0.1
    (done(r"\boxed{0,1}"), "0,1", 1.0),
    (done(r"\boxed{1+\frac{1}{e}}"), r"1-\frac{1}{e}", 0.0),         # bare gold parsed as 1 (Math-Verify #14)
    (done(r"\boxed{1-\frac{1}{e}}"), r"1-\frac{1}{e}", 1.0),
    (done(r"\boxed{\frac{1}{2006!}}"), r"\frac{1}{2004!}", 0.0),     # tiny values (Math-Verify #14)
    (done(r"\boxed{\frac{1}{2004!}}"), r"\frac{1}{2004!}", 1.0),
    (done(r"\boxed{300}"), "3", 0.0),
    (done(r"\boxed{\text{(B)}}"), "B", 1.0),                         # multiple-choice letter variants
    (done(r"\boxed{B}"), r"\text{(B)}", 1.0),
    (done(r"\boxed{\textbf{(B)}}"), r"\text{(B)}", 1.0),
    (done(r"\boxed{\text{(C)}}"), r"\text{(B)}", 0.0),
    (done(r"\boxed{5\text{ cm}}"), "5", 1.0),                        # units
    (done(r"\boxed{18 \text{ dollars}}"), "18", 1.0),
    (done(r"\boxed{\$18}"), "18", 1.0),
    (done(r"\boxed{30^\circ}"), "30", 1.0),                          # degrees
    (done(r"\boxed{30}"), r"30^\circ", 1.0),
    (done(r"\boxed{\dfrac{9}{7}}"), r"\frac{9}{7}", 1.0),            # \dfrac (bare gold \dfrac: Math-Verify #70)
    (done(r"\boxed{\frac{9}{7}}"), r"\dfrac{9}{7}", 1.0),
    (done(r"\boxed{\left( 3, \frac{\pi}{2} \right)}"), r"(3,\frac{\pi}{2})", 1.0),  # \left( ... \right)
    (done(r"\boxed{(3, \frac{\pi}{2})}"), r"\left( 3, \frac{\pi}{2} \right)", 1.0),
    (done(r"\boxed{(3, \frac{\pi}{3})}"), r"\left( 3, \frac{\pi}{2} \right)", 0.0),
    (r"<think>the answer is \boxed{5}</think>\n\boxed{6}", "5", 0.0),   # right only inside <think>
    ("<think><answer>5</answer></think>\n<answer>6</answer>", "5", 0.0),
    # --- percentages: "\%" is dropped on both sides (module docstring) ---
    (done(r"\boxed{50}"), r"50\%", 1.0),
    (done(r"\boxed{50\%}"), r"50\%", 1.0),
    (done(r"\boxed{50\%}"), "50", 1.0),
    (done(r"\boxed{0.5}"), r"50\%", 0.0),
    (done(r"\boxed{50\%}"), "0.5", 0.0),
    (done(r"\boxed{300\%}"), "3", 0.0),
    # --- other corrections around math-verify 0.9.0 ---
    (done(r"\boxed{3x+4y+14=0}"), "0", 0.0),                         # equation reduced to its rhs (Math-Verify #60)
    (done(r"\boxed{x=5}"), "5", 1.0),                                # an assignment still counts
    (done(r"\boxed{\frac{1}{2^{98}}}"), r"\frac{1}{2^{99}}", 0.0),   # Math-Verify #14
    (done(r"\boxed{\frac{2^{2005}+1}{3 \cdot 2^{2006}}}"), r"\frac{1}{3 \cdot 2^{2006}}", 0.0),
    (done(r"\boxed{1+\frac{1}{\mathrm{e}}}"), r"1-\frac{1}{\mathrm{e}}", 0.0),  # \mathrm{e} truncated the parse
    (done(r"\boxed{1-\frac{1}{\mathrm{e}}}"), r"1-\frac{1}{e}", 1.0),
    (done(r"\boxed{1\,000}"), "1000", 1.0),                          # thin-space thousands parsed as 1*0
    (done(r"\boxed{1\,000}"), "0", 0.0),
    (done(r"\boxed{1:00}"), "12:00", 0.0),                           # both parse to zoo (Math-Verify #14)
    (done(r"\boxed{12:00}"), "12:00", 1.0),
    (done(r"\boxed{4}"), "4t", 0.0),                                # unit removal ate the variable t (4t -> 4)
    (done(r"\boxed{4t}"), "4t", 1.0),
    (done(r"\boxed{2}"), "2ab", 0.0),                               # ... and "ab"
    (done(r"\boxed{a+b+c}"), "a + b + c", 1.0),                     # ... and " c": gold read as "a +"
    (done(r"\boxed{\sin^2 t}"), r"\sin^2 t", 1.0),
    (done(r"\boxed{\frac{1}{29322216}}"), r"\dfrac{1}{29,\!322,\!216}", 1.0),  # thousands inside a fraction
    (done(r"\boxed{30^\circ}"), r"30^\circ.", 1.0),                 # a MATH gold that ends a sentence
    (done(r"\boxed{E}"), r"\text{(E)},", 1.0),
    # --- times of day (math-verify reads "8:34" as the ratio 4/17) ---
    (done(r"\boxed{4:17}"), r"8\!:\!34 \text{ p.m.}", 0.0),
    (done(r"\boxed{8:34 \text{ PM}}"), r"8\!:\!34 \text{ p.m.}", 1.0),
    (done(r"\boxed{20:34}"), r"8\!:\!34 \text{ p.m.}", 1.0),
    (done(r"\boxed{8:34 a.m.}"), r"8\!:\!34 \text{ p.m.}", 0.0),
    (done(r"\boxed{4:30 \text{ p.m.}}"), r"\text{4:30 p.m.}", 1.0),
    (done(r"\boxed{5:00}"), r"05\!:\!00", 1.0),
    (done(r"\boxed{17:00}"), r"05\!:\!00", 0.0),
    (done(r"\boxed{4:51 p.m.}"), r"4\!:\!51\!:\!06 \text{ p.m.}", 0.0),
    (done(r"\boxed{3:8}"), "9:24", 1.0),                             # no a.m./p.m., no zero pad: a ratio
    # --- numbers ---
    (done(r"\boxed{033}"), "33", 1.0),
    (done(r"\boxed{80}"), "80.0", 1.0),
    (done(r"\boxed{0.333333}"), r"\frac{1}{3}", 1.0),                # floats match to 6 decimals
    (done(r"\boxed{0.33}"), r"\frac{1}{3}", 0.0),
    (done(r"\boxed{1.414214}"), r"\sqrt{2}", 1.0),
    (done(r"\boxed{0.0000014}"), "0.000001", 0.0),                    # 6-decimal rounding alone accepts this
    (done(r"\boxed{0.0000001}"), "0", 0.0),
    (done(r"\boxed{1, 3, 5, \ldots, 2n-1}"), r"1, 2, \ldots, n", 0.0),  # parsed as one term (Math-Verify #14)
    (done(r"\boxed{1,2,\ldots,n}"), r"1, 2, \ldots, n", 1.0),        # compared as text, spaces removed
    (done(r"\boxed{-7}"), "7", 0.0),
    (done(r"\boxed{2\sqrt{3}}"), r"\sqrt{12}", 1.0),
    (done(r"\boxed{\pm 2}"), "2", 0.0),
    (done(r"\boxed{(-\infty, 3]}"), r"(-\infty,3]", 1.0),
    (done(r"\boxed{(-\infty, 3)}"), r"(-\infty,3]", 0.0),
    # --- where the final answer is read ---
    (done("<answer>$\\frac{1}{2}$</answer>"), "1/2", 1.0),
    (done("<answer>The answer is $5$.</answer>"), "5", 1.0),
    (done(r"<answer>so \boxed{5}</answer>"), "5", 1.0),
    (done(r"\boxed{5} then \boxed{6}"), "6", 1.0),                   # the last box counts
    (done(r"\boxed{5} then \boxed{6}"), "5", 0.0),
    (done(r"\boxed{\frac{\sqrt{3}}{2}}"), r"\frac{\sqrt3}{2}", 1.0),  # nested braces
    (r"\boxed{5}", "5", 1.0),                                        # no think tags: the whole text is graded
    ("reasoning only</think> \\boxed{5}", "5", 1.0),                 # R1-distill: <think> opened by the template
    ("<think>unfinished \\boxed{5}", "5", 0.0),
    (done("5"), "5", 0.0),                                           # no final-answer marker
    (done("The answer is 5."), "5", 0.0),
    (done("#### 5"), "5", 0.0),                                      # only with hash_marker (GSM8K)
    (done(r"\boxed{}"), "5", 0.0),
    (done(r"\boxed{5"), "5", 0.0),                                   # box never closed
    ("", "5", 0.0),
])
def test_math_accuracy(completion, gold, expected):
    assert math_accuracy(completion, gold) == expected


@pytest.mark.parametrize("gold", ["", "   ", r"\boxed{}", r"\text{}", "}"])
def test_unparseable_gold_is_none_never_rewarded(gold):
    g = grade(done(r"\boxed{5}"), gold)
    assert g == Grade(None, "unparseable_gold") and g.reward is None
    assert math_accuracy(done(r"\boxed{5}"), gold) is None


@pytest.mark.parametrize("completion, reason, extracted", [
    (done(r"\boxed{5}"), "correct", "5"),
    (done(r"\boxed{6}"), "wrong", "6"),
    (done("5"), "no_final_answer", None),
    ("<think>\\boxed{5}", "unfinished_thinking", None),
    (done(r"\boxed{}"), "unparseable_completion", ""),
    (done("<answer>" + "1+" * 600 + "1</answer>"), "unparseable_completion", "1+" * 600 + "1"),  # over MAX_ANSWER_CHARS
])
def test_grade_reasons(completion, reason, extracted):
    g = grade(completion, "5")
    assert (g.reason, g.extracted) == (reason, extracted)
    assert g.correct is (reason == "correct")


def test_hash_marker_for_gsm8k():
    gsm = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nSo 48+24 = <<48+24=72>>72.\n#### 72"
    assert math_accuracy(gsm, "72", hash_marker=True) == 1.0
    assert math_accuracy(gsm, "73", hash_marker=True) == 0.0
    assert math_accuracy(gsm.replace("72", "1,000"), "1000", hash_marker=True) == 1.0
    assert math_accuracy(done(r"\boxed{72}") + "\n#### 5", "72", hash_marker=True) == 1.0  # a box comes first
    assert math_accuracy(gsm, "72") == 0.0  # not a marker elsewhere


def test_last_boxed_and_final_answer():
    assert last_boxed(r"a \boxed{\frac{1}{2}} b \fbox{\{1, 2\}} c") == r"\{1, 2\}"
    assert last_boxed(r"so $x = \boxed 9$.") == "9"
    assert last_boxed(r"\framebox{204} minutes") == "204"
    assert last_boxed("nothing") is None
    assert final_answer("<think>\\boxed{1}</think><answer>2</answer>") == ("2", "")
    assert final_answer("x</think>y") == (None, "no_final_answer")


def test_gold_parse_is_cached():
    parse_gold.cache_clear()
    for _ in range(3):
        grade(done(r"\boxed{5}"), r"\frac{10}{2}")
    info = parse_gold.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_grades_outside_the_main_thread():
    # math-verify's signal-based timeout only works in the main thread (Math-Verify #50/#55); r1 turns it off there.
    out = []
    worker = threading.Thread(target=lambda: out.append(math_accuracy(done(r"\boxed{\frac{1}{2}}"), "0.5")))
    worker.start()
    worker.join()
    assert out == [1.0]


ONLY_090 = pytest.mark.skipif(version("math-verify") != "0.9.0", reason="documents math-verify 0.9.0 itself")


@ONLY_090
@pytest.mark.parametrize("gold, pred", [
    (r"\boxed{\frac{1}{2004!}}", r"\boxed{\frac{1}{2006!}}"),
    (r"\boxed{\frac{1}{2^{99}}}", r"\boxed{\frac{1}{2^{98}}}"),
    (r"\boxed{0}", r"\boxed{3x+4y+14=0}"),
    (r"\boxed{3}", r"\boxed{300\%}"),
    (r"\boxed{0}", r"\boxed{1\,000}"),
    (r"\boxed{4}", r"\boxed{4t}"),
    (r"\boxed{2}", r"\boxed{2ab}"),
    (r"\boxed{0.000001}", r"\boxed{0.0000014}"),
    (r"$1, 2, \ldots, n$", r"$1, 3, 5, \ldots, 2n-1$"),
    (r"\boxed{8\!:\!34 \text{ p.m.}}", r"\boxed{4:17}"),
])
def test_math_verify_alone_accepts_these_wrong_answers(gold, pred):
    # Why r1 corrects around the library: math-verify 0.9.0 alone accepts each pair, r1 rejects it.
    assert verify(parse(gold), parse(pred))
    assert math_accuracy(done(pred), gold) == 0.0


@ONLY_090
def test_math_verify_alone_misreads_bare_gold_and_fbox():
    # Why r1 boxes the gold and extracts boxes itself (Math-Verify #70; lm-evaluation-harness #3116).
    assert parse("0,1")[0] == 0.1 and parse(r"1-\frac{1}{e}")[0] == 1
    assert parse(r"\dfrac{9}{7}") == [] and parse(r"\fbox{7}") == []
    assert parse(r"\boxed{1-\frac{1}{\mathrm{e}}}") == ["1-\\frac{1}{"]  # \mathrm{e} truncates the parse
    assert parse(r"\boxed{a + b + c}") == ["a +"]  # " c" removed as a unit
