"""Plots (matplotlib PNG) and ``report.md`` for a run directory, from its metrics and evaluations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _smooth(values: list[float], width: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - width + 1):i + 1] if v is not None and not math.isnan(v)]
        out.append(sum(window) / len(window) if window else float("nan"))
    return out


def plot_curves(rows: list[dict], plots: Path) -> list[str]:
    """Write plots/reward.png and plots/length.png; return their paths relative to the run."""
    plots.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    curves = [("reward/accuracy", "accuracy"), ("reward/format", "format"),
              ("rollout/reasoning_frac", "share reasoning step by step")]
    if rows and rows[0].get("rollout/readability") is not None:
        curves.append(("rollout/readability", "readability (lines in the readable notation)"))
    for key, label in curves:
        ax.plot(steps, [r[key] for r in rows], alpha=0.25)
        ax.plot(steps, _smooth([r[key] for r in rows]), label=label, color=ax.lines[-1].get_color())
    ax.set(xlabel="RL step", ylabel="mean over rollouts (T = 1.0)", ylim=(-0.02, 1.02),
           title="Rewards during GRPO (faint: per step; solid: 5-step mean)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(plots / "reward.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("rollout/len_mean", "all completions"), ("rollout/len_correct", "correct"),
                       ("rollout/len_incorrect", "incorrect")):
        ax.plot(steps, _smooth([r[key] for r in rows]), label=label)
    ax.set(xlabel="RL step", ylabel="response length (tokens, 5-step mean)", title="Response length during GRPO")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(plots / "length.png", dpi=110)
    plt.close(fig)
    return ["plots/reward.png", "plots/length.png"]


def output_problem(out: Path, suffixes: tuple[str, ...] = ()) -> str | None:
    """Why result files at ``out`` (and beside it with each of ``suffixes``, e.g. ``(".json",)``) could not be
    written, in one phrase, or None; creates ``out``'s folder. For a script to check before hours of work, not after.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create its folder ({e.strerror})"
    for path in (out, *(out.with_suffix(s) for s in suffixes)):
        if path.is_dir():
            return f"{path} is a folder; expected a file path such as /tmp/table.md"
        existed = path.exists()
        try:  # the one sure test (permissions, read-only or virtual file systems): open it for appending
            path.open("a").close()
        except OSError as e:
            return f"cannot write {path} ({e.strerror})"
        if not existed:
            path.unlink()
    return None


def _fmt(value, pct=False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}%" if pct else f"{value:.1f}"


def _seconds(value: float) -> str:
    """A duration for the report: whole seconds from 10 s, one decimal below (a short run's 0.4 s is not "0 s")."""
    return f"{value:.0f} s" if round(value, 1) >= 10 else f"{value:.1f} s"


def _examples(evaluation: dict, n: int = 3) -> str:
    out = []
    for rec in evaluation["problems"][:n]:
        s = rec["samples"][0]
        verdict = "correct" if s["correct"] else "wrong"
        out.append(f"**{rec['question']}** (gold {rec['answer']}; {verdict}, {int(s['length'])} tokens)\n\n"
                   f"```\n{s['completion']}\n```\n")
    return "\n".join(out)


def write_report(run_dir: Path, cfg, extra: dict | None = None) -> Path:
    """Write ``report.md`` (and the plots) for ``run_dir`` with whatever stages have finished."""
    rows = read_metrics(run_dir)
    evals = {}  # "before", "after", "before-<file stem>", ...
    for path in sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").exists() else []:
        if path.stem.split("-")[0] in ("before", "after"):  # r1 eval may write its own files here
            evals[path.stem] = json.loads(path.read_text())
    extra = extra or {}
    pre = extra.get("pretrain") or {}
    if cfg.model_path:
        lines = [f"# Run `{run_dir.name}`: R1-Zero on {cfg.task}, from `{cfg.model_path}`", "",
                 f"The base model is the checkpoint at `{cfg.model_path}` ({cfg.dtype}"
                 f"{f', LoRA r = {cfg.lora_r}' if cfg.lora_r else ''}), prompted in the `{cfg.prompt_format}` format; "
                 f"held-out problems are the first {cfg.eval_problems} of the task's test file.", ""]
    else:
        lines = [f"# Run `{run_dir.name}`: R1-Zero on {cfg.task}, from scratch", ""]
    how_long = f"for {pre['steps']} steps ({pre['seconds'] / 60:.1f} min)" if pre.get("seconds") else "briefly"
    if cfg.base_from:  # pretrained by an earlier run and copied here (run.py), not in this run's wall time
        how_long += f" by an earlier run (copied from `{cfg.base_from}`)"
    lines += [] if cfg.model_path else [
        f"The base model is a tiny Llama-class decoder pretrained {how_long} on a generated corpus in the "
        "R1-Zero template: it stands in for R1-Zero's pretrained base. A share of that corpus "
        f"({100 * cfg.long_frac:.0f}%) reasons step by step inside `<think>`; the rest answers directly. "
        + (f"{100 * cfg.mixed_frac:.0f}% of the step-by-step lines are written in a second notation (`47乘30=1200加210=1410`, "
           "Chinese operator words), the stand-in for the mixed languages of R1-Zero's base; readability is the "
           "share of a completion's thinking lines in the first (1 for a direct answer). "
           if cfg.task == "multiplication" and cfg.mixed_frac else "")
        + "GRPO with rule-based rewards (accuracy + format) then decides which style the policy keeps.", ""]
    if extra.get("status"):
        lines += [f"**Status:** {extra['status']}", ""]
    lines += ["## Held-out evaluation",
              "",
              f"{cfg.eval_problems} held-out problems, {cfg.eval_k} samples each at T = {cfg.eval_temperature}, "
              f"top-p {cfg.eval_top_p} (the R1 protocol). Lengths in tokens.", "",
              "| problems | model | pass@1 | mean length | reasons step by step | pass@1 when reasoning "
              "| pass@1 when direct | format ok | readability | truncated |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(evals, key=lambda n: (n.partition("-")[2], n.startswith("after"))):
        when, _, label = name.partition("-")
        s = evals[name]["summary"]
        model = "base (before RL)" if when == "before" else "after GRPO"
        lines.append(f"| {label or ('test file' if cfg.model_path else 'generated held-out')}, {s['problems']} | {model} | {_fmt(s['pass@1'], True)} | "
                     f"{_fmt(s['len_mean'])} | {_fmt(s['reasoning_frac'], True)} | "
                     f"{_fmt(s.get('acc_reasoning'), True)} | {_fmt(s.get('acc_direct'), True)} | "
                     f"{_fmt(s['format'], True)} | {_fmt(s.get('readability'), True)} | {_fmt(s['truncated_frac'], True)} |")
    lines += ["", "pass@1 when reasoning / direct: the share of correct completions among those whose thinking holds "
              "worked steps / among those that answer directly.", ""]
    if rows:
        plots = plot_curves(rows, run_dir / "plots")
        first, last = rows[0], rows[-1]
        lines += ["## Training curves", "",
                  f"{len(rows)} GRPO steps. Rollout accuracy {_fmt(first['reward/accuracy'], True)} → "
                  f"{_fmt(last['reward/accuracy'], True)}; mean response length {_fmt(first['rollout/len_mean'])} → "
                  f"{_fmt(last['rollout/len_mean'])} tokens; share of rollouts reasoning step by step "
                  f"{_fmt(first['rollout/reasoning_frac'], True)} → {_fmt(last['rollout/reasoning_frac'], True)}.", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots] + [""]
        timing = {k: sum(r[k] for r in rows) for k in ("time/generate_s", "time/reward_s", "time/update_s")}
        lines += ["Time in RL: " + ", ".join(f"{k.split('/')[1][:-2]} {_seconds(v)}" for k, v in timing.items()), ""]
    for when, label in (("before", "Samples before RL (base)"), ("after", "Samples after RL")):
        if when in evals:
            lines += [f"## {label}", "", "First sample of the first three held-out problems.", "",
                      _examples(evals[when]), ""]
    if extra.get("wall_seconds") is not None:
        lines += [f"Wall time: {extra['wall_seconds']:.0f} s. Files: `config.yaml`, `metrics.jsonl`, `samples/`, "
                  "`checkpoints/`, `eval/`, `plots/`, `summary.json`.", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
