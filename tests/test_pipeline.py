"""r1 pipeline: recipe parsing, a micro pipeline end to end, SIGKILL in the middle of a stage then --resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from r1.cli import main
from r1.config import ConfigError
from r1.pipeline import parse_recipe
from r1.rewards.language import readability_reward

MICRO = {"seed": 0, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64,
         "pretrain_steps": 3, "pretrain_batch_size": 8, "pretrain_warmup_steps": 1, "prompts_per_step": 2,
         "group_size": 2, "max_new_tokens": 12, "eval_problems": 4, "eval_k": 2, "samples_every": 1, "save_every": 1,
         "log_every": 1, "threads": 1}
STAGES = [
    {"name": "base", "kind": "pretrain"},
    {"name": "cold-start-data", "kind": "traces", "options": {"n": 16}},
    {"name": "cold-start", "kind": "sft", "from": "base", "data": "cold-start-data",
     "set": {"sft_epochs": 1, "sft_batch_size": 8}},
    {"name": "rl", "kind": "rl", "from": "cold-start",
     "set": {"rl_steps": 3, "language_weight": 0.5, "consistency_reward": "readability"}},
    {"name": "rs", "kind": "sample", "from": "rl", "options": {"k": 2, "limit": 4}},
    {"name": "sft", "kind": "sft", "from": "base", "data": "cold-start-data", "set": {"sft_epochs": 1, "sft_batch_size": 8}},
    {"name": "final", "kind": "rl", "from": "sft", "same_time_as": ["cold-start"], "set": {"rl_steps": 10_000}},
    {"name": "eval", "kind": "eval"},
]


def write_recipe(tmp_path: Path, stages=STAGES, **extra) -> Path:
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump({"pipeline": "micro", **MICRO, "runs_dir": str(tmp_path / "runs"), **extra,
                                    "stages": stages}, sort_keys=False))
    return path


def test_micro_pipeline_writes_every_stage_and_the_report(tmp_path):
    assert main(["pipeline", str(write_recipe(tmp_path))]) == 0
    run = tmp_path / "runs" / "micro"
    states = {s["name"]: json.loads((run / s["name"] / "stage.json").read_text()) for s in STAGES}
    assert all(st["status"] == "finished" and st["seconds"] >= 0 for st in states.values())
    for name in ("base", "cold-start", "rl", "sft", "final"):  # every model stage's model exists and loads
        assert (run / states[name]["model"] / "model.safetensors").exists()
    assert states["cold-start"]["model"].startswith("cold-start/checkpoints/step-")
    assert states["rl"]["model"] == "rl/checkpoints/step-000003" and states["rl"]["steps"] == 3

    # cold-start traces: readable (one notation), correct, none of them a held-out problem
    traces = [json.loads(x) for x in (run / "cold-start-data" / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 16 and all(readability_reward(t["completion"]) == 1.0 for t in traces)
    assert all(f"<answer>{t['answer']}</answer>" in t["completion"] for t in traces)
    held = {tuple(sorted(map(int, p["question"].split("*"))))
            for p in json.loads((run / "eval" / "eval" / "base.json").read_text())["problems"]}
    assert not held & {tuple(sorted(map(int, t["question"].split("*")))) for t in traces}

    # the RL stage starts from the cold-start model (its reference and its before-RL evaluation)
    rl_base = json.loads((run / "rl" / "checkpoints" / "base" / "pretrain.json").read_text())
    assert rl_base["copied_from"] == str((run / states["cold-start"]["model"]).resolve())
    rows = [json.loads(x) for x in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert all("reward/language" in r and "rollout/readability" in r for r in rows)
    # same_time_as: the final RL stopped on the cold-start stage's wall time, far before its 10,000 steps
    assert states["final"]["rl_max_seconds"] == pytest.approx(states["cold-start"]["seconds"])
    final_rows = [json.loads(x) for x in (run / "final" / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= len(final_rows) < 10_000 and final_rows[-1]["time/elapsed_s"] >= states["cold-start"]["seconds"]
    assert final_rows[-2]["time/elapsed_s"] < states["cold-start"]["seconds"] if len(final_rows) > 1 else True

    # sampling counts add up; evaluation of every model stage on the same problems; report with table and plots
    rs = json.loads((run / "rs" / "samples.summary.json").read_text())
    assert rs["sampled"] == 8 == rs["kept"] + sum(rs["dropped"].values())
    evals = {p.stem: json.loads(p.read_text()) for p in (run / "eval" / "eval").glob("*.json")}
    assert set(evals) == {"base", "cold-start", "rl", "sft", "final"}
    assert len({tuple(p["question"] for p in e["problems"]) for e in evals.values()}) == 1
    assert all(0 <= e["summary"]["readability"] <= 1 for e in evals.values())
    report = (run / "report.md").read_text()
    for name in ("base", "cold-start", "rl", "rs", "sft", "final", "eval"):
        assert f"| {name} |" in report
    assert f"| {100 * evals['rl']['summary']['pass@1']:.1f}%" in report.split("| rl |")[1].split("\n")[0]
    assert (run / "plots" / "stages.png").stat().st_size > 1000 and (run / "plots" / "curves.png").stat().st_size > 1000


def test_sigkill_in_the_middle_of_a_stage_then_resume(tmp_path):
    stages = [dict(s) for s in STAGES[:4]] + [{"name": "eval", "kind": "eval"}]
    stages[3] = dict(stages[3], set={"rl_steps": 12})
    recipe = write_recipe(tmp_path, stages)
    run = tmp_path / "runs" / "micro"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "r1.cli", "pipeline", str(recipe)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = run / "rl" / "metrics.jsonl", time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = {s["name"]: (run / s["name"] / "stage.json").read_text() for s in stages
                   if (run / s["name"] / "stage.json").exists()}
    assert set(done_before) == {"base", "cold-start-data", "cold-start"}  # killed inside the RL stage
    killed_at = len(metrics.read_text().splitlines())
    assert 3 <= killed_at < 12

    out = subprocess.run([sys.executable, "-m", "r1.cli", "pipeline", "--resume", str(run)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for name, text in done_before.items():  # finished stages were skipped, not run again
        assert (run / name / "stage.json").read_text() == text
        assert f"{name} (" in out.stdout and "finished, skipped" in out.stdout
    assert "resuming from step-" in out.stdout  # the RL stage continued from its checkpoint, not from step 0
    assert "pretrain base" not in out.stdout and "eval before RL" not in out.stdout
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, 13))  # each step once: rows after the last checkpoint were cut, then redone
    for s in stages:
        assert json.loads((run / s["name"] / "stage.json").read_text())["status"] == "finished"
    assert (run / "rl" / "checkpoints" / "step-000012" / "model.safetensors").exists()
    assert (run / "eval" / "eval" / "rl.json").exists() and (run / "report.md").exists()
    assert json.loads((run / "rl" / "stage.json").read_text())["seconds"] > 0


@pytest.mark.parametrize("change, message", [
    ({"kind": "finetune"}, "kind 'finetune', expected one of"),
    ({"from": "nowhere"}, "from='nowhere', expected an earlier stage that makes a model"),
    ({"data": "base"}, "data='base', expected an earlier traces or sample stage"),
    ({"epochs": 2}, "unknown field 'epochs'"),
    ({"set": {"sft_lr": -1}}, "stage 'cold-start': sft_lr=-1.0: expected > 0"),
    ({"set": {"sft_lr": "${lr}"}}, "unknown parameter ${lr}"),
    ({"name": "base"}, "expected a unique name"),
])
def test_bad_recipes_stop_in_one_line(tmp_path, change, message, capsys):
    stages = [dict(s) for s in STAGES]
    stages[2] = dict(stages[2], **change)
    with pytest.raises(ConfigError, match=None) as info:
        parse_recipe(write_recipe(tmp_path, stages))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert main(["pipeline", str(write_recipe(tmp_path, stages))]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_parameters_and_command_line_keys(tmp_path):
    stages = [{"name": "teacher", "kind": "model", "path": "${teacher}"},
              {"name": "s", "kind": "sample", "from": "teacher", "set": {"seed": 5}}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"pipeline": "p", "params": {"teacher": "runs/x"}, "x-anchor": {"a": 1},
                                    "eval_k": 4, "stages": stages}))
    recipe = parse_recipe(path, ["teacher=/some/where", "seed=9"])
    from r1.pipeline import stage_config
    assert recipe.stage("teacher").path == "/some/where"
    s = recipe.stage("s")
    assert stage_config(recipe, s).seed == 9 and stage_config(recipe, s).eval_k == 4  # the command line wins
    assert recipe.source["params"]["teacher"] == "/some/where" and recipe.source["forced"] == {"seed": "9"}
    for bad, message in (("s.limit=abc", "option limit='abc', expected int"), ("s.k=0", "k=0: expected >= 1")):
        with pytest.raises(ConfigError, match=re.escape(message)):  # checked before anything runs
            parse_recipe(path, [bad])
    recipe = parse_recipe(path, ["s.limit=7", "s.eval_k=2", "teacher=/x"])  # STAGE.key: one stage's option / key
    assert recipe.stage("s").options == {"limit": 7} and stage_config(recipe, recipe.stage("s")).eval_k == 2
    with pytest.raises(ConfigError, match="no stage named 't'"):
        parse_recipe(path, ["t.limit=7"])
    with pytest.raises(ConfigError, match="'k' is not a config key$"):
        parse_recipe(path, ["teacher.k=7"])  # a model stage has no options
    with pytest.raises(ConfigError, match="'limt' is not a config key nor an option of stage 's' \\(k, language, limit, "):
        parse_recipe(path, ["s.limt=7"])
    with pytest.raises(ConfigError, match="kind model takes no set"):
        parse_recipe(path, ["teacher.seed=7"])  # a model stage trains nothing
    assert main(["pipeline", "--resume", str(tmp_path)]) == 2
    assert main(["pipeline", "seed=1"]) == 2


def test_missing_teacher_is_one_line(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"pipeline": "p", "runs_dir": str(tmp_path / "runs"), "params": {"teacher": "nope"},
                                    "stages": [{"name": "teacher", "kind": "model", "path": "${teacher}"}]}))
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stage 'teacher': path='nope'" in err and "Traceback" not in err


def _math_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    rows = [{"problem": f"What is ${a}+{b}$?", "answer": str(a + b), "solution": f"${a}+{b}={a + b}$."}
            for a, b in [(2, 3), (4, 5), (10, 7), (6, 6), (8, 1), (3, 9)]]
    train, test, cold = tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path / "cold.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    cold.write_text("".join(json.dumps({"question": r["problem"], "completion": f"<think>\n{r['solution']}\n</think>\n"
                                        f"The answer is $\\boxed{{{r['answer']}}}$."}) + "\n" for r in rows[:4]))
    return train, test, cold


GPU_SMALL = ["rl_steps=1", "prompts_per_step=2", "group_size=2", "max_new_tokens=8", "eval_problems=2", "eval_k=1",
             "eval_every=0", "sft_steps=2", "sft_batch_size=2", "sft_micro_batch=0", "save_every=1", "threads=1",
             "entropy_coef=0.05"]


@pytest.mark.parametrize("recipe", ["r1-qwen2.5-1.5b.yaml", "distill-qwen2.5-math-1.5b.yaml"])
def test_gpu_recipes_run_with_tiny_checkpoints(tmp_path, recipe):
    """The GPU recipes as shipped (bf16, gradient checkpointing, chunked log-probs, their prompt formats), with
    tiny Qwen2 checkpoints at the model paths and a tiny MATH-format data set. A random model verifies nothing,
    so rejection sampling keeps nothing: the SFT stages read the cold-start file instead (the one change)."""
    from r1.models.tiny import save_tiny

    root = Path(__file__).resolve().parents[1] / "configs"
    raw = yaml.safe_load((root / recipe).read_text())
    train, test, cold = _math_files(tmp_path)
    stages = raw["stages"]
    if not any(s["kind"] == "traces" for s in stages):
        stages.insert(0, {"name": "cold-start-data", "kind": "traces", "options": {"file": str(cold)}})
    for s in stages:
        if s["kind"] == "sft":
            s["data"] = "cold-start-data"
    path = tmp_path / recipe
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    teacher = save_tiny("r1_distill_qwen", tmp_path / "teacher")
    student = save_tiny("qwen2", tmp_path / "student", seed=1)
    params = {"base": student, "cold_start": cold, "teacher": teacher, "student": student}
    sampling = [f"{s['name']}.limit=2" for s in stages if s["kind"] == "sample"]
    items = [str(path), f"train_file={train}", f"test_file={test}", f"runs_dir={tmp_path / 'runs'}", *GPU_SMALL,
             *sampling, *(f"{k}={v}" for k, v in params.items() if k in raw["params"])]
    assert main(["pipeline", *items]) == 0
    run = tmp_path / "runs" / raw["pipeline"]
    for s in stages:
        assert json.loads((run / s["name"] / "stage.json").read_text())["status"] == "finished"
    cfg = yaml.safe_load((run / [s for s in stages if s["kind"] == "rl"][0]["name"] / "config.yaml").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["model_path"] and cfg["gradient_checkpointing"] is True
    evals = list((run / "eval" / "eval").glob("*.json"))
    assert len(evals) == len([s for s in stages if s["kind"] in ("model", "sft", "rl")])
    assert "| eval | eval |" in (run / "report.md").read_text()


def test_stage_clock_counts_an_attempt_killed_without_warning(tmp_path):
    from r1.pipeline import _Clock

    first = _Clock(tmp_path, every=0.02)
    time.sleep(0.3)
    first.done.set()  # as if SIGKILL: stop() never runs, only the beats on disk remain
    first.thread.join()
    second = _Clock(tmp_path, every=0.02)
    assert 0.2 <= second.prior <= 0.4
    time.sleep(0.1)
    total = second.stop()
    assert 0.3 <= total <= 0.6 and json.loads((tmp_path / "attempts.json").read_text()) == {"seconds": total,
                                                                                            "running": 0.0}


def test_bad_trace_count_stops_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("option n='abc', expected a number of traces >= 1")):
        parse_recipe(write_recipe(tmp_path), ["cold-start-data.n=abc"])


def test_sampling_that_keeps_nothing_for_a_later_sft_stops_unfinished(tmp_path, capsys):
    stages = [dict(s) for s in STAGES[:5]] + [{"name": "sft", "kind": "sft", "from": "base", "data": "rs"}]
    stages[3] = dict(stages[3], set={"rl_steps": 1})
    assert main(["pipeline", str(write_recipe(tmp_path, stages))]) == 2  # a random micro model verifies nothing
    err = capsys.readouterr().err
    assert "stage 'rs': kept 0 of 8 completions" in err and "nothing to fine-tune on" in err and "\n" not in err.strip()
    run = tmp_path / "runs" / "micro"
    assert (run / "rl" / "stage.json").exists() and not (run / "rs" / "stage.json").exists()
    assert json.loads((run / "rs" / "samples.summary.json").read_text())["kept"] == 0


def test_inputs_that_must_exist_are_checked_before_the_run_directory(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"pipeline": "p", "runs_dir": str(tmp_path / "runs"), "params": {"teacher": "x"},
                                    "stages": [{"name": "teacher", "kind": "model", "path": "${teacher}"}]}))
    assert main(["pipeline", str(path), f"teacher={tmp_path / 'nowhere'}"]) == 2
    (tmp_path / "pipe" / "final-rl").mkdir(parents=True)
    (tmp_path / "pipe" / "recipe.yaml").write_text("pipeline: x\n")
    assert main(["pipeline", str(path), f"teacher={tmp_path / 'pipe'}"]) == 2
    assert main(["pipeline", str(path), "teachr=/x"]) == 2
    assert main(["pipeline", "no-such-recipe.yaml"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "path=" in err[0] and "is a pipeline run: expected one of its model stages" in err[1]
    assert "'teachr' is neither a parameter of this recipe (parameters: teacher) nor a config key" in err[2]
    assert "expected a pipeline recipe such as configs/r1-tiny.yaml" in err[3]
    assert not (tmp_path / "runs").exists()  # no run directory was left behind
