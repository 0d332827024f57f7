"""Math tasks (r1/tasks/math.py): reference files, gold-answer rules, field mapping, the task interface."""

import json
import math
import random
from types import SimpleNamespace

import pytest

from r1.rewards.format import format_reward
from r1.tasks import make_task
from r1.tasks.math import Fields, MathTask, data_dir, gold_answer, load_problems, read_rows, thinking_text

DATA = data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="the shared reference data folder (shared/data) is not here")


@needs_data
@pytest.mark.parametrize("task, path, count, golds", [
    ("gsm8k", "gsm8k/train.jsonl", 7473, {0: "72", 1: "10", 2: "5"}),
    ("gsm8k", "gsm8k/test.jsonl", 1319, {0: "18", 1: "3", 2: "70000"}),   # "#### 70000"
    ("math", "math/train.jsonl", 12000, {0: "0"}),
    ("math", "math500/test.jsonl", 500, {0: r"\left( 3, \frac{\pi}{2} \right)", 4: r"\text{Evelyn}", 7: r"90^\circ"}),
    ("aime", "aime/aime24.jsonl", 30, {0: "204", 7: "25"}),               # "025" compares as 25
    ("aime", "aime/aime25.jsonl", 30, {0: "70", 29: "240"}),              # int answers in the file
    ("amc", "amc/amc23.jsonl", 40, {0: "27", 1: "36", 3: "3159"}),        # float answers (27.0) in the file
])
def test_reference_files_load_with_counts_and_golds(task, path, count, golds):
    problems = load_problems(DATA / path, task)
    assert len(problems) == count
    assert {i: problems[i].answer for i in golds} == golds
    assert all(p.question and p.key == ("text", " ".join(p.question.split())) for p in problems)


@needs_data
def test_default_splits_and_trace_is_verified():
    task = MathTask("gsm8k")
    assert (len(task.train_problems), len(task.test_problems)) == (7473, 1319)
    first = task.train_problems[0]
    assert first.solution.endswith("72 clips altogether in April and May.") and "####" not in first.solution
    math_task = MathTask("math")
    assert (len(math_task.train_problems), len(math_task.test_problems)) == (12000, 500)
    assert math_task.skipped == 2  # two MATH solutions box nothing: "\boxed{}" (never sampled for training)
    assert not {p.key for p in math_task.train_problems} & {p.key for p in math_task.test_problems}
    rng = random.Random(0)
    for t in (task, math_task):
        for _ in range(20):
            p = t.sample(rng)
            for long in (True, False):
                trace = t.trace(p, long, rng)
                assert t.verify(trace, p.answer) == 1.0 and format_reward(trace) == 1.0 and t.reasons(trace) == long
    assert [MathTask("aime").sample(random.Random(3)).question] == [MathTask("aime").sample(random.Random(3)).question]
    assert len(MathTask("amc").test_problems) == 40 and MathTask("aime").train_file.endswith("math/train.jsonl")


@pytest.mark.parametrize("task, answer, solution, gold", [
    ("gsm8k", "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "", "72"),
    ("gsm8k", "so\n#### 1,000", "", "1000"),
    ("gsm8k", "72", "", "72"),                      # a bare number (HF variants of the data)
    ("gsm8k", "#### -3", "", "-3"),
    ("gsm8k", "the answer is seventy", "", ""),     # not a number: unparseable gold, skipped
    ("math", r"\frac{1}{2}", r"... \boxed{0.5}", r"\frac{1}{2}"),   # the answer field wins
    ("math", "", r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),  # else the last box of the solution
    ("math", None, "no box", ""),
    ("aime", "033", "", "33"),
    ("aime", 70, "", "70"),
    ("amc", 27.0, "", "27"),
    ("amc", "80.0", "", "80"),
    ("amc", "-1.50", "", "-1.5"),
    ("amc", r"\frac{1}{2}", "", r"\frac{1}{2}"),   # not a plain number: kept as written
])
def test_gold_answer_rules(task, answer, solution, gold):
    assert gold_answer(task, answer, solution) == gold


def test_numbers_compare_as_numbers():
    aime = MathTask("aime", "unused.jsonl", "unused.jsonl")
    assert aime.verify(r"<think>x</think> \boxed{033}", aime.gold("33")) == 1.0
    assert aime.verify(r"<think>x</think> \boxed{33}", aime.gold("033")) == 1.0
    assert aime.verify(r"<think>x</think> \boxed{80}", aime.gold(80.0)) == 1.0
    assert aime.verify(r"<think>x</think> \boxed{80.0}", aime.gold("80")) == 1.0
    assert aime.verify(r"<think>x</think> \boxed{81}", aime.gold("80")) == 0.0


def test_verify_is_nan_for_unparseable_gold_and_grade_counts_it():
    task = MathTask("math", "unused.jsonl", "unused.jsonl")
    assert math.isnan(task.verify(r"<think>x</think> \boxed{5}", ""))
    assert task.grade(r"<think>x</think> \boxed{5}", "").reason == "unparseable_gold"
    gsm = MathTask("gsm8k", "unused.jsonl", "unused.jsonl")
    assert gsm.verify("48+24 = 72\n#### 72", "72") == 1.0  # GSM8K's own marker is read by the gsm8k task only
    assert task.verify("48+24 = 72\n#### 72", "72") == 0.0


@pytest.mark.parametrize("completion, text, reasons", [
    ("<think>\nwork\n</think>\n<answer>1</answer>", "\nwork\n", True),
    ("<think>\n</think>\n<answer>1</answer>", "\n", False),
    ("step one</think> \\boxed{1}", "step one", True),      # R1-distill: <think> is in the prompt
    ("<think>still going", "still going", True),
    ("\\boxed{1}", "", False),
])
def test_thinking_and_reasons(completion, text, reasons):
    assert thinking_text(completion) == text
    assert MathTask("math", "x.jsonl", "x.jsonl").reasons(completion) is reasons


def _user_rows():
    return [{"q": "What is 1+1?", "a": "#### 2", "extra": 1}, {"q": "What is 2*3?", "a": "6", "extra": 2}]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_user_files_with_field_mapping(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    rows = _user_rows()
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import datasets
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    problems = load_problems(path, "gsm8k", Fields("q", "a"))
    assert [(p.question, p.answer) for p in problems] == [("What is 1+1?", "2"), ("What is 2*3?", "6")]
    assert read_rows(path)[1]["extra"] == 2
    with pytest.raises(ValueError, match=r"no field 'question' for the question \(fields: q, a, extra\)"):
        load_problems(path, "gsm8k")


def test_bad_files_fail_with_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="file not found"):
        read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="expected a .jsonl, .json or .parquet file"):
        read_rows(tmp_path / "data.csv")
    (tmp_path / "bad.jsonl").write_text('{"question": "x"\n')
    with pytest.raises(ValueError, match="cannot read as json") as err:
        read_rows(tmp_path / "bad.jsonl")
    assert "\n" not in str(err.value)


def test_make_task_reads_math_fields_and_keeps_the_others(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _user_rows()))
    cfg = SimpleNamespace(task="gsm8k", train_file=str(path), test_file=str(path), question_field="q",
                          answer_field="a", solution_field="")
    task = make_task(cfg)
    assert task.name == "gsm8k" and [p.answer for p in task.train_problems] == ["2", "6"]
    assert task.sample(random.Random(0)).question in {"What is 1+1?", "What is 2*3?"}
    bare = make_task(SimpleNamespace(task="math"))  # config keys absent: defaults
    assert bare.fields == Fields("problem", "answer", "solution")
    assert make_task(SimpleNamespace(task="multiplication", digits=[2, 2])).name == "multiplication"
    assert make_task(SimpleNamespace(task="countdown", countdown_nums=3, countdown_max_num=20,
                                     countdown_max_target=100)).name == "countdown"
