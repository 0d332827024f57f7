"""``report.md`` of a pipeline run: one table of every stage, the rejection-sampling counts, and plots.

Every model stage's row comes from the pipeline's ``eval`` stage (the same held-out problems, the R1
protocol); stages evaluated nowhere show "—". Plots (``plots/``): pass@1 and readability per stage
(``stages.png``) and the training curves of the RL and SFT stages side by side (``curves.png``).
"""

from __future__ import annotations

import json
from pathlib import Path

from r1.eval.metrics import mean_se
from r1.report import _fmt, read_metrics


def _evals(recipe, run_dir: Path) -> dict[str, dict]:
    """``{model stage: evaluation summary}`` from every eval stage of the run (the last one wins)."""
    out = {}
    for stage in recipe.stages:
        if stage.kind == "eval":
            for path in sorted((run_dir / stage.name / "eval").glob("*.json")):
                result = json.loads(path.read_text(encoding="utf-8"))
                shares = [sum(bool(x["correct"]) for x in p["samples"]) / len(p["samples"])
                          for p in result["problems"] if p["samples"] and p["samples"][0]["correct"] is not None]
                out[path.stem] = dict(result["summary"], pass1_se=mean_se(shares)[1])
    return out


def _se(se: float | None) -> str:
    return "" if se is None else f" ± {100 * se:.1f}"


def write_pipeline_report(recipe, run_dir: Path) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/plots/*.png`` from whatever stages have finished."""
    from r1.pipeline import stage_state

    evals = _evals(recipe, run_dir)
    lines = [f"# Pipeline `{run_dir.name}`" + (f" (recipe {recipe.name})" if run_dir.name != recipe.name else ""), ""]
    states = {s.name: stage_state(run_dir, s.name) for s in recipe.stages}
    total = sum(st["seconds"] for st in states.values() if st)
    done = sum(1 for st in states.values() if st)
    lines += [f"{done} of {len(recipe.stages)} stages finished, {total / 60:.1f} min of stage time.", ""]
    some = next(iter(evals.values()), None)
    if some:
        lines += [f"Held-out evaluation: {some['problems']} problems, {some['k']} samples each at T = "
                  f"{some['temperature']}, top-p {some['top_p']} (R1 protocol). pass@1 ± its standard error "
                  "over problems. Format: one think block then one answer block. Readability "
                  "(multiplication stand-in): share of thinking lines in the readable notation. Language: R1's "
                  "language-consistency share of the thinking (target script). Lengths in tokens.", ""]
    lines += ["| # | stage | kind | from | pass@1 | format | readability | language | mean length | reasoning | "
              "minutes | notes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, stage in enumerate(recipe.stages):
        st, s = states[stage.name], evals.get(stage.name)
        notes = stage.note
        if st and stage.kind == "sample":
            notes = (notes + "; " if notes else "") + f"kept {st['kept']} of {st['sampled']} completions"
        if st and stage.kind == "sft":
            notes = (notes + "; " if notes else "") + f"{st['examples']} examples, {st['steps']} steps"
        if st and stage.kind == "rl":
            notes = (notes + "; " if notes else "") + f"{st['steps']} steps" + (
                f" (time limit {st['rl_max_seconds']:.0f} s)" if st.get("rl_max_seconds") else "")
        if st and stage.kind == "traces":
            notes = (notes + "; " if notes else "") + f"{st['rows']} traces"
        src = stage.source or stage.data or (stage.path if stage.kind == "model" else "")
        if stage.kind == "sft":
            src = f"{stage.source} on {stage.data}"
        cells = ["—"] * 6
        if s:
            cells = [_fmt(s["pass@1"], True) + _se(s.get("pass1_se")), _fmt(s["format"], True),
                     _fmt(s.get("readability"), True), _fmt(s.get("language"), True), _fmt(s["len_mean"]),
                     _fmt(s["reasoning_frac"], True)]
        minutes = f"{st['seconds'] / 60:.1f}" if st else ("running/pending")
        lines.append(f"| {i + 1} | {stage.name} | {stage.kind} | {src or '—'} | " + " | ".join(cells)
                     + f" | {minutes} | {notes} |")
    lines.append("")
    samples = [(s, states[s.name]) for s in recipe.stages if s.kind == "sample" and states[s.name]]
    for stage, st in samples:
        drops = ", ".join(f"{k} {v}" for k, v in st["dropped"].items() if v)
        lines += [f"Rejection sampling `{stage.name}` (from `{stage.source}`): {st['sampled']} completions sampled, "
                  f"{st['kept']} kept ({st['problems_kept']} prompts with at least one); dropped: {drops or 'none'}.", ""]
    plots = _plots(recipe, run_dir, evals)
    lines += [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += ["Each stage's folder holds its config.yaml, metrics.jsonl, checkpoints and (RL) its own report.md.", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _plots(recipe, run_dir: Path, evals: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = []
    (run_dir / "plots").mkdir(exist_ok=True)
    names = [s.name for s in recipe.stages if s.name in evals]
    if names:
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)) + 1.2, 3.8))
        x = range(len(names))
        keys = [("pass@1", "pass@1"), ("readability", "readability"), ("format", "format")]
        keys = [(k, label) for k, label in keys if any(evals[n].get(k) is not None for n in names)]
        width = 0.8 / len(keys)
        for j, (k, label) in enumerate(keys):
            vals = [100 * (evals[n].get(k) or 0) for n in names]
            bars = ax.bar([i + (j - (len(keys) - 1) / 2) * width for i in x], vals, width, label=label)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(list(x), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("% on held-out problems")
        ax.set_ylim(0, 109)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        ax.set_title(f"{recipe.name}: every stage, R1 evaluation protocol", fontsize=10)
        fig.tight_layout()
        fig.savefig(run_dir / "plots" / "stages.png", dpi=110)
        plt.close(fig)
        out.append("plots/stages.png")
    trained = [s for s in recipe.stages if s.kind in ("rl", "sft") and (run_dir / s.name / "metrics.jsonl").exists()]
    if trained:
        fig, axes = plt.subplots(1, len(trained), figsize=(3.4 * len(trained), 3.0), squeeze=False)
        for ax, stage in zip(axes[0], trained):
            rows = read_metrics(run_dir / stage.name)
            steps = [r["step"] for r in rows]
            if stage.kind == "rl":
                ax.plot(steps, [r["reward/accuracy"] for r in rows], label="accuracy")
                if rows and "rollout/readability" in rows[0]:
                    ax.plot(steps, [r["rollout/readability"] for r in rows], label="readability")
                ax.plot(steps, [r["rollout/reasoning_frac"] for r in rows], label="reasoning", alpha=0.6)
                ax.set_ylim(-0.02, 1.02)
                ax.set_xlabel("GRPO step (rollouts)")
            else:
                ax.plot(steps, [r["train/loss"] for r in rows], label="loss (nats/token)")
                ax.set_xlabel("SFT step")
            ax.set_title(stage.name, fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run_dir / "plots" / "curves.png", dpi=110)
        plt.close(fig)
        out.append("plots/curves.png")
    return out
