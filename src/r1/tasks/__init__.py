"""Tasks with verifiable answers. A task yields problems, base-corpus traces and a verifier."""

from __future__ import annotations

MATH_TASKS = ("gsm8k", "math", "aime", "amc")  # r1/tasks/math.py: problems read from files, math-verify reward


def make_task(cfg):
    """The task named by ``cfg.task``.

    Math tasks read ``train_file``, ``test_file`` ('' = the reference file under shared/data) and
    ``question_field``, ``answer_field``, ``solution_field`` ('' = the task's default field names).
    """
    if cfg.task == "multiplication":
        from r1.tasks.multiplication import MultiplicationTask
        return MultiplicationTask(cfg.digits[0], cfg.digits[1], getattr(cfg, "mixed_frac", 0.0))
    if cfg.task in MATH_TASKS:
        from r1.tasks.math import DEFAULT_FIELDS, Fields, MathTask
        default = DEFAULT_FIELDS[cfg.task]
        fields = Fields(getattr(cfg, "question_field", "") or default.question,
                        getattr(cfg, "answer_field", "") or default.answer,
                        getattr(cfg, "solution_field", "") or default.solution)
        return MathTask(cfg.task, getattr(cfg, "train_file", ""), getattr(cfg, "test_file", ""), fields)
    from r1.tasks.countdown import CountdownTask
    return CountdownTask(cfg.countdown_nums, cfg.countdown_max_num, cfg.countdown_max_target)
