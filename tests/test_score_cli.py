"""`r1 score`: scored rows, the summary counts, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest

from r1.cli import main

ROWS = [
    {"prompt": "1/2?", "completion": "<think>\nhalf\n</think>\n<answer>\\frac{1}{2}</answer>", "answer": "0.5"},
    {"completion": "<think>x</think>\n\\boxed{3}", "answer": "4"},                       # wrong
    {"completion": "<think>x</think>\n\\fbox{7}", "answer": "7"},                        # correct
    {"completion": "<think>still thinking \\boxed{4}", "answer": "4"},                  # unfinished thinking
    {"completion": "<think>x</think> it is 4", "answer": "4"},                           # no final answer
    {"completion": "<think>x</think> \\boxed{}", "answer": "4"},                         # not parseable
    {"completion": "<think>x</think> \\boxed{5}", "answer": ""},                         # unparseable gold
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_writes_rows_and_prints_counts(tmp_path, capsys):
    src = write(tmp_path / "c.jsonl", ROWS)
    assert main(["score", "--task", "math", str(src), "-o", str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in out] == [True, False, True, False, False, False, None]
    assert [r["reason"] for r in out] == ["correct", "wrong", "correct", "unfinished_thinking", "no_final_answer",
                                          "unparseable_completion", "unparseable_gold"]
    assert out[0]["rewards"] == {"accuracy": 1.0, "format": 1.0} and out[0]["prompt"] == "1/2?"
    assert out[1]["rewards"] == {"accuracy": 0.0, "format": 0.0} and out[1]["extracted"] == "3"
    assert out[6]["rewards"]["accuracy"] is None
    text = capsys.readouterr().out
    assert ("correct 2, wrong 1, unparseable completion 3 (no final answer 1, unfinished thinking 1, "
            "not parseable 1), unparseable gold 1 (skipped)") in text
    assert "accuracy 2/6 = 33.3%" in text


def test_score_gsm8k_reads_the_answer_the_task_way(tmp_path):
    rows = [{"completion": "48+24=72\n#### 72", "answer": "Natalia sold ...\n#### 72"},
            {"completion": "<answer>1,000</answer>", "answer": "#### 1,000"},
            {"completion": "\\boxed{71}", "answer": "72"}]
    src = write(tmp_path / "g.jsonl", rows)
    assert main(["score", "--task", "gsm8k", str(src)]) == 0  # default output: g.scored.jsonl
    out = [json.loads(x) for x in (tmp_path / "g.scored.jsonl").read_text().splitlines()]
    assert [(r["gold"], r["correct"]) for r in out] == [("72", True), ("1000", True), ("72", False)]


def test_score_toy_tasks(tmp_path):
    src = write(tmp_path / "m.jsonl", [{"completion": "<think>\n</think>\n<answer>1786</answer>", "answer": "1786"},
                                       {"completion": "<answer>12</answer>", "answer": "1786"}])
    assert main(["score", "--task", "multiplication", str(src), "-o", str(tmp_path / "o.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(r["correct"], r["rewards"]["format"]) for r in out] == [(True, 1.0), (False, 0.0)]


@pytest.mark.parametrize("content, args, needle", [
    (None, ["--task", "math", "MISSING"], "file not found"),
    ('{"completion": "x", "answer": "1"}\n{"completion": \n', ["--task", "math"], "line 2: not valid JSON"),
    ('{"completion": "x"}\n', ["--task", "math"], "line 1: no field 'answer' (fields: completion)"),
    ('{"answer": "1"}\n', ["--task", "math"], "line 1: no field 'completion'"),
    ('[1, 2]\n', ["--task", "math"], "line 1: a JSON list, not an object"),
    ('{"completion": 5, "answer": "1"}\n', ["--task", "math"], '"completion" is a int, expected a string'),
    ('{"completion": "x", "answer": "1"}\n', ["--task", "algebra"], "--task 'algebra': expected one of gsm8k, math"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, content, args, needle):
    path = tmp_path / "in.jsonl"
    if content is not None:
        path.write_text(content)
    argv = [a.replace("MISSING", str(tmp_path / "nope.jsonl")) for a in args]
    if "MISSING" not in args:
        argv.append(str(path))
    proc = subprocess.run([sys.executable, "-m", "r1.cli", "score", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("r1: error: ") and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
