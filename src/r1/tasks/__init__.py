"""Tasks with verifiable answers. A task yields problems, base-corpus traces and a verifier."""

from __future__ import annotations


def make_task(cfg):
    """The task named by ``cfg.task``."""
    if cfg.task == "multiplication":
        from r1.tasks.multiplication import MultiplicationTask
        return MultiplicationTask(cfg.digits[0], cfg.digits[1])
    from r1.tasks.countdown import CountdownTask
    return CountdownTask(cfg.countdown_nums, cfg.countdown_max_num, cfg.countdown_max_target)
