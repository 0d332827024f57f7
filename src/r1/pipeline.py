"""``r1 pipeline RECIPE``: the DeepSeek-R1 recipe as stages, each in its own folder, resumable.

    r1 pipeline RECIPE [key=value ...]      a new run directory runs/<pipeline>[-N]
    r1 pipeline --resume runs/<pipeline>    skip finished stages, resume the interrupted one

DeepSeek-R1 (arXiv 2501.12948) §2.3: cold start (SFT on a few thousand readable long CoTs) ->
reasoning-oriented RL (accuracy + language consistency) -> rejection sampling from that checkpoint ->
SFT of the base (DeepSeek-V3-Base) on the sampled data -> RL for all scenarios; §2.4: distillation =
SFT of smaller dense models on ~800k samples of R1, no RL.

**Recipe** (YAML; ``configs/r1-tiny.yaml``, ``configs/distill-tiny.yaml``)::

    pipeline: r1-tiny               # run directory name (default: the file's stem)
    params: {teacher: runs/x}       # named values; a stage field "${teacher}" is replaced; key=value sets them
    seed: 0                         # every other top-level key is a RunConfig key shared by all stages
                                    # (key=value on the command line sets one for every stage, over their set;
                                    #  STAGE.key=value one stage's option or config key)
    x-student: &student {...}       # keys starting with x- are ignored: YAML anchors to reuse in stages' set
    stages:
      - name: base                  # folder <run>/<name>/; names are unique
        kind: pretrain              # pretrain | model | traces | sft | rl | sample | eval
        set: {hidden_size: 96}      # RunConfig keys for this stage only
      - {name: cold-start-data, kind: traces, options: {n: 300}}
      - {name: cold-start, kind: sft, from: base, data: cold-start-data}
      - {name: reasoning-rl, kind: rl, from: cold-start, set: {language_weight: 0.5}}
      - {name: rejection-sampling, kind: sample, from: reasoning-rl, options: {k: 4, limit: 1000}}
      - {name: eval, kind: eval, models: [base, cold-start, reasoning-rl]}

Kinds (``from`` = a stage whose final model starts this one; ``data`` = a stage whose jsonl is read):

* ``pretrain``: the tiny policy of the stage's config, pretrained on the task's corpus (as ``r1 run``),
  into ``checkpoints/base``; with ``model_path`` set, nothing is trained and the model is that folder.
* ``model``: an existing model, ``path`` (a run directory, a checkpoint or a Hugging Face folder, e.g.
  an RL teacher); nothing is trained.
* ``traces``: cold-start data. Multiplication: ``options.n`` step-by-step traces of training problems
  in the readable notation (``mixed_frac`` 0), written as R1's curated cold-start CoTs would be; any
  task: ``options.file``, a jsonl of traces, copied. Output ``traces.jsonl``.
* ``sft``: ``r1.sft.run_sft`` with ``init_from`` = ``from``'s model and ``sft_file`` = ``data``'s output.
* ``rl``: ``r1.run.run`` (GRPO, evaluation before and after) from ``from``'s model, which is also the
  reference model of the KL term. ``same_time_as: [stage, ...]`` sets ``rl_max_seconds`` to those
  stages' summed wall time (R1 §4.1's comparison of distillation with RL at equal cost).
* ``sample``: ``r1.sample.sample_to_file`` (rejection sampling, R1 §2.3.3) from ``from``'s model with
  ``options`` (``r1.sample.SampleOptions``); output ``samples.jsonl`` and ``samples.summary.json``.
* ``eval``: every stage of ``models`` (default: all model stages) on the same held-out problems with
  the R1 protocol (``r1.eval.protocol.evaluate``), one ``eval/<stage>.json`` each, then ``report.md``.

**Resume.** A stage is finished when ``<stage>/stage.json`` says so (written last). ``--resume`` skips
finished stages; an interrupted ``sft`` or ``rl`` stage continues from its last checkpoint in its folder
(the same batches and seeds as an uninterrupted run); ``pretrain``, ``traces``, ``sample`` restart (their
outputs are written at the end); ``eval`` keeps the models already evaluated. A stage's ``seconds``
add up over attempts (a running attempt records its time every 5 s, so one ended by SIGKILL counts up to
its last record); ``report.md`` is rewritten after every stage. Ctrl-C: the running stage saves what it can (see ``r1 run``), exit code 130.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r1.config import ConfigError, RunConfig, load_config, load_recipe_yaml, save_config, yaml_error

KINDS = ("pretrain", "model", "traces", "sft", "rl", "sample", "eval")
MODEL_KINDS = ("pretrain", "model", "sft", "rl")  # stages whose output is a model
_STAGE_KEYS = {"name", "kind", "from", "data", "set", "options", "models", "path", "same_time_as", "note"}
_PARAM = re.compile(r"\$\{(\w+)\}")
_OPTION_KEYS = {"n", "file", "k", "limit", "temperature", "top_p", "max_tokens", "language", "min_language",
                "min_readability", "max_repeat"}  # traces options and r1.sample.SampleOptions


@dataclass
class Stage:
    """One stage of a recipe (module docstring)."""

    name: str
    kind: str
    source: str = ""  # "from": the stage whose final model this one starts from
    data: str = ""  # the stage whose jsonl output this one reads
    set: dict = field(default_factory=dict)  # RunConfig overrides for this stage
    options: dict = field(default_factory=dict)  # kind-specific options (traces, sample)
    models: list = field(default_factory=list)  # eval: stages to evaluate
    path: str = ""  # model: the existing model
    same_time_as: list = field(default_factory=list)  # rl: rl_max_seconds = these stages' wall time
    note: str = ""  # one line shown in the report


@dataclass
class Recipe:
    """A parsed pipeline recipe: its name, shared config keys, parameters and stages."""

    name: str
    shared: dict  # RunConfig keys of the recipe, for every stage (a stage's set wins)
    params: dict
    stages: list[Stage]
    source: dict  # the YAML as read (with parameters and command-line keys set), copied into the run directory
    forced: dict = field(default_factory=dict)  # RunConfig keys from the command line: win over the stages' set

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _substitute(value: Any, params: dict, where: str) -> Any:
    """``value`` with every ``${param}`` replaced (recursively in lists and dicts)."""
    if isinstance(value, str):
        def one(m):
            if m.group(1) not in params:
                raise ConfigError(f"{where}: unknown parameter ${{{m.group(1)}}}; recipe parameters: "
                                  f"{', '.join(params) or 'none'}")
            return str(params[m.group(1)])
        return _PARAM.sub(one, value)
    if isinstance(value, list):
        return [_substitute(v, params, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, params, where) for k, v in value.items()}
    return value


def parse_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a pipeline recipe; ``overrides`` (``key=value``) set parameters or shared RunConfig keys.

    Raises:
        ConfigError: unreadable file, unknown stage kind or key, a ``from``/``data``/``models`` naming no
            earlier stage of the right kind, an unknown parameter, or a config key/value ``load_config`` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found: expected a pipeline YAML such as configs/r1-tiny.yaml")
    try:
        raw = load_recipe_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {yaml_error(exc)}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise ConfigError(f"recipe {str(path)!r}: expected a mapping with a non-empty 'stages' list "
                          "(a pipeline recipe; for one run use r1 run)")
    params = dict(raw.get("params") or {})
    shared = {k: v for k, v in raw.items()
              if k not in ("pipeline", "params", "stages", "forced") and not str(k).startswith("x-")}
    forced = dict(raw.get("forced") or {})
    names = [e.get("name") for e in raw["stages"] if isinstance(e, dict)]
    config_keys = {f.name for f in dataclasses.fields(RunConfig)}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {item!r}: expected key=value (the recipe goes first)")
        stage_name, dot, stage_key = key.rpartition(".")
        if dot and stage_name in names:  # STAGE.KEY=VALUE: one stage's option (sample, traces) or config key
            entry = next(e for e in raw["stages"] if e.get("name") == stage_name)
            section = "options" if entry.get("kind") in ("sample", "traces") and stage_key in _OPTION_KEYS else "set"
            if section == "set" and stage_key not in config_keys:
                options = sorted(_OPTION_KEYS - {"n", "file"}) if entry.get("kind") == "sample" else \
                    ["n", "file"] if entry.get("kind") == "traces" else []
                raise ConfigError(f"argument {item!r}: {stage_key!r} is not a config key"
                                  + (f" nor an option of stage {stage_name!r} ({', '.join(options)})" if options else ""))
            entry[section] = dict(entry.get(section) or {}, **{stage_key: yaml.safe_load(value) if value else value})
        elif dot:
            raise ConfigError(f"argument {item!r}: no stage named {stage_name!r} (stages: {', '.join(map(str, names))})")
        elif key in params:
            params[key] = value
        elif key not in config_keys:
            raise ConfigError(f"argument {item!r}: {key!r} is neither a parameter of this recipe (parameters: "
                              f"{', '.join(params) or 'none'}) nor a config key")
        else:
            forced[key] = value
    source = dict(raw, params=params, **({"forced": forced} if forced else {}))
    stages, seen = [], {}
    for i, entry in enumerate(raw["stages"]):
        where = f"stage {i + 1}"
        if not isinstance(entry, dict) or "name" not in entry or "kind" not in entry:
            raise ConfigError(f"{where}: expected a mapping with name and kind")
        entry = _substitute(entry, params, f"stage {entry['name']!r}")
        where = f"stage {entry['name']!r}"
        unknown = set(entry) - _STAGE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r}; expected {', '.join(sorted(_STAGE_KEYS))}")
        if entry["kind"] not in KINDS:
            raise ConfigError(f"{where}: kind {entry['kind']!r}, expected one of {', '.join(KINDS)}")
        if entry["name"] in seen or not re.fullmatch(r"[\w.-]+", str(entry["name"])):
            raise ConfigError(f"{where}: expected a unique name of letters, digits, '-', '_' or '.'")
        stage = Stage(name=entry["name"], kind=entry["kind"], source=entry.get("from", ""), data=entry.get("data", ""),
                      set=entry.get("set") or {}, options=entry.get("options") or {}, models=entry.get("models") or [],
                      path=str(entry.get("path", "")), same_time_as=entry.get("same_time_as") or [],
                      note=entry.get("note", ""))
        _check_stage(stage, seen, where)
        seen[stage.name] = stage
        stages.append(stage)
    recipe = Recipe(str(raw.get("pipeline") or path.stem), shared, params, stages, source, forced)
    for stage in stages:  # every stage's config must load now, not an hour into the pipeline (the model
        # folders of sft/rl/sample stages exist only later: "scratch" stands in for them here)
        if stage.kind not in ("traces", "model"):
            stage_config(recipe, stage, {"init_from": "scratch"} if stage.kind != "pretrain" else None)
    return recipe


def _check_stage(stage: Stage, seen: dict, where: str) -> None:
    needs_model = {"sft": True, "rl": True, "sample": True}
    if needs_model.get(stage.kind) and (stage.source not in seen or seen[stage.source].kind not in MODEL_KINDS):
        raise ConfigError(f"{where}: from={stage.source!r}, expected an earlier stage that makes a model "
                          f"({', '.join(n for n, s in seen.items() if s.kind in MODEL_KINDS) or 'none yet'})")
    if stage.kind == "sft" and (stage.data not in seen or seen[stage.data].kind not in ("traces", "sample")):
        raise ConfigError(f"{where}: data={stage.data!r}, expected an earlier traces or sample stage")
    if stage.kind == "model" and not stage.path:
        raise ConfigError(f"{where}: kind model needs path: a run directory, checkpoint or Hugging Face folder")
    if stage.kind in ("model", "traces") and stage.set:
        raise ConfigError(f"{where}: kind {stage.kind} takes no set (it trains nothing); got {sorted(stage.set)}")
    if stage.kind in ("sample", "traces"):
        from r1.sample import SampleOptions
        known = {f.name for f in dataclasses.fields(SampleOptions)} if stage.kind == "sample" else {"n", "file"}
        bad = sorted(set(stage.options) - known)
        if bad:
            raise ConfigError(f"{where}: unknown option {bad[0]!r}; expected {', '.join(sorted(known))}")
        if stage.kind == "sample":
            fields = {f.name: f for f in dataclasses.fields(SampleOptions)}
            for key, value in stage.options.items():
                want = type(fields[key].default)
                if not isinstance(value, want) or isinstance(value, bool) and want is not bool:
                    if not (want is float and isinstance(value, int) and not isinstance(value, bool)):
                        raise ConfigError(f"{where}: option {key}={value!r}, expected {want.__name__}")
            try:
                SampleOptions(**stage.options).validate()
            except (ConfigError, TypeError) as exc:
                raise ConfigError(f"{where}: {exc}") from None
        n = stage.options.get("n", 1)
        if stage.kind == "traces" and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(f"{where}: option n={n!r}, expected a number of traces >= 1")
    for name in stage.models + stage.same_time_as:
        if name not in seen:
            raise ConfigError(f"{where}: {name!r} is not an earlier stage")
    for name in stage.models:
        if seen[name].kind not in MODEL_KINDS:
            raise ConfigError(f"{where}: models lists {name!r}, a {seen[name].kind} stage that makes no model")


def stage_config(recipe: Recipe, stage: Stage, extra: dict | None = None) -> RunConfig:
    """The RunConfig of ``stage``: shared keys, then the stage's ``set``, then the command line's keys, then ``extra``.

    Raises:
        ConfigError: a key or value ``load_config`` refuses (the message names the stage).
    """
    values = {**recipe.shared, **stage.set, **recipe.forced, **(extra or {})}
    values.setdefault("name", f"{recipe.name}-{stage.name}")
    items = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]
    try:
        return load_config(None, items)
    except ConfigError as exc:
        raise ConfigError(f"stage {stage.name!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------- running


def stage_state(run_dir: Path, name: str) -> dict | None:
    """The stage's ``stage.json`` (status, kind, seconds, model, output), or None if it never finished."""
    path = run_dir / name / "stage.json"
    return json.loads(path.read_text()) if path.exists() else None


class _Clock:
    """Wall seconds of one stage over all its attempts, kept in ``<stage>/attempts.json``.

    The running attempt's seconds are written every ``every`` seconds by a daemon thread, so an attempt ended
    by SIGKILL still counts (up to the last beat) when the stage is resumed.
    """

    def __init__(self, stage_dir: Path, every: float = 5.0):
        import threading

        self.path, self.every = stage_dir / "attempts.json", every
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.prior = old.get("seconds", 0.0) + old.get("running", 0.0)  # a killed attempt left its last beat
        self.t0, self.done = time.time(), threading.Event()
        self._write(0.0)
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _write(self, running: float) -> None:
        tmp = self.path.with_name("attempts.json.tmp")
        tmp.write_text(json.dumps({"seconds": self.prior, "running": running}))
        tmp.replace(self.path)

    def _beat(self) -> None:
        while not self.done.wait(self.every):
            self._write(time.time() - self.t0)

    def stop(self) -> float:
        """End this attempt; return the stage's seconds over all attempts."""
        self.done.set()
        self.thread.join()
        self.prior += time.time() - self.t0
        self._write(0.0)
        return self.prior


def model_of(run_dir: Path, name: str) -> Path:
    """The final model folder of a finished model stage."""
    state = stage_state(run_dir, name)
    if not state or not state.get("model"):
        raise ConfigError(f"stage {name!r} has no finished model in {run_dir}")
    model = Path(state["model"])
    return model if model.is_absolute() else run_dir / model


def output_of(run_dir: Path, name: str) -> Path:
    """The jsonl written by a finished traces or sample stage."""
    return run_dir / stage_state(run_dir, name)["output"]


def prepare(recipe: Recipe, runs_dir: str | None = None) -> Path:
    """A new run directory ``runs/<pipeline>[-N]`` holding ``recipe.yaml`` (the recipe with parameters set)."""
    root = Path(runs_dir or recipe.forced.get("runs_dir") or recipe.shared.get("runs_dir") or RunConfig.runs_dir)
    run_dir, n = root / recipe.name, 1
    while run_dir.exists():
        run_dir, n = root / f"{recipe.name}-{n}", n + 1
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.source, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return run_dir


def run_pipeline(recipe: Recipe, run_dir: Path) -> dict:
    """Run (or resume) every stage of ``recipe`` in ``run_dir``; return ``{stage: stage.json}``.

    Raises:
        ConfigError: a stage's input is missing or invalid (e.g. a ``model`` stage's path does not exist).
        r1.run.Interrupted, r1.sft.Interrupted, KeyboardInterrupt: Ctrl-C (the stage kept its checkpoint).
    """
    from r1.pipeline_report import write_pipeline_report
    from r1.run import console

    began = time.time()
    console.print(f"pipeline [bold]{recipe.name}[/]: {len(recipe.stages)} stages -> {run_dir}")
    for i, stage in enumerate(recipe.stages):
        state = stage_state(run_dir, stage.name)
        if state and state.get("status") == "finished":
            console.print(f"[dim]stage {i + 1}/{len(recipe.stages)} {stage.name} ({stage.kind}): finished, skipped[/]")
            continue
        console.rule(f"stage {i + 1}/{len(recipe.stages)}: {stage.name} ({stage.kind})")
        stage_dir = run_dir / stage.name
        stage_dir.mkdir(exist_ok=True)
        clock = _Clock(stage_dir)
        try:
            out = RUNNERS[stage.kind](recipe, stage, run_dir, stage_dir)
        finally:
            seconds = clock.stop()
        state = {"status": "finished", "kind": stage.kind, "seconds": seconds, **out}
        tmp = stage_dir / "stage.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(stage_dir / "stage.json")  # the stage is finished exactly when this file exists
        console.print(f"stage {stage.name}: finished in {seconds / 60:.1f} min")
        write_pipeline_report(recipe, run_dir)  # the report so far, after every stage
    report = write_pipeline_report(recipe, run_dir)
    total = sum((stage_state(run_dir, s.name) or {}).get("seconds", 0.0) for s in recipe.stages)
    console.print(f"[bold green]pipeline done[/]: {total / 60:.1f} min of stages ({(time.time() - began) / 60:.1f} in "
                  f"this call); report {report}")
    return {s.name: stage_state(run_dir, s.name) for s in recipe.stages}


def _rel(run_dir: Path, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def _run_pretrain(recipe, stage, run_dir, stage_dir) -> dict:
    from r1.models.tokenizer import build_tokenizer
    from r1.run import _eval_sets, _stage_base
    from r1.tasks import make_task
    import torch

    cfg = stage_config(recipe, stage)
    save_config(cfg, stage_dir / "config.yaml")
    if cfg.model_path:
        return {"model": str(Path(cfg.model_path).resolve())}
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    task = make_task(cfg)
    heldout = {p.key for problems in _eval_sets(cfg, task).values() for p in problems}
    _stage_base(cfg, stage_dir, build_tokenizer(), task, heldout)
    return {"model": _rel(run_dir, stage_dir / "checkpoints" / "base")}


def _resolve_model_stage(stage: Stage) -> Path:
    """The model folder of a ``model`` stage; ConfigError (one line) when ``path`` holds none."""
    from r1.eval.command import EvalError, resolve_model

    if (Path(stage.path) / "recipe.yaml").is_file():
        finished = [p.parent.name for p in sorted(Path(stage.path).glob("*/stage.json"))
                    if json.loads(p.read_text()).get("model")]
        raise ConfigError(f"stage {stage.name!r}: path={stage.path!r} is a pipeline run: expected one of its model "
                          f"stages, e.g. {Path(stage.path) / (finished[-1] if finished else 'final-rl')}")
    try:
        return resolve_model(stage.path).model_dir
    except EvalError as exc:
        raise ConfigError(f"stage {stage.name!r}: path={stage.path!r}: {str(exc).split(': ', 1)[-1]}") from None


def check_inputs(recipe: Recipe) -> None:
    """Raise ConfigError (one line) when an input that must exist before the run starts does not: the model of
    a ``model`` stage, the file of a ``traces`` stage. Called before the run directory is created."""
    for stage in recipe.stages:
        if stage.kind == "model":
            _resolve_model_stage(stage)
        if stage.kind == "traces" and stage.options.get("file") and not Path(stage.options["file"]).is_file():
            raise ConfigError(f"stage {stage.name!r}: options.file={stage.options['file']!r} not found "
                              "(expected a jsonl of traces)")


def _run_model(recipe, stage, run_dir, stage_dir) -> dict:
    return {"model": str(_resolve_model_stage(stage).resolve())}


def _run_traces(recipe, stage, run_dir, stage_dir) -> dict:
    """Cold-start traces: readable step-by-step traces (multiplication) or a copied file."""
    from r1.models.tokenizer import build_tokenizer
    from r1.models.prompts import prompt_for
    from r1.sample import training_problems
    from r1.tasks import make_task

    out = stage_dir / "traces.jsonl"
    opts = dict(stage.options)
    if opts.get("file"):
        src = Path(opts["file"])
        if not src.is_file():
            raise ConfigError(f"stage {stage.name!r}: options.file={str(src)!r} not found (expected a jsonl of traces)")
        shutil.copyfile(src, out)
        return {"output": _rel(run_dir, out), "rows": sum(1 for _ in out.open())}
    cfg = stage_config(recipe, stage)
    if cfg.task != "multiplication":
        raise ConfigError(f"stage {stage.name!r}: generated cold-start traces exist for multiplication only; "
                          f"expected options.file=TRACES.jsonl for task {cfg.task}")
    n = int(opts.get("n", 300))
    task, tokenizer = make_task(cfg), build_tokenizer()
    rng = random.Random(f"{cfg.seed}/cold-start")
    rows = []
    for p in training_problems(task, dataclasses.replace(cfg, seed=cfg.seed + 1), n):
        completion = task.trace(p, True, rng, mixed_frac=0.0)
        rows.append({"question": p.question, "prompt": prompt_for(tokenizer, p.question, cfg).text,
                     "completion": completion, "answer": p.answer})
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return {"output": _rel(run_dir, out), "rows": len(rows)}


def _run_sft(recipe, stage, run_dir, stage_dir) -> dict:
    from r1.sft import run_sft

    cfg = stage_config(recipe, stage, {"init_from": str(model_of(run_dir, stage.source)),
                                       "sft_file": str(output_of(run_dir, stage.data))})
    summary = run_sft(cfg, stage_dir)
    return {"model": _rel(run_dir, stage_dir / summary["last_checkpoint"]), "steps": summary["steps"],
            "examples": summary["examples"], "loss_last": summary["loss_last"]}


def _is_tiny(model_dir: Path) -> bool:
    """A checkpoint of r1's own tiny policy (character-level WordLevel tokenizer): RL starts it with
    ``base_from``; any other Hugging Face folder with ``model_path``."""
    tok = model_dir / "tokenizer.json"
    return tok.exists() and json.loads(tok.read_text()).get("model", {}).get("type") == "WordLevel"


def _run_rl(recipe, stage, run_dir, stage_dir) -> dict:
    from r1.run import _rl_checkpoints, run

    init = model_of(run_dir, stage.source)
    extra: dict = {"base_from": str(init)} if _is_tiny(init) else {"model_path": str(init)}
    if stage.same_time_as:
        extra["rl_max_seconds"] = sum(stage_state(run_dir, n)["seconds"] for n in stage.same_time_as)
    cfg = stage_config(recipe, stage, extra)
    (stage_dir / "samples").mkdir(parents=True, exist_ok=True)
    if not (stage_dir / "config.yaml").exists():
        save_config(cfg, stage_dir / "config.yaml")
    summary = run(cfg, stage_dir)
    ckpts = _rl_checkpoints(stage_dir)
    return {"model": _rel(run_dir, ckpts[-1]), "steps": summary["steps"],
            "rl_max_seconds": cfg.rl_max_seconds or None}


def _run_sample(recipe, stage, run_dir, stage_dir) -> dict:
    from r1.sample import SampleOptions, sample_to_file

    opts = SampleOptions(**stage.options)
    model = model_of(run_dir, stage.source)
    cfg = stage_config(recipe, stage, {"init_from": str(model)})
    summary = sample_to_file(cfg, opts, model, stage_dir / "samples.jsonl")
    if not summary["kept"] and any(s.data == stage.name for s in recipe.stages):  # not finished: the SFT
        # stage that reads it would have nothing to learn from
        drops = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items() if v)
        raise ConfigError(f"stage {stage.name!r}: kept 0 of {summary['sampled']} completions (dropped: {drops}); "
                          "nothing to fine-tune on: expected a stronger model or looser filters (start a new run, "
                          f"e.g. with {stage.name}.limit=... or {stage.name}.min_readability=0)")
    return {"output": _rel(run_dir, stage_dir / "samples.jsonl"), "sampled": summary["sampled"],
            "kept": summary["kept"], "dropped": summary["dropped"], "problems_kept": summary["problems_kept"]}


def _run_eval(recipe, stage, run_dir, stage_dir) -> dict:
    """Every listed model on the same held-out problems (the first model stage's config decides the set),
    with the main job's evaluation stage (``r1.run._stage_eval``) into ``eval/<stage>.json``."""
    import torch

    from r1.models.hf import load_policy
    from r1.run import _device, _eval_sets, _stage_eval
    from r1.tasks import make_task

    names = stage.models or [s.name for s in recipe.stages if s.kind in MODEL_KINDS and s is not stage]
    cfg = stage_config(recipe, stage, {"init_from": str(model_of(run_dir, names[0]))})
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    task = make_task(cfg)
    problems = _eval_sets(cfg, task)[""]
    results = {}
    for name in names:
        load = lambda n=name: load_policy(model_of(run_dir, n), cfg.dtype, device=_device(cfg), trainable=False)  # noqa: E731
        results[name] = _stage_eval(cfg, stage_dir, load, None, task, problems, name, title=name)
    return {"models": names, "pass@1": {n: r["pass@1"] for n, r in results.items()}}


RUNNERS = {"pretrain": _run_pretrain, "model": _run_model, "traces": _run_traces, "sft": _run_sft, "rl": _run_rl,
           "sample": _run_sample, "eval": _run_eval}
