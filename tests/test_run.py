"""The main job end to end on a micro recipe, its run directory, resume, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1.cli import main

MICRO = ["hidden_size=32", "num_layers=1", "num_heads=2", "num_kv_heads=1", "intermediate_size=64",
         "pretrain_steps=3", "pretrain_batch_size=8", "pretrain_warmup_steps=1", "rl_steps=3", "prompts_per_step=2",
         "group_size=2", "max_new_tokens=12", "eval_problems=4", "eval_k=2", "samples_every=1", "save_every=2",
         "log_every=1"]

METRIC_KEYS = {"reward/mean", "reward/accuracy", "reward/format", "rollout/len_mean", "rollout/truncated_frac",
               "train/kl", "train/clipfrac", "train/entropy", "time/generate_s", "time/reward_s", "time/update_s"}


def test_micro_run_writes_every_file_and_reloads(tmp_path):
    assert main(["run", *MICRO, f"runs_dir={tmp_path}", "name=micro"]) == 0
    run = tmp_path / "micro"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["rl_steps"] == 3 and cfg["hidden_size"] == 32 and cfg["task"] == "multiplication"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(METRIC_KEYS <= set(r) for r in rows)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000001.jsonl", "step-000002.jsonl",
                                                                     "step-000003.jsonl"]
    sample = json.loads((run / "samples" / "step-000001.jsonl").read_text().splitlines()[0])
    assert {"prompt", "completion", "reward", "accuracy", "format", "answer"} <= set(sample)
    summary = json.loads((run / "summary.json").read_text())
    for when in ("before", "after"):
        assert 0.0 <= summary["eval"][when]["pass@1"] <= 1.0
        assert summary["eval"][when]["len_mean"] > 0
    assert summary["steps"] == 3 and summary["wall_seconds"] > 0 and summary["status"] == "finished"
    report = (run / "report.md").read_text()
    assert "| base (before RL) |" in report and "| after GRPO |" in report
    assert (run / "plots" / "reward.png").stat().st_size > 1000 and (run / "plots" / "length.png").stat().st_size > 1000
    assert (run / "eval" / "before.json").exists() and (run / "eval" / "after.json").exists()

    # The final checkpoint loads with plain transformers, and the tokenizer round-trips exactly.
    ckpt = run / summary["last_checkpoint"]
    assert ckpt.name == "step-000003" and (ckpt / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    text = tok.apply_chat_template([{"role": "user", "content": "12*34"}], tokenize=False, add_generation_prompt=True)
    assert text == "User: 12*34\nAssistant: "
    full = text + "<think>\n12*4=48\n</think>\n<answer>408</answer>"
    ids = tok(full, add_special_tokens=False).input_ids
    assert tok.decode(ids) == full
    assert len(ids) == len("User: 12*34\nAssistant: ") + 4 + len("\n12*4=48\n") + len("\n") + len("408")
    assert model(input_ids=__import__("torch").tensor([ids])).logits.shape == (1, len(ids), len(tok))


@pytest.mark.parametrize("extra", [[], ["ref_refresh_every=1"]])
def test_resume_continues_from_checkpoint(tmp_path, extra, capsys):
    # Run 2 of 3 steps, then resume to 3: same metrics as an uninterrupted run (per-step seeds;
    # a refreshed reference model is restored from the checkpoint).
    args = [*MICRO, f"runs_dir={tmp_path}", *extra]
    assert main(["run", *args, "name=full"]) == 0
    assert main(["run", *args, "name=part", "rl_steps=2"]) == 0
    part = tmp_path / "part"
    cfg = yaml.safe_load((part / "config.yaml").read_text())
    cfg["rl_steps"] = 3
    (part / "config.yaml").write_text(yaml.safe_dump(cfg))
    (part / "eval" / "after.json").unlink()
    assert main(["run", "--resume", str(part)]) == 0
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [drop(r) for r in resumed] == [drop(r) for r in full]
    # resuming a finished run says so, and trains nothing more
    capsys.readouterr()
    assert main(["run", "--resume", str(part)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "RL: finished (step-000003, rl_steps=3), not run again" in out and "resuming from" not in out
    assert (part / "metrics.jsonl").read_text().count("\n") == 3
    # the GRPO optimizer (r1.optim.adamw): fused on CPU, R1-Zero's betas, no weight decay, the recipe's lr
    state = torch.load(part / "checkpoints" / "step-000003" / "trainer_state.pt", weights_only=False)
    group = state["optimizer"]["param_groups"][0]
    assert (group["fused"], tuple(group["betas"]), group["weight_decay"]) == (True, (0.9, 0.99), 0.0)
    assert group["lr"] == cfg["lr"]


def test_eval_every_logs_pass_at_1_and_base_from_reuses_the_base(tmp_path, capsys):
    # Run B reuses run A's base (no pretraining) and evaluates every 2 steps. Evaluation must not change
    # training (per-step seeds), so B's training metrics equal A's; the base weights are byte-identical.
    args = [*MICRO, f"runs_dir={tmp_path}", "rl_steps=4", "eval_problems=6"]
    assert main(["run", *args, "name=a"]) == 0
    base_a = tmp_path / "a" / "checkpoints" / "base"
    assert main(["run", *args, "name=b", f"base_from={base_a}", "eval_every=2", "eval_every_problems=3",
                 "eval_every_k=2"]) == 0
    assert "copied from" in capsys.readouterr().out
    base_b = tmp_path / "b" / "checkpoints" / "base"
    assert (base_b / "model.safetensors").read_bytes() == (base_a / "model.safetensors").read_bytes()
    report_a, report_b = ((tmp_path / n / "report.md").read_text() for n in "ab")
    assert "by an earlier run (copied from" not in report_a
    assert f"by an earlier run (copied from `{base_a}`)" in report_b
    read = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = read("a"), read("b")
    train = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "eval/"))}  # noqa: E731
    assert [train(r) for r in b] == [train(r) for r in a]
    assert [("eval/pass@1" in r) for r in b] == [False, True, False, True]
    for r in (b[1], b[3]):
        assert 0.0 <= r["eval/pass@1"] <= 1.0 and r["eval/len_mean"] > 0 and r["eval/seconds"] > 0
        assert r["eval/pass@1"] in {i / 6 for i in range(7)}  # 3 problems x k=2: a multiple of 1/6
    assert all(b[i]["time/elapsed_s"] < b[i + 1]["time/elapsed_s"] for i in range(3))
    # a base of another architecture is refused in one line
    assert main(["run", *args, "name=c", f"base_from={base_a}", "hidden_size=64"]) == 2
    assert "base_from=" in capsys.readouterr().err


@pytest.mark.parametrize("arg, needle", [
    ("group_size=1", "group_size=1: expected >= 2"),
    ("bogus_key=3", "unknown config key 'bogus_key'; expected a RunConfig field (every key, with its default: "
                    "src/r1/config.py)"),  # nothing close: no guess
    ("lrr=1e-5", "unknown config key 'lrr'; did you mean lr or lora_r? (every key, with its default: src/r1/config.py"),
    ("device=cuda", "device='cuda': no CUDA GPU is visible here; expected device=cpu or auto"),
    ("lr=fast", "lr='fast': expected float"),
    ("task=chess", "task='chess'"),
    ("digits=[2]", "digits=[2]"),
    ("base_from=nowhere", "base_from='nowhere': no model.safetensors"),
    ("eval_every=-1", "eval_every=-1: expected >= 0"),
    ("sampler=fast", "sampler='fast': expected one of auto, lean, generate"),
    ("rollout_engine=vllm", "rollout_engine='vllm': "),  # no vLLM / no GPU here: refused before anything runs
    ("update_micro_batch_tokens=-1", "update_micro_batch_tokens=-1: expected >= 0"),
    ("vllm_gpu_memory_utilization=1.5", "vllm_gpu_memory_utilization=1.5: expected a share in (0, 1]"),
])
def test_bad_input_is_one_line_exit_2(arg, needle, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "r1.cli", "run", arg, f"runs_dir={tmp_path}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was created
    if "unknown config key" in needle:  # a pointer to the keys, not all ~100 of them on one line
        assert "adv_baseline" not in proc.stderr and len(proc.stderr) < 160


@pytest.mark.parametrize("argv, says", [
    (["eval", "--k", "abc"], "r1 eval: error: argument --k: invalid int value: 'abc' (see r1 eval --help)"),
    (["bogus"], "r1: error: argument command: invalid choice: 'bogus'"),
    ([], "r1: error: the following arguments are required: command (see r1 --help)"),
    (["score", "f.jsonl"], "r1 score: error: the following arguments are required: --task"),
])
def test_a_bad_command_line_is_one_line_without_the_usage_block(argv, says, capsys):
    """argparse's own refusals (a wrong type, an unknown command, a missing argument): exit code 2, one line."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err
    assert err.strip().count("\n") == 0 and "usage:" not in err


def test_missing_recipe_and_bad_resume(tmp_path, capsys):
    assert main(["run", "nope.yaml"]) == 2
    assert main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "recipe 'nope.yaml' not found" in err and "expected a run directory" in err


@pytest.mark.parametrize("text, needle", [
    # where, as an editor counts (1-based)
    ("seed: 1\nlr: [1e-5\nbeta: 0\n", "is not valid YAML: line 3, column 5: expected ',' or ']'"),
    # PyYAML alone keeps the last value in silence: a recipe must not run 4 steps where it also says 3
    ("rl_steps: 3\nseed: 1\nrl_steps: 4\n", "is not valid YAML: line 3, column 1: duplicate key 'rl_steps'"),
])
def test_bad_recipe_file_is_one_line_for_run_and_pipeline(text, needle, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["run", str(bad)]) == 2
    assert main(["pipeline", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(needle in e for e in err), err


def test_ctrl_c_during_rl_keeps_checkpoint_and_report_then_resumes(tmp_path):
    import signal
    import time

    cmd = [sys.executable, "-m", "r1.cli", "run", *MICRO, f"runs_dir={tmp_path}", "name=int", "rl_steps=100000",
           "save_every=100000", "samples_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "int" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "r1 run --resume" in err and "Traceback" not in err
    run = tmp_path / "int"
    steps = len(metrics.read_text().splitlines())
    ckpt = run / "checkpoints" / f"step-{steps:06d}"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "trainer_state.pt").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"].startswith("interrupted") and summary["steps"] == steps
    assert "interrupted" in (run / "report.md").read_text()

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["rl_steps"] = steps + 1
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", "--resume", str(run)]) == 0
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == list(range(1, steps + 2))
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("variant", [
    ["adv_baseline=loo", "kl_estimator=k2"],
    ["adv_scale=none", "loss_aggregation=seq_mean_token_sum_norm", "beta=0"],
    ["clip_eps_high=0.28", "loss_aggregation=token_mean", "num_iterations=2", "entropy_coef=0.01"],
    ["ratio_level=sequence", "adv_scale=batch"],
    ["overlong=mask", "ref_refresh_every=1"],
    ["overlong=soft", "overlong_cache=6"],
    ["dynamic_sampling=true", "dynamic_sampling_max_rounds=3"],
])
def test_loss_variants_run_end_to_end(variant, tmp_path):
    assert main(["run", *MICRO, f"runs_dir={tmp_path}", "name=v", "rl_steps=2", *variant]) == 0
    rows = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["train/loss"] == r["train/loss"] for r in rows)  # finite, not NaN
    assert {"train/clipfrac_low", "train/clipfrac_high"} <= set(rows[0])


@pytest.mark.parametrize("recipe", sorted(Path(__file__).parents[1].joinpath("configs").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_recipe_loads(recipe, tmp_path):
    from r1.config import ConfigError, load_config
    from r1.models.tiny import save_tiny
    from r1.pipeline import parse_recipe
    overrides = []
    if "model_path:" in recipe.read_text():  # GPU recipes: the checkpoint is the user's to download
        overrides = [f"model_path={save_tiny('qwen2', tmp_path / 'tiny')}"]
    pipeline = "stages" in yaml.safe_load(recipe.read_text())  # an `r1 pipeline` recipe, not an `r1 run` one
    try:
        if pipeline:
            assert len(parse_recipe(recipe).stages) >= 5
            return
        cfg = load_config(recipe, overrides)
    except ConfigError as exc:  # only shared/data files may be absent outside this repository's layout
        assert "countdown_test_file" in str(exc) or "test_file=" in str(exc) or "R1_DATA_DIR" in str(exc), str(exc)
        return
    assert cfg.name and cfg.group_size >= 2


def test_math_task_without_data_is_one_line_and_resolved_files_are_recorded(tmp_path, monkeypatch, capsys):
    import r1.tasks.math as math_task
    from r1.config import load_config
    from r1.tasks.math import reference_file
    if reference_file("gsm8k", "test"):  # here: config.yaml records the files actually read
        cfg = load_config(None, ["task=gsm8k"])
        assert Path(cfg.test_file).is_absolute() and cfg.test_file.endswith("gsm8k/test.jsonl")
        assert cfg.name == "r1-zero-gsm8k"  # the default name follows the task when no name is given
    monkeypatch.setattr(math_task, "data_dir", lambda: None)
    assert main(["run", "task=gsm8k", f"runs_dir={tmp_path}"]) == 2
    assert "R1_DATA_DIR" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_resume_after_r1_eval_wrote_into_the_run(tmp_path):
    # r1 eval RUN writes results.json (and <benchmark>.json) into RUN/eval/; the report must skip them
    assert main(["run", *MICRO, f"runs_dir={tmp_path}", "name=m", "rl_steps=1"]) == 0
    (tmp_path / "m" / "eval" / "results.json").write_text(json.dumps({"benchmarks": {}}))
    assert main(["run", "--resume", str(tmp_path / "m")]) == 0
    assert "| after GRPO |" in (tmp_path / "m" / "report.md").read_text()


def test_default_name_follows_a_checkpoint_run(tmp_path):
    from r1.config import load_config
    from r1.models.tiny import save_tiny
    model = save_tiny("qwen2", tmp_path / "tinyq")
    cfg = load_config(Path(__file__).parents[1] / "configs" / "r1-zero-mult.yaml",
                      [f"model_path={model}", "task=countdown"])
    assert cfg.name == "countdown-tinyq"
    assert load_config(Path(__file__).parents[1] / "configs" / "r1-zero-mult.yaml").name == "r1-zero-mult"
    assert load_config(None, [f"model_path={model}", "name=mine"]).name == "mine"


def test_an_interrupted_save_is_not_a_checkpoint(tmp_path):
    """A kill during save_checkpoint leaves ``step-N.tmp`` with a partial trainer_state.pt; resume must take
    the last complete checkpoint (a found bug: the .tmp folder sorted last and torch.load hit EOF)."""
    from r1.run import _rl_checkpoints
    from r1.sft import _checkpoints
    for d in ("step-000002", "step-000004.tmp"):
        (tmp_path / "checkpoints" / d).mkdir(parents=True)
        (tmp_path / "checkpoints" / d / "trainer_state.pt").write_bytes(b"" if d.endswith(".tmp") else b"x")
    assert [p.name for p in _rl_checkpoints(tmp_path)] == ["step-000002"]
    assert [p.name for p in _checkpoints(tmp_path)] == ["step-000002"]


def test_report_seconds_keep_a_decimal_below_ten():
    from r1.report import _seconds
    assert [_seconds(v) for v in (0.0, 0.44, 9.94, 9.96, 79.88)] == ["0.0 s", "0.4 s", "9.9 s", "10 s", "80 s"]


def test_tiny_policy_says_it_stays_on_cpu_when_device_is_cuda(tmp_path, capsys, monkeypatch):
    # no GPU here: stand in for one by making the run's device (auto) resolve to CUDA; the tiny policy (no
    # model_path) must still run, on the CPU, and say so instead of ignoring the GPU in silence
    import r1.run
    monkeypatch.setattr(r1.run, "resolve_device", lambda device: torch.device("cuda"))
    assert main(["run", *MICRO, "rl_steps=1", f"runs_dir={tmp_path}", "name=g"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "device=auto (cuda) applies to model_path checkpoints; the tiny policy built from scratch is " \
           "pretrained and trained on the CPU" in out
    assert json.loads((tmp_path / "g" / "summary.json").read_text())["steps"] == 1


def test_recipe_yaml_lets_a_merge_be_overridden():
    # a `<<` merge may still be overridden, as YAML intends (configs/distill-tiny.yaml does)
    from r1.config import load_recipe_yaml
    assert load_recipe_yaml("a: &x {b: 1, c: 2}\nd: {<<: *x, b: 3}\n") == {"a": {"b": 1, "c": 2}, "d": {"b": 3, "c": 2}}
