"""benchmarks/grpo_step.py refuses a bad command line in one line before building anything."""
import argparse
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("grpo_step", Path(__file__).parents[1] / "benchmarks" / "grpo_step.py")
grpo_step = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(grpo_step)


def args(**kw):
    base = dict(engines="trl,r1", configs="1M:0.04:8", steps=10, warmup=2, rounds=1, set=[], trl_set=[], one=None)
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
    (dict(rounds=0), "--rounds 0: expected at least 1 round"),
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
    # argparse's own refusals too (a value outside the choices), without its usage block
    proc = subprocess.run([sys.executable, str(script), "--precision", "fp8"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "argument --precision: invalid choice: 'fp8'" in proc.stderr


@pytest.mark.parametrize("out, says", [
    ("a-file/t.md", "cannot create its folder"),  # a file where --out needs a folder
    ("a-folder", "a-folder is a folder; expected a file path such as /tmp/table.md"),
    ("t.md/", "t.md is a folder"),
])
def test_an_out_path_that_cannot_be_written_is_refused_before_any_run(tmp_path, out, says):
    """One line, exit code 2, before a model is built (nothing on stdout), and no file left behind."""
    import subprocess
    import sys
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "t.md").mkdir()
    script = Path(__file__).parents[1] / "benchmarks" / "grpo_step.py"
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("grpo_step.py: --out=")
    assert says in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder", "t.md"]


def test_output_problem_tries_each_file_and_leaves_only_what_was_there(tmp_path):
    from r1.report import output_problem
    (tmp_path / "old.md").write_text("kept")
    assert output_problem(tmp_path / "new" / "old.md", (".json",)) is None  # its folder is made
    assert output_problem(tmp_path / "old.md", (".json", ".png")) is None
    assert (tmp_path / "old.md").read_text() == "kept" and sorted(p.name for p in tmp_path.iterdir()) == ["new", "old.md"]
    (tmp_path / "x.json").mkdir()
    assert output_problem(tmp_path / "x.md", (".json",)) == f"{tmp_path / 'x.json'} is a folder; expected a file path " \
        "such as /tmp/table.md"
    assert output_problem(Path("/proc/r1-no.md")).startswith("cannot write /proc/r1-no.md (")


TC_SPEC = importlib.util.spec_from_file_location("trl_curves", Path(__file__).parents[1] / "benchmarks" / "trl_curves.py")
trl_curves = importlib.util.module_from_spec(TC_SPEC)
TC_SPEC.loader.exec_module(trl_curves)


def _side(accuracies, per_problem):
    return {"rows": [{"accuracy": a} for a in accuracies], "train_seconds": 2.0 * len(accuracies),
            "eval": {"pass@1": sum(per_problem) / len(per_problem), "format": 1.0, "readability": 0.5, "len_mean": 60.0},
            "pass_se": 0.0, "per_problem": per_problem}


def test_trl_curves_report_pairs_within_and_across_seeds():
    """Hand-worked: seed 0, r1 - TRL per problem = (+0.5, 0, +0.25): mean +0.25, squared deviations
    0.125 in all, s.e. sqrt(0.125 / 2 / 3) = 0.144; seed 1: (-0.25, -0.25, +0.5): mean 0, s.e. sqrt(0.375 / 6) = 0.25.
    Across seeds: mean +0.125, s.e. 0.125.
    Training accuracy: seed 0 r1 0.6 vs TRL 0.4 (+20 points), seed 1 0.5 vs 0.5 (0): +10 ± 10 points."""
    per_seed = {"0": {"r1": _side([0.5, 0.7], [1.0, 0.5, 0.75]), "trl": _side([0.3, 0.5], [0.5, 0.5, 0.5])},
                "1": {"r1": _side([0.5, 0.5], [0.25, 0.25, 1.0]), "trl": _side([0.4, 0.6], [0.5, 0.5, 0.5])}}
    lines = trl_curves.report(per_seed, eval_k=4)
    assert "- seed 0: held-out pass@1 +25.0 ± 14.4 points (paired over the 3 problems); mean training accuracy +20.0 points" in lines
    assert "- seed 1: held-out pass@1 +0.0 ± 25.0 points (paired over the 3 problems); mean training accuracy +0.0 points" in lines
    assert lines[-2] == ("- over the 2 seeds (mean ± s.e. across seeds): held-out pass@1 +12.5 ± 12.5 points; "
                         "mean training accuracy +10.0 ± 10.0 points")
    assert "| 0 | r1 | 2 | 4 | 2.00 | 0.600 / 0.600 | 0.750 ± 0.000 |" in lines[3]
    # windows of one step: step 1 (+20, +10) -> +15 ± 5, step 2 (+20, -10) -> +5 ± 15
    assert trl_curves.report(per_seed, eval_k=4, window=1)[-1] == (
        "- training accuracy by 1-step window (mean ± s.e. across seeds): 1-1 +15.0 ± 5.0, 2-2 +5.0 ± 15.0 points")


@pytest.mark.parametrize("seeds, says", [
    ("0,x", "trl_curves.py: --seeds='0,x': expected comma-separated integers, e.g. 0,1,2"),
    ("1,2,1", "trl_curves.py: --seeds='1,2,1': a seed is repeated; expected distinct seeds")])
def test_trl_curves_refuses_bad_seeds_in_one_line(seeds, says):
    import subprocess
    import sys
    script = Path(__file__).parents[1] / "benchmarks" / "trl_curves.py"
    proc = subprocess.run([sys.executable, str(script), "--seeds", seeds], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == says


def test_the_table_header_names_precision_engines_steps_and_versions():
    p = dict(precision="bf16", engines="trl,r1", steps=10, warmup=2, started_utc="2026-12-06 05:24",
             cpu="Some CPU", threads=2, commit="abc1234", torch="2.13.0+cpu", transformers="5.25.0", trl=None)
    line = grpo_step.header(p)
    assert line == ("bf16 mixed precision (both engines); median of 10 steps after 2 warm-up; started 2026-12-06 05:24 "
                    "UTC on Some CPU, 2 threads; torch 2.13.0+cpu, transformers 5.25.0; commit abc1234")
    assert grpo_step.header({**p, "precision": "fp32", "engines": "r1", "commit": None}).startswith("fp32 (r1);")
    assert grpo_step.header({**p, "commit": None}).endswith("commit unknown")
    assert grpo_step.header({**p, "set": ["sampler=generate", "fast_logprobs=false"], "trl_set": ["x=1"]}).startswith(
        "bf16 mixed precision (both engines); r1 --set sampler=generate fast_logprobs=false; TRL --trl-set x=1; median")
    real = grpo_step.provenance("fp32", "r1", 3, 1, ["beta=0"])
    assert real["set"] == ["beta=0"] and real["trl_set"] == []
    assert (real["precision"], real["engines"], real["steps"], real["warmup"], real["threads"]) == ("fp32", "r1", 3, 1, 2)
    assert real["torch"].startswith("2.13.0") and "\n" not in grpo_step.header(real)


def _result(steps, rss):
    """A fake engine run: rows whose parts are a fixed share of the step, 100 tokens each."""
    return {"rows": [{"step_s": t, "generate_s": t / 2, "reward_s": 0.001, "update_s": t / 2,
                      "completion_tokens": 60, "prompt_tokens": 40} for t in steps], "peak_rss_mb": rss}


def test_rounds_pool_their_steps_and_give_the_ratio_of_each_round():
    """Hand-worked, warm-up 1: round 1 TRL median(1.0, 1.2) = 1.1 s, r1 median(0.5, 0.6) = 0.55 s: 2.00x; round 2
    TRL 0.8 s, r1 0.5 s: 1.60x; median of the rounds 1.80x. Pooled: TRL median(1.0, 1.2, 0.8, 0.8) = 0.9 s,
    r1 median(0.5, 0.6, 0.5, 0.5) = 0.5 s (the warm-up steps, 9 s, left out); peak RSS the larger round's."""
    trl = [_result([9.0, 1.0, 1.2], 800), _result([9.0, 0.8, 0.8], 820)]
    r1 = [_result([9.0, 0.5, 0.6], 700), _result([9.0, 0.5, 0.5], 690)]
    pooled = grpo_step.summarize(grpo_step.pool(trl, 1), 0)
    assert (pooled["step_s"], pooled["peak_rss_mb"], pooled["steps"]) == (0.9, 820, 4)
    assert grpo_step.summarize(grpo_step.pool(r1, 1), 0)["step_s"] == 0.5
    line = grpo_step.by_round({("1M", "0.04", "8"): {"trl": trl, "r1": r1}}, 1)
    assert line.endswith(": 1M / 0.04 / 8: 2.00x, 1.60x (median 1.80x)")
    assert grpo_step.by_round({("1M", "0.04", "8"): {"trl": [], "r1": r1}}, 1) == ""  # one engine: no ratio
    # one round pools to the round itself
    assert grpo_step.summarize(grpo_step.pool(trl[:1], 1), 0) == grpo_step.summarize(trl[0], 1)


def test_the_header_names_the_rounds():
    p = dict(precision="fp32", engines="trl,r1", steps=10, warmup=2, rounds=3, started_utc="2026-12-06 07:00",
             cpu="Some CPU", threads=2, commit="abc1234", torch="2.13.0+cpu", transformers=None, trl=None)
    assert grpo_step.header(p).startswith("fp32 (both engines); median of 3 rounds x 10 steps, each round after 2 "
                                          "warm-up, the engines' order alternating; started")
