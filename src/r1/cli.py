"""The ``r1`` command.

    r1 run [RECIPE] [key=value ...]     run the main job (default recipe: configs/r1-zero-mult.yaml)
    r1 run --resume runs/<name>         continue an interrupted run
    r1 score --task TASK FILE.jsonl     grade completions with the task's rewards (audit a verifier)
    r1 eval MODEL [--benchmarks B,...] [--k K] [--out DIR] [key=value ...]
                                        the R1 evaluation protocol on benchmarks (r1/eval/command.py)
    r1 eval --compare A B [C ...]       results of r1 eval side by side, with differences
    r1 sft [RECIPE] [key=value ...]     supervised fine-tuning on traces (sft_file=, init_from=; r1/sft.py)
    r1 sample MODEL --task TASK [--k K] [--out FILE.jsonl] [key=value ...]
                                        rejection sampling into an SFT-ready jsonl (r1/sample.py)
    r1 pipeline RECIPE [key=value ...]  the R1 multi-stage recipe or distillation (r1/pipeline.py)
    r1 pipeline --resume runs/<name>    skip finished stages, resume the interrupted one
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from r1.config import ConfigError, load_config

DEFAULT_RECIPE = "r1-zero-mult.yaml"


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that reports a bad command line (unknown option or command, a value of the
    wrong type or outside ``choices``, a missing argument) in one line on stderr, ``PROG: error: MESSAGE (see
    PROG --help)``, and exits with code 2, instead of the usage block above the message. Its subcommands'
    parsers are of the same class (argparse makes them with the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def find_recipe(name: str | None) -> Path | None:
    """The recipe path: as given, or under ./configs/, or the repository's configs/ (editable installs)."""
    name = name or DEFAULT_RECIPE
    candidates = [Path(name), Path("configs") / name, Path(__file__).resolve().parents[2] / "configs" / name]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"recipe {name!r} not found (looked in ., ./configs and the r1 repository's configs/): "
                      "expected a YAML file such as configs/r1-zero-mult.yaml")


def _fail(message: str) -> int:
    print(f"r1: error: {message}", file=sys.stderr)
    return 2


def cmd_run(args) -> int:
    from r1.run import Interrupted, prepare_run_dir, run

    recipe = None
    overrides = list(args.items)
    if overrides and "=" not in overrides[0]:
        recipe = overrides.pop(0)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        return _fail(f"argument {bad[0]!r}: expected key=value (a recipe goes first)")
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").is_file():
                return _fail(f"--resume {args.resume!r}: expected a run directory with a config.yaml")
            if recipe or overrides:
                return _fail("--resume takes no recipe or key=value: the run's own config.yaml is used")
            cfg = load_config(run_dir / "config.yaml")
        else:
            cfg = load_config(find_recipe(recipe), overrides)
            run_dir = prepare_run_dir(cfg)
    except ConfigError as exc:
        return _fail(str(exc))
    try:
        run(cfg, run_dir)
    except (Interrupted, KeyboardInterrupt):
        print(f"r1: interrupted; finished stages (and, during RL, a checkpoint and the report) kept in {run_dir}; "
              f"continue with: r1 run --resume {run_dir}", file=sys.stderr)
        return 130
    return 0


SCORE_TASKS = ("gsm8k", "math", "aime", "amc", "multiplication", "countdown")
_ROW = 'expected one JSON object per line with "completion" and "answer" (and optionally "prompt")'


def _read_score_rows(path: Path) -> tuple[list[dict] | None, str]:
    """The rows of a ``{completion, answer[, prompt]}`` jsonl file, or (None, a one-line error)."""
    if not path.is_file():
        return None, f"FILE {str(path)!r}: file not found ({_ROW})"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); {_ROW}"
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            return None, f"{path} line {n}: not valid JSON ({exc.msg}); {_ROW}"
        if not isinstance(row, dict):
            return None, f"{path} line {n}: a JSON {type(row).__name__}, not an object; {_ROW}"
        for key in ("completion", "answer"):
            if key not in row:
                return None, f"{path} line {n}: no field {key!r} (fields: {', '.join(row) or 'none'}); {_ROW}"
        if not isinstance(row["completion"], str):
            return None, f"{path} line {n}: \"completion\" is a {type(row['completion']).__name__}, expected a string"
        rows.append(row)
    return rows, ""


def _score_row(task, row: dict) -> dict:
    """``row`` with its gold as graded, every reward value, ``correct`` (true/false/null) and the reason."""
    from r1.rewards.format import format_reward

    completion = row["completion"]
    fmt = format_reward(completion)
    if hasattr(task, "grade"):  # math tasks: the rich outcome, the gold normalised the task's way
        gold = task.gold(row["answer"])
        g = task.grade(completion, gold)
        return {**row, "gold": gold, "extracted": g.extracted, "correct": g.correct, "reason": g.reason,
                "rewards": {"accuracy": g.reward, "format": fmt}}
    answer = row["answer"] if isinstance(row["answer"], str) else json.dumps(row["answer"])
    acc = task.verify(completion, answer)
    return {**row, "correct": acc == 1.0, "reason": "correct" if acc == 1.0 else "wrong",
            "rewards": {"accuracy": acc, "format": fmt}}


def cmd_score(args) -> int:
    if args.task not in SCORE_TASKS:
        return _fail(f"--task {args.task!r}: expected one of {', '.join(SCORE_TASKS)}")
    path = Path(args.file)
    rows, error = _read_score_rows(path)
    if rows is None:
        return _fail(error)
    out = Path(args.output) if args.output else path.with_name(path.stem + ".scored.jsonl")
    if out.resolve() == path.resolve():
        return _fail(f"-o {args.output!r}: the input file itself; expected another path")
    if args.task == "multiplication":
        from r1.tasks.multiplication import MultiplicationTask
        task = MultiplicationTask()
    elif args.task == "countdown":
        from r1.tasks.countdown import CountdownTask
        task = CountdownTask()
    else:
        from r1.tasks.math import MathTask
        task = MathTask(args.task)
    try:
        scored = [_score_row(task, row) for row in rows]
    except (ValueError, TypeError, KeyError) as exc:  # e.g. a countdown answer that is not [nums, target]
        return _fail(f"{path}: an answer does not fit task {args.task}: {exc}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scored))
    from r1.rewards.math import REASONS

    count = {reason: sum(r["reason"] == reason for r in scored) for reason in REASONS}
    unparseable = count["no_final_answer"] + count["unfinished_thinking"] + count["unparseable_completion"]
    graded = len(scored) - count["unparseable_gold"]
    fmt = sum(r["rewards"]["format"] for r in scored) / max(1, len(scored))
    print(f"scored {len(scored)} rows (task {args.task}) -> {out}")
    print(f"correct {count['correct']}, wrong {count['wrong']}, unparseable completion {unparseable} "
          f"(no final answer {count['no_final_answer']}, unfinished thinking {count['unfinished_thinking']}, "
          f"not parseable {count['unparseable_completion']}), unparseable gold {count['unparseable_gold']} (skipped)")
    print(f"accuracy {count['correct']}/{graded} = {100 * count['correct'] / max(1, graded):.1f}% "
          f"(unparseable gold excluded); format reward mean {fmt:.3f}")
    return 0


def cmd_eval(args) -> int:
    from r1.eval.benchmarks import BenchmarkError
    from r1.eval.command import EvalError, run_compare, run_eval
    from r1.models.hf import ModelLoadError
    from r1.models.prompts import PromptFormatError

    try:
        if args.compare:
            if args.benchmarks is not None or args.k is not None:
                return _fail("--compare takes results.json files or folders only, not --benchmarks or --k")
            run_compare(args.items, args.out)
            return 0
        if not args.items or "=" in args.items[0]:
            return _fail("r1 eval: expected MODEL first (a run directory, a checkpoint directory or a local "
                         "Hugging Face model directory), then key=value")
        run_eval(args.items[0], args.benchmarks, args.k, args.out, args.items[1:])
    except (EvalError, ConfigError, BenchmarkError, ModelLoadError, PromptFormatError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("r1: eval interrupted; the benchmarks finished so far are written", file=sys.stderr)
        return 130
    return 0


def cmd_sft(args) -> int:
    import dataclasses

    from r1.models.hf import ModelLoadError
    from r1.models.prompts import PromptFormatError
    from r1.sft import Interrupted, SftError, new_stage_dir, run_sft

    items = list(args.items)
    recipe = items.pop(0) if items and "=" not in items[0] else None
    bad = [o for o in items if "=" not in o]
    if bad:
        return _fail(f"argument {bad[0]!r}: expected key=value (a recipe goes first)")
    named, stage_dir = any(o.startswith("name=") for o in items), None
    try:
        base = find_recipe(recipe) if recipe else None
        cfg = load_config(base, items)
        if base is None and cfg.init_from and cfg.init_from != "scratch":  # a run's own settings (task, prompt, eval)
            from r1.eval.command import EvalError, resolve_model
            try:
                run_dir = resolve_model(cfg.init_from).run_dir
            except EvalError as exc:
                return _fail(str(exc).replace("MODEL", "init_from", 1))
            if run_dir is not None:
                cfg = load_config(run_dir / "config.yaml", items)
        if not named and not _recipe_names(base):  # not the main job's name: runs/sft[-N]
            cfg = dataclasses.replace(cfg, name="sft")
        if not cfg.sft_file:
            return _fail("sft_file is not set: expected sft_file=TRACES.jsonl (e.g. the output of r1 sample)")
        absolute = {k: str(Path(getattr(cfg, k)).resolve()) for k in ("sft_file", "init_from", "model_path")
                    if getattr(cfg, k) and getattr(cfg, k) != "scratch"}
        cfg = dataclasses.replace(cfg, **absolute)
        stage_dir = new_stage_dir(cfg)
        run_sft(cfg, stage_dir)
    except (ConfigError, SftError, ModelLoadError, PromptFormatError) as exc:
        return _fail(str(exc))
    except (Interrupted, KeyboardInterrupt):
        print(f"r1: SFT interrupted; the last checkpoint and summary.json are in {stage_dir}", file=sys.stderr)
        return 130
    print(f"r1 sft: done, {stage_dir}")
    return 0


def _recipe_names(recipe: Path | None) -> bool:
    """True when the recipe file sets ``name`` itself."""
    import yaml
    return recipe is not None and "name" in (yaml.safe_load(recipe.read_text()) or {})


def cmd_sample(args) -> int:
    from r1.eval.command import EvalError
    from r1.models.hf import ModelLoadError
    from r1.models.prompts import PromptFormatError
    from r1.sample import run_sample

    if not args.items or "=" in args.items[0]:
        return _fail("r1 sample: expected MODEL first (a run directory, a checkpoint directory or a local Hugging "
                     "Face model directory), then key=value")
    try:
        run_sample(args.items[0], args.task, args.k, args.out, args.items[1:])
    except (ConfigError, EvalError, ModelLoadError, PromptFormatError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("r1: sample interrupted; nothing written", file=sys.stderr)
        return 130
    return 0


def cmd_pipeline(args) -> int:
    from r1.eval.command import EvalError
    from r1.models.hf import ModelLoadError
    from r1.models.prompts import PromptFormatError
    from r1.pipeline import check_inputs, parse_recipe, prepare, run_pipeline
    from r1.run import Interrupted as RlInterrupted
    from r1.sft import Interrupted as SftInterrupted, SftError

    items, run_dir = list(args.items), None
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "recipe.yaml").is_file():
                return _fail(f"--resume {args.resume!r}: expected a pipeline run directory with a recipe.yaml")
            if items:
                return _fail("--resume takes no recipe or key=value: the run's own recipe.yaml is used")
            recipe = parse_recipe(run_dir / "recipe.yaml")
        else:
            if not items or "=" in items[0]:
                return _fail("r1 pipeline: expected RECIPE first (e.g. configs/r1-tiny.yaml), then key=value")
            try:
                path = find_recipe(items[0])
            except ConfigError:
                return _fail(f"recipe {items[0]!r} not found (looked in ., ./configs and the r1 repository's "
                             "configs/): expected a pipeline recipe such as configs/r1-tiny.yaml")
            recipe = parse_recipe(path, items[1:])
            check_inputs(recipe)
            run_dir = prepare(recipe)
        run_pipeline(recipe, run_dir)
    except (ConfigError, SftError, EvalError, ModelLoadError, PromptFormatError) as exc:
        return _fail(str(exc))
    except (RlInterrupted, SftInterrupted, KeyboardInterrupt):
        print(f"r1: pipeline interrupted; finished stages and the running stage's last checkpoint are kept in "
              f"{run_dir}; continue with: r1 pipeline --resume {run_dir}", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="r1", description="The DeepSeek-R1 recipe, runnable on any budget.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="R1-Zero from scratch: pretrain a tiny base, GRPO, evaluate, report")
    p_run.add_argument("items", nargs="*", metavar="[RECIPE] [key=value]",
                       help="a recipe YAML (default configs/r1-zero-mult.yaml), then overrides")
    p_run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")
    p_score = sub.add_parser("score", help="grade a jsonl of {completion, answer[, prompt]} rows with a task's rewards")
    p_score.add_argument("--task", required=True, help=f"one of {', '.join(SCORE_TASKS)}")
    p_score.add_argument("file", metavar="FILE.jsonl", help='rows {"completion": str, "answer": ...[, "prompt": str]}')
    p_score.add_argument("-o", "--output", metavar="OUT.jsonl", help="scored rows (default: FILE.scored.jsonl)")
    p_eval = sub.add_parser("eval", help="the R1 evaluation protocol (pass@1 over k samples, pass@k, cons@k)")
    p_eval.add_argument("items", nargs="*", metavar="MODEL [key=value]",
                        help="a run directory, a checkpoint directory or a Hugging Face model directory, then "
                             "overrides (seed, max_new_tokens, eval_temperature, eval_top_p, limit, "
                             "<benchmark>_file, ...); with --compare: results.json files or their folders")
    p_eval.add_argument("--benchmarks", metavar="B,...", help="comma-separated: math500, aime24, aime25, amc23, gsm8k, "
                        "countdown, heldout (a run's own held-out set); default heldout for a run, else the math five")
    p_eval.add_argument("--k", type=int, metavar="K", help="samples per problem for every benchmark "
                        "(default: 64 for AIME, 4 for MATH-500, the run's eval_k for heldout, 8 otherwise)")
    p_eval.add_argument("--out", metavar="DIR", help="output folder (default <run>/eval, else "
                        "runs/eval-<model folder>; with --compare: where compare.md goes, default .)")
    p_eval.add_argument("--compare", action="store_true", help="compare results: r1 eval --compare A B [C ...]")
    p_sft = sub.add_parser("sft", help="supervised fine-tuning on traces, loss on completion tokens only")
    p_sft.add_argument("items", nargs="*", metavar="[RECIPE] [key=value]",
                       help="an optional recipe YAML, then overrides: sft_file=, init_from= (run, checkpoint, HF "
                            "directory or scratch), sft_epochs=, sft_steps=, sft_batch_size=, sft_lr=, eval_every=")
    p_sample = sub.add_parser("sample", help="rejection sampling (R1 §2.3.3) into an SFT-ready jsonl")
    p_sample.add_argument("items", nargs="*", metavar="MODEL [key=value]",
                          help="a run directory, a checkpoint directory or a Hugging Face model directory, then "
                               "options (limit, temperature, top_p, max_tokens, language, min_language, "
                               "min_readability, max_repeat) or config keys (seed, max_new_tokens, ...)")
    p_sample.add_argument("--task", required=True, help="multiplication, countdown, gsm8k, math, aime or amc")
    p_sample.add_argument("--k", type=int, metavar="K", help="completions per prompt (default 4)")
    p_sample.add_argument("--out", metavar="FILE.jsonl", help="output (default runs/sample-<model>-<task>.jsonl); "
                          "the summary goes to FILE.summary.json")
    p_pipe = sub.add_parser("pipeline", help="stages in order (cold start, RL, rejection sampling, SFT, RL, "
                            "distillation), each in its own folder; resumable")
    p_pipe.add_argument("items", nargs="*", metavar="RECIPE [key=value]",
                        help="a pipeline recipe (configs/r1-tiny.yaml, configs/distill-tiny.yaml), then recipe "
                             "parameters (teacher=...) or config keys shared by every stage (seed=...)")
    p_pipe.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted pipeline in RUN_DIR")
    # key=value after an option (r1 eval MODEL --k 4 limit=2) is left over by argparse: it joins the items
    args, extra = parser.parse_known_args(argv)
    unknown = [x for x in extra if args.command not in ("eval", "sample") or x.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "eval":
        args.items += extra
        return cmd_eval(args)
    if args.command == "sample":
        args.items += extra
        return cmd_sample(args)
    if args.command == "sft":
        return cmd_sft(args)
    if args.command == "pipeline":
        return cmd_pipeline(args)
    return cmd_score(args) if args.command == "score" else cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
