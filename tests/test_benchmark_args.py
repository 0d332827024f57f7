"""benchmarks/grpo_step.py refuses a bad command line in one line before building anything."""
import argparse
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("grpo_step", Path(__file__).parents[1] / "benchmarks" / "grpo_step.py")
grpo_step = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(grpo_step)


def args(**kw):
    base = dict(engines="trl,r1", configs="1M:0.04:8", steps=10, warmup=2, set=[], trl_set=[], one=None)
    return argparse.Namespace(**{**base, **kw})


def test_good_arguments_pass():
    assert grpo_step._bad_arguments(args()) is None
    assert grpo_step._bad_arguments(args(configs="10M:0:16", steps=1, warmup=0, engines="r1")) is None


@pytest.mark.parametrize("kw, says", [
    (dict(engines="r1,vllm"), "--engines"),
    (dict(configs="3M:0.04:8"), "SIZE one of 1M, 10M"),
    (dict(configs="1M:x:8"), "a number for BETA"),
    (dict(configs="1M:0.04:1"), "G >= 2"),
    (dict(configs="1M:-0.1:8"), "BETA >= 0"),
    (dict(configs="1M:nan:8"), "a finite BETA"),
    (dict(configs="1M:inf:8"), "a finite BETA"),
    (dict(steps=0), "at least 1 measured step"),
    (dict(warmup=-1), "no negative warm-up"),
    (dict(set=["mixed_precision=fp16"]), "--set"),
])
def test_bad_arguments_are_named(kw, says):
    problem = grpo_step._bad_arguments(args(**kw))
    assert problem is not None and says in problem and "\n" not in problem


def test_the_command_refuses_in_one_line_with_exit_code_2():
    """The script itself: the message alone on stderr (no usage block), exit code 2, nothing on stdout."""
    import subprocess
    import sys
    script = Path(__file__).parents[1] / "benchmarks" / "grpo_step.py"
    proc = subprocess.run([sys.executable, str(script), "--configs", "1M:nan:8"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "a finite BETA" in proc.stderr
