"""``r1 eval MODEL``: the R1 evaluation protocol on benchmarks, every setting that moves the number recorded.

    r1 eval MODEL [--benchmarks math500,aime24,...] [--k K] [--out DIR] [key=value ...]

MODEL is one of

* a run directory (``config.yaml``): its last RL checkpoint (``checkpoints/step-*``), else
  ``checkpoints/base``, else its ``model_path``; every setting comes from its config. The benchmark
  ``heldout`` is its own held-out set exactly as ``r1 run`` evaluated it (same problems, k, seed, batch).
* a checkpoint directory of a run (``<run>/checkpoints/<name>``): that checkpoint, with the run's config.
* any local Hugging Face model directory: the ``RunConfig`` defaults, with ``max_new_tokens=1024``.

``key=value`` sets ``RUN_KEYS`` (sampling, prompt, dtype, device), ``limit=N`` (the first N problems of
each benchmark) and ``<benchmark>_file=PATH``. Outputs, in ``--out`` (default ``<run>/eval/`` for a run
directory, else ``runs/eval-<model folder name>/``):

* ``<benchmark>.json``: every sample (completion, extracted answer, correctness, length, truncation),
  per problem the correct count, the pass@k' curve and the vote, and the summary;
* ``results.json``: the model path and sha256 of its weights, seed, sampling parameters, max tokens,
  prompt settings, engine and library versions, data-file hashes and every benchmark's summary;
* ``results.md``: the table to paste into a paper.

Reproducible: the same seed and settings on the same machine give byte-identical files, except the
top-level ``"time"`` field of the JSON files (wall times, the start timestamp). Truncated completions
(no EOS within ``max_new_tokens``) are scored as produced and counted (``truncated_frac``).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from r1.config import RunConfig, load_config
from r1.eval.benchmarks import (BENCHMARKS, HELDOUT, KNOWN, add_metrics, check_name, default_file, file_sha256,
                                load_benchmark)
from r1.eval.protocol import evaluate, heldout_problems

console = Console(soft_wrap=True)
ENGINE = "transformers generate"
RUN_KEYS = ("seed", "threads", "max_new_tokens", "eval_temperature", "eval_top_p", "eval_batch_size",
            "prompt_format", "system_prompt", "instruction", "dtype", "device")
FILE_KEYS = tuple(f"{name}_file" for name in BENCHMARKS)
HF_MAX_NEW_TOKENS = 1024  # a bare model folder has no recipe; R1's 32768 is out of reach on a CPU
DEFAULT_BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "gsm8k")  # without a run directory
VERSIONED = ("torch", "transformers", "tokenizers", "math-verify", "datasets", "r1")


class EvalError(ValueError):
    """Bad input to ``r1 eval``; the message is one line naming the value and what was expected."""


@dataclass(frozen=True)
class Target:
    """What MODEL names: ``kind`` "run", "checkpoint" or "model"; the folder whose weights are loaded; the run."""

    kind: str
    model_dir: Path
    run_dir: Path | None


_MODEL_HINT = "expected a run directory (config.yaml), a checkpoint directory or a local Hugging Face model directory"


def resolve_model(arg: str) -> Target:
    """The model folder MODEL names (module docstring). Raises EvalError when there is none."""
    path = Path(arg)
    if not path.is_dir():
        raise EvalError(f"MODEL {arg!r}: no such directory ({_MODEL_HINT})")
    if (path / "config.yaml").is_file():
        ckpts = sorted(p for p in (path / "checkpoints").glob("step-*") if (p / "trainer_state.pt").exists())
        if ckpts:
            return Target("run", ckpts[-1], path)
        if (path / "checkpoints" / "base" / "model.safetensors").is_file():
            return Target("run", path / "checkpoints" / "base", path)
        model_path = (load_config(path / "config.yaml").model_path or "").strip()
        if model_path:
            return Target("run", Path(model_path), path)
        raise EvalError(f"MODEL {arg!r}: a run directory without any checkpoint yet (expected checkpoints/step-* "
                        "or checkpoints/base)")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise EvalError(f"MODEL {arg!r}: no config.yaml, config.json or adapter_config.json there ({_MODEL_HINT})")
    run = path.parent.parent
    if path.parent.name == "checkpoints" and (run / "config.yaml").is_file():
        return Target("checkpoint", path, run)
    return Target("model", path, None)


def resolve_settings(target: Target, items: list[str]) -> tuple[RunConfig, int | None, dict[str, str]]:
    """``(cfg, limit, files)`` from the run's config (or the defaults) and the ``key=value`` items.

    Raises:
        EvalError, ConfigError: an item that is not key=value, an unknown key, a bad value.
    """
    overrides, limit, files = [], None, {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EvalError(f"argument {item!r}: expected key=value (MODEL goes first)")
        if key == "limit":
            if not value.strip().isdigit() or int(value) < 1:
                raise EvalError(f"limit={value!r}: expected an integer >= 1 (the first N problems of each benchmark)")
            limit = int(value)
        elif key in FILE_KEYS:
            files[key[:-len("_file")]] = value
        elif key in RUN_KEYS:
            overrides.append(item)
        else:
            raise EvalError(f"unknown key {key!r}; expected one of {', '.join((*RUN_KEYS, 'limit', *FILE_KEYS))}")
    if target.run_dir is not None:
        cfg = load_config(target.run_dir / "config.yaml", overrides)
    else:
        cfg = load_config(None, [f"max_new_tokens={HF_MAX_NEW_TOKENS}", *overrides])
    return cfg, limit, files


def parse_benchmarks(arg: str | None, target: Target) -> list[str]:
    """Benchmark names from ``--benchmarks`` (default: ``heldout`` for a run, else ``DEFAULT_BENCHMARKS``)."""
    if arg is None:
        return [HELDOUT] if target.run_dir is not None else list(DEFAULT_BENCHMARKS)
    names = [n.strip() for n in arg.split(",") if n.strip()]
    if not names:
        raise EvalError(f"--benchmarks {arg!r}: expected a comma-separated list of {', '.join(KNOWN)}")
    for name in names:
        check_name(name)
    if HELDOUT in names and target.run_dir is None:
        raise EvalError(f"benchmark {HELDOUT!r} needs a run directory: {str(target.model_dir)!r} has no run "
                        "config.yaml (expected MODEL = runs/<name> or one of its checkpoints)")
    if len(set(names)) != len(names):
        raise EvalError(f"--benchmarks {arg!r}: a benchmark is named twice; expected each once")
    return names


def _plan(names, cfg, k, limit, files) -> list[dict]:
    """Per benchmark: task, problems (limited), k, data file and its sha256. Loads every file before any model."""
    plan = []
    for name in names:
        if name == HELDOUT:
            from r1.tasks import make_task
            try:
                task = make_task(cfg)
                problems = heldout_problems(task, cfg.eval_problems, cfg.seed)
            except (FileNotFoundError, ValueError) as exc:
                raise EvalError(f"benchmark heldout: {str(exc).splitlines()[0]}") from None
            path, bench_k = getattr(task, "test_file", "") or "", cfg.eval_k
        else:
            path = files.get(name) or default_file(name)
            task, problems = load_benchmark(name, path)
            bench_k = BENCHMARKS[name].k
        plan.append({"name": name, "task": task, "problems": problems[:limit] if limit else problems,
                     "k": k or bench_k, "file": str(Path(path).resolve()) if path else None,
                     "file_sha256": file_sha256(path) if path else None})
    return plan


def weights_sha256(model_dir: Path) -> dict[str, str]:
    """sha256 of every ``*.safetensors`` file of ``model_dir`` (and, for a LoRA checkpoint, of its base)."""
    out = {p.name: file_sha256(p) for p in sorted(Path(model_dir).glob("*.safetensors"))}
    adapter = Path(model_dir) / "adapter_config.json"
    if adapter.is_file() and not (Path(model_dir) / "config.json").is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path") or ""
        out.update({f"base/{k}": v for k, v in weights_sha256(Path(base)).items()} if Path(base).is_dir() else {})
    return out


def versions() -> dict[str, str | None]:
    """Versions of Python and of the libraries that change the numbers, and ``r1_git``: the commit of the r1
    source when it is a git checkout (``+dirty`` when ``src/`` has uncommitted changes), else None."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    repo = Path(__file__).resolve().parents[3]
    try:
        git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=10, check=True).stdout.strip()
        out["r1_git"] = git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "src") else "")
    except (OSError, subprocess.SubprocessError):
        out["r1_git"] = None
    return out


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console)


def _run_one(model, tokenizer, item: dict, cfg: RunConfig) -> tuple[dict, float]:
    """Evaluate one benchmark with the R1 protocol; ``(result with metrics and prompts, seconds)``."""
    from r1.models.prompts import prompt_for

    bench_cfg = dataclasses.replace(cfg, eval_k=item["k"])
    start = time.time()
    with _progress() as bar:
        t = bar.add_task(f"eval {item['name']}", total=len(item["problems"]) * item["k"], rate="")

        def tick(n: int, tokens: int) -> None:
            dt = max(1e-9, time.time() - start)
            bar.update(t, completed=n, rate=f"{n / dt:.1f} samples/s, {tokens / dt:.0f} tokens/s")
        result = evaluate(model, tokenizer, item["task"], item["problems"], bench_cfg, on_chunk=tick)
    seconds = time.time() - start
    add_metrics(result, item["task"], item["problems"])
    for record, problem in zip(result["problems"], item["problems"]):
        record["prompt"] = prompt_for(tokenizer, problem.question, bench_cfg).text
    return result, seconds


def _settings(cfg: RunConfig, device: str, limit: int | None) -> dict:
    return {"seed": cfg.seed, "temperature": cfg.eval_temperature, "top_p": cfg.eval_top_p, "top_k": None,
            "max_new_tokens": cfg.max_new_tokens, "eval_batch_size": cfg.eval_batch_size,
            "prompt_format": cfg.prompt_format, "system_prompt": cfg.system_prompt, "instruction": cfg.instruction,
            "dtype": cfg.dtype, "device": device, "threads": torch.get_num_threads(), "limit": limit}


def default_out(target: Target) -> Path:
    """``<run>/eval`` for a run directory, else ``runs/eval-<model folder name>``."""
    return target.run_dir / "eval" if target.kind == "run" else Path("runs") / f"eval-{target.model_dir.name}"


def run_eval(model_arg: str, benchmarks: str | None, k: int | None, out: str | None, items: list[str]) -> Path:
    """Evaluate MODEL on the benchmarks and write the outputs (module docstring); return the output folder.

    Raises:
        EvalError, r1.config.ConfigError, r1.eval.benchmarks.BenchmarkError, r1.models.hf.ModelLoadError,
        r1.models.prompts.PromptFormatError: bad input, one line each.
    """
    from transformers.utils import logging as hf_logging

    from r1.models.hf import load_policy, resolve_device
    from r1.models.prompts import prompt_for

    started, stamp = time.time(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    if k is not None and k < 1:
        raise EvalError(f"--k {k}: expected an integer >= 1 (samples per problem)")
    target = resolve_model(model_arg)
    names = parse_benchmarks(benchmarks, target)
    cfg, limit, files = resolve_settings(target, items)
    unused = sorted(set(files) - set(names))
    if unused:
        raise EvalError(f"{unused[0]}_file is set but {unused[0]} is not among --benchmarks {','.join(names)}")
    plan = _plan(names, cfg, k, limit, files)
    out_dir = Path(out) if out else default_out(target)
    hf_logging.disable_progress_bar()
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    device = str(resolve_device(cfg.device))  # device='cuda' without a GPU was refused by load_config (validate)
    model, tokenizer = load_policy(target.model_dir, cfg.dtype, device=device, trainable=False)
    for item in plan:  # a prompt setting the tokenizer cannot render fails here, before anything is written
        if item["problems"]:
            prompt_for(tokenizer, item["problems"][0].question, cfg)
    sizes = ", ".join(f"{p['name']} {len(p['problems'])}x{p['k']}" for p in plan)
    console.print(f"model: {target.model_dir} ({target.kind}); {sizes}; T={cfg.eval_temperature}, "
                  f"top-p {cfg.eval_top_p}, up to {cfg.max_new_tokens} tokens, seed {cfg.seed}")
    results = {"model": {"path": str(target.model_dir.resolve()), "kind": target.kind,
                         "run_dir": str(target.run_dir.resolve()) if target.run_dir else None,
                         "weights_sha256": weights_sha256(target.model_dir)},
               "settings": _settings(cfg, device, limit), "engine": ENGINE, "versions": versions(), "benchmarks": {}}
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for item in plan:
        result, seconds[item["name"]] = _run_one(model, tokenizer, item, cfg)
        info = {"benchmark": item["name"], "task": item["task"].name, "file": item["file"],
                "file_sha256": item["file_sha256"], "k": item["k"]}
        (out_dir / f"{item['name']}.json").write_text(json.dumps(
            {**info, "summary": result["summary"], "problems": result["problems"],
             "time": {"seconds": seconds[item["name"]]}}, indent=1, ensure_ascii=False))
        results["benchmarks"][item["name"]] = {**info, "summary": result["summary"]}
        console.print(_line(item["name"], result["summary"]))
    results["time"] = {"started": stamp, "wall_seconds": time.time() - started, "benchmark_seconds": seconds}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    (out_dir / "results.md").write_text(results_markdown(results))
    console.print(f"[bold green]done[/] in {results['time']['wall_seconds']:.0f} s: {out_dir / 'results.md'}")
    return out_dir


def run_compare(items: list[str], out: str | None) -> Path:
    """Print the side-by-side comparison of results (``r1.eval.compare``) and write ``compare.md`` in ``out``
    (default: the current folder); return its path.

    Raises:
        EvalError: fewer than two results, a missing or unreadable results.json, key=value items.
    """
    from r1.eval.compare import compare_markdown, load_results, print_comparison

    bad = [i for i in items if "=" in i]
    if bad:
        raise EvalError(f"argument {bad[0]!r}: --compare takes results.json files or folders, not key=value")
    if len(items) < 2:
        raise EvalError(f"--compare {' '.join(items) or '(nothing)'}: expected at least two results.json files "
                        "or folders holding them")
    try:
        loaded = [load_results(i) for i in items]
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    paths, all_results = [p for p, _ in loaded], [r for _, r in loaded]
    print_comparison(paths, all_results, console)
    out_dir = Path(out) if out else Path(".")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(compare_markdown(paths, all_results))
    console.print(f"written: {out_dir / 'compare.md'}")
    return out_dir / "compare.md"


def _pct(value, se=None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def _line(name: str, s: dict) -> str:
    k, top = s["k"], s["pass@k"][str(s["k"])]
    return (f"{name}: pass@1 {_pct(s['pass@1'], s['pass@1_se'])}%, pass@{k} {_pct(top['mean'], top['se'])}%, "
            f"cons@{k} {_pct(s['cons@k'], s['cons@k_se'])}%, mean length {s['len_mean']:.1f} tokens, "
            f"truncated {100 * s['truncated_frac']:.1f}%")


def results_markdown(results: dict) -> str:
    """``results.md``: one row per benchmark, figures in % ± one standard error over problems."""
    st, m = results["settings"], results["model"]
    weights = ", ".join(f"{k} {v[:16]}" for k, v in m["weights_sha256"].items()) or "none found"
    v = results["versions"]
    lines = [f"# r1 eval: {m['path']}", "",
             f"Weights sha256 (first 16): {weights}. Sampling: T = {st['temperature']}, top-p {st['top_p']}, "
             f"up to {st['max_new_tokens']} new tokens, seed {st['seed']}, prompt format {st['prompt_format']}"
             + (f", instruction {st['instruction']!r}" if st["instruction"] else "")
             + (f", first {st['limit']} problems of each benchmark" if st["limit"] else "") + ". "
             f"Engine: {results['engine']} (torch {v['torch']}, transformers {v['transformers']}, "
             f"math-verify {v['math-verify']}, r1 {v['r1']}), {st['dtype']} on {st['device']}.", "",
             "| benchmark | problems | k | pass@1 (%) | pass@k (%) | cons@k (%) | mean length (tokens) | truncated |",
             "|---|---|---|---|---|---|---|---|"]
    for name, b in results["benchmarks"].items():
        s = b["summary"]
        top = s["pass@k"][str(s["k"])]
        bad_gold = s["unparseable_gold"]
        problems = str(s["problems"]) + (f" ({bad_gold} unparseable gold)" if bad_gold else "")
        lines.append(f"| {name} | {problems} | {s['k']} | {_pct(s['pass@1'], s['pass@1_se'])} | "
                     f"{_pct(top['mean'], top['se'])} | {_pct(s['cons@k'], s['cons@k_se'])} | {s['len_mean']:.1f} | "
                     f"{100 * s['truncated_frac']:.1f}% |")
    lines += ["", "pass@1: mean correctness over the k samples (R1 §3); pass@k: unbiased estimator (Chen et al. "
              "2021, Eq. 1) at k = the samples drawn; cons@k: majority vote over the k final answers. ± is one "
              "standard error of the mean over problems (r1/eval/metrics.py). Truncated: completions without EOS "
              "within the limit, scored as produced.", ""]
    return "\n".join(lines)

