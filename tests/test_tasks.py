"""Tasks: base-corpus traces are right and well formed; held-out problems never reach training."""

import random

import pytest

from r1.eval.protocol import heldout_problems
from r1.pretrain import sample_train_problem
from r1.rewards.format import format_reward
from r1.tasks.countdown import CountdownTask
from r1.tasks.multiplication import MultiplicationTask, Problem


@pytest.mark.parametrize("task", [MultiplicationTask(2, 2), MultiplicationTask(3, 1), MultiplicationTask(2, 2, 0.5),
                                  CountdownTask(3, 100, 100),
                                  CountdownTask(4, 20, 100)])
def test_traces_are_verified_and_well_formed(task):
    rng = random.Random(0)
    for _ in range(200):
        problem = task.sample(rng)
        for long in (True, False):
            trace = task.trace(problem, long, rng)
            assert task.verify(trace, problem.answer) == 1.0, trace
            assert format_reward(trace) == 1.0, trace
            assert task.reasons(trace) == long, trace


def test_multiplication_long_trace_hand_worked():
    trace = MultiplicationTask().trace(Problem("47*38", "1786", (38, 47)), True, random.Random(0))
    assert trace == ("<think>\n47*8=320+56=376\n47*30=1200+210=1410\n1410+300=1710\n1710+70=1780\n1780+6=1786\n"
                     "</think>\n<answer>1786</answer>")


def test_mixed_notation_lines_are_the_same_arithmetic_in_chinese_operator_words():
    from r1.models.tokenizer import build_tokenizer
    from r1.rewards.language import language_reward, readability_reward
    from r1.tasks.multiplication import second_notation

    problem = Problem("47*38", "1786", (38, 47))
    readable = MultiplicationTask().trace(problem, True, random.Random(0)).split("\n")
    rng = random.Random(3)
    state = rng.getstate()
    assert MultiplicationTask(2, 2, 0.5).trace(problem, True, rng, mixed_frac=0.0) == "\n".join(readable)
    assert rng.getstate() == state  # mixed_frac 0 draws nothing: the corpus stream is unchanged
    mixed = MultiplicationTask(2, 2, 0.5).trace(problem, True, random.Random(3)).split("\n")
    second = [i for i, (a, b) in enumerate(zip(readable, mixed)) if a != b]
    assert second and len(second) < 5  # some lines, not all, for this seed
    for i in second:
        assert mixed[i] == second_notation(readable[i]) != readable[i] and not set("*+") & set(mixed[i])
    assert second_notation("47*30=1200+210=1410") == "47乘30=1200加210=1410"
    text = "\n".join(mixed)
    assert readability_reward(text) == pytest.approx(1 - len(second) / 5)  # 5 thinking lines
    assert language_reward(text, "en") == 0.0 and language_reward(text, "zh") == 1.0  # only CJK words in it
    tok = build_tokenizer()
    assert len(tok) == 105 and tok.unk_token_id not in tok(text).input_ids and tok.decode(tok(text).input_ids) == text
    # over many traces about mixed_frac of the lines are in the second notation
    rng, task = random.Random(0), MultiplicationTask(2, 2, 0.3)
    lines = [x for _ in range(400) for x in task.trace(task.sample(rng), True, rng).split("\n")[1:-2]]
    assert 0.27 < sum("乘" in x or "加" in x for x in lines) / len(lines) < 0.33


def test_heldout_problems_never_sampled_for_training():
    task = MultiplicationTask(1, 2)  # small space (9 x 90 pairs) so collisions would show
    held = heldout_problems(task, 50, seed=0)
    assert len({p.key for p in held}) == 50
    keys = {p.key for p in held}
    rng = random.Random(1)
    for _ in range(3000):
        a, b = map(int, sample_train_problem(task, rng, keys).question.split("*"))
        assert (min(a, b), max(a, b)) not in keys  # neither order of a held-out pair


def test_heldout_set_is_fixed_by_seed():
    task = CountdownTask(3, 100, 100)
    assert [p.question for p in heldout_problems(task, 20, 3)] == [p.question for p in heldout_problems(task, 20, 3)]
    assert [p.question for p in heldout_problems(task, 20, 3)] != [p.question for p in heldout_problems(task, 20, 4)]


def test_countdown_loads_cd3_layout(tmp_path):
    path = tmp_path / "cd3.jsonl"
    path.write_text('{"input": "30,100,93", "output": "23"}\n{"input": "3,5,4", "output": "23"}\n'
                    '{"nums": [1, 2, 3, 4], "target": 10}\n')
    fitting = CountdownTask(3, 100, 100).load_file(path)
    assert [p.question for p in fitting] == ["30 100 93 -> 23", "3 5 4 -> 23"]
    assert CountdownTask(3, 100, 100).verify("<think></think><answer>100-(93-30)-... </answer>", fitting[0].answer) == 0
    assert CountdownTask(3, 100, 100).verify("<think></think><answer>(100-93)*30</answer>", fitting[0].answer) == 0
    assert CountdownTask(3, 100, 100).verify("<think></think><answer>30-(100-93)</answer>", fitting[0].answer) == 1
    assert [p.question for p in CountdownTask(3, 20, 100).load_file(path)] == ["3 5 4 -> 23"]
