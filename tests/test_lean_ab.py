"""benchmarks/lean_ab.py: two revisions of lean.py side by side; bad command lines refused in one line."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "lean_ab.py"
SPEC = importlib.util.spec_from_file_location("lean_ab", SCRIPT)
lean_ab = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lean_ab)
HAS_GIT = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode == 0


@pytest.mark.skipif(not HAS_GIT, reason="not a git checkout")
def test_a_revision_and_the_work_tree_load_as_two_modules(tmp_path):
    committed = subprocess.run(["git", "show", "HEAD:src/r1/models/lean.py"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    base, new = lean_ab.load_lean("HEAD", tmp_path), lean_ab.load_lean(None, tmp_path)
    assert base is not new and base.__name__ != new.__name__
    assert Path(base.__file__).read_text() == committed
    assert Path(new.__file__).read_text() == (ROOT / "src/r1/models/lean.py").read_text()
    assert callable(base.sample) and callable(new.token_logprobs)
    with pytest.raises(ValueError, match="no-such-rev.*git cannot show"):
        lean_ab.load_lean("no-such-rev", tmp_path)


@pytest.mark.parametrize("argv, says", [
    (["--base", "HEAD", "--sizes", "3M"], "--sizes '3M': expected a comma-separated list of 1M, 10M"),
    (["--base", "HEAD", "--ops", "sample,decode"], "--ops 'sample,decode'"),
    (["--base", "HEAD", "--repeats", "0"], "at least 1 repeat"),
    (["--base", "no-such-rev"], "git cannot show"),
    (["--base", "HEAD", "--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),  # argparse's own
])
def test_a_bad_command_line_is_one_line_and_exit_code_2(argv, says):
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and says in proc.stderr


@pytest.mark.skipif(not HAS_GIT, reason="not a git checkout")
def test_the_same_code_on_both_sides_gives_identical_log_probabilities(tmp_path):
    """HEAD against HEAD, the reference forward at 1M: the table names a difference of exactly zero."""
    out = tmp_path / "ab.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--base", "HEAD", "--new", "HEAD", "--sizes", "1M", "--ops",
                           "reference", "--repeats", "2", "--warmup", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("lean.py HEAD (base) against HEAD (new), fp32; median of 2 alternating calls")
    row = [line for line in lines if line.startswith("| 1M |")]
    assert len(row) == 1 and "| reference forward |" in row[0] and row[0].endswith("| logp 0.0e+00 |")
