"""The ``r1`` command.

    r1 run [RECIPE] [key=value ...]     run the main job (default recipe: configs/r1-zero-mult.yaml)
    r1 run --resume runs/<name>         continue an interrupted run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r1.config import ConfigError, load_config

DEFAULT_RECIPE = "r1-zero-mult.yaml"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r1", description="The DeepSeek-R1 recipe, runnable on any budget.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="R1-Zero from scratch: pretrain a tiny base, GRPO, evaluate, report")
    p_run.add_argument("items", nargs="*", metavar="[RECIPE] [key=value]",
                       help="a recipe YAML (default configs/r1-zero-mult.yaml), then overrides")
    p_run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")
    args = parser.parse_args(argv)
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
