"""Variant study: every recipe of ``configs/variants/`` on the main job, several seeds -> docs/variants.md.

Runs ``r1 run configs/variants/<variant>.yaml seed=S eval_every=5`` for each variant and seed (the
first run of a seed pretrains the base; the other variants of that seed reuse it with ``base_from``,
since the base depends only on the seed), two runs at a time with one torch thread each, then writes
the tables and plots between the ``<!-- results -->`` markers of docs/variants.md (the prose around
them is kept). Finished runs are skipped, so an interrupted study resumes where it stopped.

    .venv/bin/python experiments/variant_study.py                  # run what is missing, then write
    .venv/bin/python experiments/variant_study.py --write-only     # only tables and plots

Figures per variant (mean ± sample std over seeds):
    final pass@1: the main job's after-RL evaluation (200 held-out problems, k = 8, T = 0.6, top-p 0.95);
    steps / seconds to 50 %, 70 % and 90 %: first logged ``eval/pass@1`` (100 problems, k = 4, every 5 steps)
        at or above the threshold; seconds are RL training time (evaluations excluded);
    length of correct / incorrect rollouts, KL (k3 estimate to the base; not computed when beta = 0,
        as no reference forward runs then) and entropy (nats per token) over steps, from metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from r1.cli import OneLineParser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["grpo", "dapo", "dr_grpo", "gspo", "rloo"]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / f"{variant}-s{seed}"


def finished(path: Path) -> bool:
    summary = path / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("status") == "finished"


def run_all(out: Path, variants: list[str], seeds: list[int], workers: int, eval_every: int,
            extra: list[str]) -> None:
    """Run every (variant, seed) not yet finished; the first variant of each seed pretrains the base."""
    jobs = [(v, s) for s in seeds for v in variants if not finished(run_dir(out, v, s))]
    first = variants[0]
    lock = threading.Lock()

    def base_ready(seed):
        return (run_dir(out, first, seed) / "checkpoints" / "base" / "pretrain.json").exists()

    def worker():
        while True:
            with lock:
                ready = [j for j in jobs if j[0] == first or base_ready(j[1])]
                if not jobs:
                    return
                job = ready[0] if ready else None
                if job:
                    jobs.remove(job)
            if job is None:
                time.sleep(5)
                continue
            variant, seed = job
            path = run_dir(out, variant, seed)
            if path.exists() and not finished(path):
                cmd = [sys.executable, "-m", "r1.cli", "run", "--resume", str(path)]
            else:
                cmd = [sys.executable, "-m", "r1.cli", "run", str(ROOT / "configs" / "variants" / f"{variant}.yaml"),
                       f"seed={seed}", f"name={path.name}", f"runs_dir={out}", "threads=1",
                       f"eval_every={eval_every}", "eval_every_problems=100", "eval_every_k=4", *extra]
                if variant != first:
                    cmd.append(f"base_from={run_dir(out, first, seed) / 'checkpoints' / 'base'}")
            print(f"[study] start {variant} seed {seed}", flush=True)
            began = time.time()
            with open(out / f"{path.name}.log", "a") as log:
                rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            print(f"[study] {variant} seed {seed}: exit {rc} after {time.time() - began:.0f} s", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x.strip()]


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def first_reach(rows: list[dict], threshold: float):
    """(step, training seconds) of the first logged eval/pass@1 >= threshold, or (None, None)."""
    for r in rows:
        if r.get("eval/pass@1") is not None and r["eval/pass@1"] >= threshold:
            return r["step"], r["time/elapsed_s"]
    return None, None


def first_rollout_reach(rows: list[dict], threshold: float, width: int = 5):
    """First step whose ``width``-step running mean of rollout accuracy (T = 1) is >= threshold, or None."""
    acc = [r["reward/accuracy"] for r in rows]
    for i in range(len(rows)):
        window = acc[max(0, i - width + 1):i + 1]
        if sum(window) / len(window) >= threshold:
            return rows[i]["step"]
    return None


def reach_cell(values: list, n: int) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return f"never (0/{n})"
    cell = mean_std(got)
    return cell if len(got) == n else f"{cell} ({len(got)}/{n} seeds)"


def curve(runs: list[list[dict]], key: str, width: int = 10) -> tuple[list[int], list[float]]:
    """Mean over seeds of a ``width``-step running mean of ``key`` (None values skipped)."""
    steps = sorted({r["step"] for rows in runs for r in rows})
    per_step = {s: [] for s in steps}
    for rows in runs:
        vals = [r.get(key) for r in rows]
        for i, r in enumerate(rows):
            window = [v for v in vals[max(0, i - width + 1):i + 1] if v is not None and not math.isnan(v)]
            if window:
                per_step[r["step"]].append(sum(window) / len(window))
    steps = [s for s in steps if per_step[s]]
    return steps, [statistics.mean(per_step[s]) for s in steps]


def write(out: Path, variants: list[str], seeds: list[int], doc: Path, img: Path) -> str:
    img.mkdir(parents=True, exist_ok=True)
    data = {}
    for v in variants:
        runs = [run_dir(out, v, s) for s in seeds if finished(run_dir(out, v, s))]
        data[v] = {"dirs": runs, "rows": [read_rows(p) for p in runs],
                   "summary": [json.loads((p / "summary.json").read_text()) for p in runs]}
    lines = ["| recipe | seeds | base pass@1 (%) | final pass@1 (%) | steps to 50 % | s to 50 % | steps to 70 % | "
             "s to 70 % | steps to 90 % | s to 90 % | steps to 90 % rollout acc. | s per step | final length (tokens) | "
             "KL, last 10 steps | entropy, last 10 steps |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, d in data.items():
        n = len(d["rows"])
        if not n:
            lines.append(f"| {v} | 0 |" + " |" * 13)
            continue
        before = [100 * s["eval"]["before"]["pass@1"] for s in d["summary"]]
        after = [100 * s["eval"]["after"]["pass@1"] for s in d["summary"]]
        length = [s["eval"]["after"]["len_mean"] for s in d["summary"]]
        reach = {t: [first_reach(rows, t) for rows in d["rows"]] for t in (0.5, 0.7, 0.9)}
        per_step = [rows[-1]["time/elapsed_s"] / rows[-1]["step"] for rows in d["rows"]]
        recipe = (d["dirs"][0] / "config.yaml").read_text()
        dynamic = "dynamic_sampling: true" in recipe
        no_kl = "\nbeta: 0.0\n" in recipe
        rollout_cell = "n/a (kept groups only)" if dynamic else \
            reach_cell([first_rollout_reach(rows, 0.9) for rows in d["rows"]], n)
        kl = [statistics.mean(r["train/kl"] for r in rows[-10:]) for rows in d["rows"]]
        ent = [statistics.mean(r["train/entropy"] for r in rows[-10:]) for rows in d["rows"]]
        lines.append(
            f"| {v} | {n} | {mean_std(before)} | **{mean_std(after)}** | "
            f"{reach_cell([x[0] for x in reach[0.5]], n)} | {reach_cell([x[1] for x in reach[0.5]], n)} | "
            f"{reach_cell([x[0] for x in reach[0.7]], n)} | {reach_cell([x[1] for x in reach[0.7]], n)} | "
            f"{reach_cell([x[0] for x in reach[0.9]], n)} | {reach_cell([x[1] for x in reach[0.9]], n)} | "
            f"{rollout_cell} | "
            f"{statistics.mean(per_step):.2f} | {mean_std(length)} | "
            f"{'n/a (beta = 0)' if no_kl else f'{statistics.mean(kl):.4f}'} | {statistics.mean(ent):.3f} |")
    per_seed = ["", "Final pass@1 (%) per seed:", "", "| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                "|---|" + "---|" * len(seeds)]
    for v, d in data.items():
        cells = {s["seed"]: f"{100 * s['eval']['after']['pass@1']:.1f}" for s in d["summary"]}
        per_seed.append(f"| {v} | " + " | ".join(cells.get(s, "") for s in seeds) + " |")

    plots = [("eval/pass@1", "held-out pass@1 (100 problems, k = 4)", "variants-pass1.png", 1),
             ("reward/accuracy", "rollout accuracy (T = 1)", "variants-accuracy.png", 10),
             ("train/kl", "KL to the base (k3, nats per token)", "variants-kl.png", 10),
             ("train/entropy", "policy entropy (nats per token)", "variants-entropy.png", 10)]
    for key, label, name, width in plots:
        fig, ax = plt.subplots(figsize=(7, 4))
        for v, d in data.items():
            if d["rows"] and not (key == "train/kl" and "\nbeta: 0.0\n" in (d["dirs"][0] / "config.yaml").read_text()):
                x, y = curve(d["rows"], key, width)
                ax.plot(x, y, label=v)
        ax.set(xlabel="RL step", ylabel=label, title=f"{label}: mean over seeds" +
               ("" if width == 1 else f" ({width}-step running mean)"))
        ax.legend()
        fig.tight_layout()
        fig.savefig(img / name, dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in ((axes[0], "rollout/len_correct", "correct completions"),
                           (axes[1], "rollout/len_incorrect", "incorrect completions")):
        for v, d in data.items():
            if d["rows"]:
                x, y = curve(d["rows"], key)
                ax.plot(x, y, label=v)
        ax.set(xlabel="RL step", ylabel="mean length (tokens)", title=f"Rollout length, {title}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(img / "variants-length.png", dpi=110)
    plt.close(fig)

    rel = Path("img")
    block = "\n".join([START, "", *lines, *per_seed, "",
                       f"![held-out pass@1 over steps]({rel / 'variants-pass1.png'})",
                       f"![length of correct and incorrect rollouts]({rel / 'variants-length.png'})",
                       f"![KL to the base]({rel / 'variants-kl.png'})",
                       f"![entropy]({rel / 'variants-entropy.png'})",
                       f"![rollout accuracy]({rel / 'variants-accuracy.png'})", "", END])
    text = doc.read_text() if doc.exists() else f"# Variant study\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    doc.write_text(text)
    return "\n".join(lines + per_seed)


def main() -> None:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "variant-study", help="folder of the study's runs")
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2, help="runs at once (one torch thread each)")
    ap.add_argument("--eval-every", type=int, default=5, help="RL steps between held-out evaluations")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "variants.md")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    ap.add_argument("--write-only", action="store_true", help="do not run; only write tables and plots")
    args = ap.parse_args()
    if not args.write_only:
        run_all(args.out, args.variants, args.seeds, args.workers, args.eval_every, args.set)
    if not any(finished(run_dir(args.out, v, s)) for v in args.variants for s in args.seeds):
        sys.exit(f"variant_study: no finished run in {args.out}: nothing to write (run the study first)")
    print(write(args.out, args.variants, args.seeds, args.doc, args.doc.parent / "img"))


if __name__ == "__main__":
    main()
