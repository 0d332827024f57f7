"""Learning per step: r1 and TRL's GRPOTrainer from the main job's base model, at the main job's settings.

    make demo                                             # the main job: runs/r1-zero-mult (its base and config)
    .venv/bin/pip install "trl==1.16.0"                   # benchmark-only (pip install -e ".[bench]")
    .venv/bin/python benchmarks/trl_curves.py --run runs/r1-zero-mult --steps 60 --out docs/img/trl-curves
    .venv/bin/python benchmarks/trl_curves.py --seeds 0,1,2,3 --eval-k 8 --out docs/img/trl-curves   # over seeds

Both trainers start from the run's ``checkpoints/base`` and see the same prompts in the same order (the
multiplication problems r1's trainer draws at each step, held-out problems excluded), with the run's
settings: B prompts x G completions, max_new_tokens, temperature, no top-k / top-p, learning rate
(constant), AdamW betas (0.9, 0.99) without weight decay, gradient clipping, clip range, beta (k3 KL to
the base), GRPO's per-sequence token mean (TRL ``loss_type="grpo"``), group-std advantages, one optimizer
step per rollout batch, and the same reward functions (accuracy + format_weight x format, graded exactly
as r1 grades them). Per step: training accuracy, mean reward, completion length, seconds. At the end, both
final policies are evaluated by r1's protocol (held-out problems x k samples at T 0.6, top-p 0.95).

Each seed (``--seeds``; default the run's) is one pair of runs: the seed picks the prompts and both
trainers' sampling streams, and both final policies are evaluated on the same held-out problems, so r1 minus
TRL is paired per problem within a seed and per seed across seeds.

Writes OUT.json (every step of both, per seed), OUT.md (summary table) and OUT.png (curves).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

from r1.cli import OneLineParser


def problems_for_step(task, cfg, step: int, heldout: set) -> list:
    """The prompts r1's ``rl_step`` draws at ``step`` (rng ``{seed}/rl/{step}``)."""
    from r1.pretrain import sample_train_problem
    rng = random.Random(f"{cfg.seed}/rl/{step}")
    return [sample_train_problem(task, rng, heldout) for _ in range(cfg.prompts_per_step)]


def run_r1(cfg, base_dir: Path, tok, task, heldout: set, steps: int):
    from transformers import AutoModelForCausalLM

    from r1.optim import adamw
    from r1.rl.trainer import rl_step

    policy = AutoModelForCausalLM.from_pretrained(base_dir)
    reference = AutoModelForCausalLM.from_pretrained(base_dir).eval().requires_grad_(False)
    opt = adamw(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    policy.train()
    rows = []
    for step in range(steps):
        t0 = time.perf_counter()
        row, _ = rl_step(step, policy, reference, opt, tok, task, heldout, cfg)
        rows.append({"step": step + 1, "accuracy": row["reward/accuracy"], "reward": row["reward/mean"],
                     "format": row["reward/format"], "length": row["rollout/len_mean"], "kl": row["train/kl"],
                     "seconds": time.perf_counter() - t0})
        print(f"r1  step {step + 1:3d} accuracy {rows[-1]['accuracy']:.3f} ({rows[-1]['seconds']:.2f} s)", flush=True)
    return policy, rows


def run_trl(cfg, base_dir: Path, tok, task, heldout: set, steps: int):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1.models.prompts import grading_text, prompt_for
    from r1.rewards.format import format_reward

    data, rendered_of = [], {}
    for step in range(steps):
        for p in problems_for_step(task, cfg, step, heldout):
            r = prompt_for(tok, p.question, cfg)
            rendered_of[r.text] = r
            data.append({"prompt": r.text, "answer": p.answer})
    specials = {tok.pad_token_id, tok.eos_token_id}

    def texts(prompts, completion_ids):  # decoded as r1 decodes: tags kept, EOS / padding dropped
        return [grading_text(rendered_of[p], tok.decode([i for i in ids if i not in specials],
                                                         skip_special_tokens=False))
                for p, ids in zip(prompts, completion_ids)]

    def accuracy(prompts, completions, completion_ids, answer, **kw):
        return [float(task.verify(t, a)) for t, a in zip(texts(prompts, completion_ids), answer)]

    def fmt(prompts, completions, completion_ids, **kw):
        return [format_reward(t) for t in texts(prompts, completion_ids)]

    B, G = cfg.prompts_per_step, cfg.group_size
    scratch = tempfile.TemporaryDirectory()  # TRL's output_dir (nothing is saved there); removed when this returns
    args = GRPOConfig(output_dir=scratch.name, per_device_train_batch_size=B * G, num_generations=G,
                      max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0, top_k=0,
                      beta=cfg.beta, learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0,
                      epsilon=cfg.clip_eps, loss_type="grpo", scale_rewards="group", num_iterations=1,
                      steps_per_generation=1, max_steps=steps, shuffle_dataset=False, use_cpu=True, bf16=False,
                      report_to="none", save_strategy="no", logging_steps=1, seed=cfg.seed, disable_tqdm=True,
                      max_grad_norm=cfg.max_grad_norm, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0,
                      reward_weights=[1.0, cfg.format_weight])
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy, fmt], args=args,
                          train_dataset=Dataset.from_list(data), processing_class=tok)
    rows: list[dict] = []

    class Log(TrainerCallback):
        t0 = time.perf_counter()

        def on_log(self, a, state, control, logs=None, **k):
            if logs and "rewards/accuracy/mean" in logs:
                now = time.perf_counter()
                rows.append({"step": state.global_step, "accuracy": logs["rewards/accuracy/mean"],
                             "reward": logs["reward"], "format": logs["rewards/fmt/mean"],
                             "length": logs.get("completions/mean_length"), "kl": logs.get("kl"),
                             "seconds": now - self.t0})
                self.t0 = now
                print(f"trl step {state.global_step:3d} accuracy {rows[-1]['accuracy']:.3f} "
                      f"({rows[-1]['seconds']:.2f} s)", flush=True)

    trainer.add_callback(Log())
    torch.manual_seed(cfg.seed)
    trainer.train()
    return trainer.model, rows


def _mean_se(xs: list) -> tuple:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); 0 for one value)."""
    m = sum(xs) / len(xs)
    return m, ((sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5 if len(xs) > 1 else 0.0)


def _mean_accuracy(rows: list, lo: int = 0, hi: int | None = None) -> float:
    """Mean training accuracy of ``rows[lo:hi]`` (per-step dicts with "accuracy")."""
    part = rows[lo:hi]
    return sum(x["accuracy"] for x in part) / len(part)


def plot(per_seed: dict, out: Path, window: int = 10) -> None:
    """Curves of both trainers: each seed thin, the mean over seeds of the ``window``-step means thick."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    def smooth(vals):
        return [sum(w) / len(w) for w in (vals[max(0, i - window + 1):i + 1] for i in range(len(vals)))]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, color in (("trl", "tab:orange"), ("r1", "tab:blue")):
        for ax, key, title in zip(axes, ("accuracy", "reward", "length"),
                                  ("training accuracy", "mean reward (accuracy + format)", "completion length (tokens)")):
            curves = [smooth([r[key] for r in res[name]["rows"]]) for res in per_seed.values()]
            n = min(len(c) for c in curves)
            for c in curves:
                ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(range(1, n + 1), [sum(c[i] for c in curves) / len(curves) for i in range(n)], color=color,
                    label=name)
            ax.set_title(title)
            ax.set_xlabel("GRPO step")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].legend()
    n_seeds = len(per_seed)
    fig.suptitle("r1 vs TRL GRPOTrainer from the same base, same prompts and settings: trailing "
                 f"{window}-step means" + (f" (thick: mean of {n_seeds} seeds, thin: each seed)" if n_seeds > 1 else ""))
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def compare(cfg, base_dir: Path, tok, task, problems: list, steps: int, eval_k: int) -> dict:
    """Both trainers from ``base_dir`` for ``steps`` steps at ``cfg`` (its seed picks the prompts and the
    sampling streams), then r1's evaluation of each final policy on ``problems`` x ``eval_k`` samples."""
    import dataclasses

    from r1.eval.protocol import evaluate

    heldout = {p.key for p in problems}
    eval_cfg = dataclasses.replace(cfg, eval_k=eval_k)
    results = {}
    for name, fn in (("r1", run_r1), ("trl", run_trl)):
        t0 = time.time()
        model, rows = fn(cfg, base_dir, tok, task, heldout, steps)
        train_s = time.time() - t0
        model.eval()
        ev = evaluate(model, tok, task, problems, eval_cfg)
        summary = ev["summary"]
        per_problem = [sum(bool(x["correct"]) for x in p["samples"]) / len(p["samples"]) for p in ev["problems"]]
        results[name] = {"rows": rows, "train_seconds": train_s, "eval": summary,
                         "pass_se": _mean_se(per_problem)[1], "per_problem": per_problem}
        print(f"seed {cfg.seed} {name}: {steps} steps in {train_s:.0f} s, pass@1 {summary['pass@1']:.3f}", flush=True)
    return results


def report(per_seed: dict, eval_k: int, window: int = 10) -> list:
    """The Markdown summary: one row per seed and trainer, then r1 minus TRL per seed (paired over the
    held-out problems) and over seeds (mean ± standard error across seeds), and the training accuracy's
    difference over consecutive ``window``-step windows."""
    lines = ["| seed | trainer | steps | train s | s/step | mean training accuracy, all steps / last 10 | held-out pass@1 "
             f"(k={eval_k}) ± s.e. | format | readability | mean length |", "|---|---|---|---|---|---|---|---|---|---|"]
    d_pass, d_train, notes = [], [], []
    for seed, res in per_seed.items():
        for name in ("trl", "r1"):
            r, e = res[name], res[name]["eval"]
            n = len(r["rows"])
            lines.append(f"| {seed} | {name} | {n} | {r['train_seconds']:.0f} | {r['train_seconds'] / n:.2f} | "
                         f"{_mean_accuracy(r['rows']):.3f} / {_mean_accuracy(r['rows'], -10):.3f} | {e['pass@1']:.3f} ± "
                         f"{r['pass_se']:.3f} | {e['format']:.3f} | {e['readability']:.3f} | {e['len_mean']:.1f} |")
        m, se = _mean_se([a - b for a, b in zip(res["r1"]["per_problem"], res["trl"]["per_problem"])])
        d_pass.append(m)
        d_train.append(_mean_accuracy(res["r1"]["rows"]) - _mean_accuracy(res["trl"]["rows"]))
        notes.append(f"- seed {seed}: held-out pass@1 {100 * m:+.1f} ± {100 * se:.1f} points (paired over the "
                     f"{len(res['r1']['per_problem'])} problems); mean training accuracy {100 * d_train[-1]:+.1f} points")
    lines += ["", "r1 minus TRL:", *notes]
    if len(per_seed) > 1:
        (pm, pse), (tm, tse) = _mean_se(d_pass), _mean_se(d_train)
        lines.append(f"- over the {len(per_seed)} seeds (mean ± s.e. across seeds): held-out pass@1 {100 * pm:+.1f} ± "
                     f"{100 * pse:.1f} points; mean training accuracy {100 * tm:+.1f} ± {100 * tse:.1f} points")
    steps = min(len(res[n]["rows"]) for res in per_seed.values() for n in ("r1", "trl"))
    parts = []
    for lo in range(0, steps, window):
        hi = min(steps, lo + window)
        wm, wse = _mean_se([_mean_accuracy(res["r1"]["rows"], lo, hi) - _mean_accuracy(res["trl"]["rows"], lo, hi)
                            for res in per_seed.values()])
        parts.append(f"{lo + 1}-{hi} {100 * wm:+.1f}" + (f" ± {100 * wse:.1f}" if len(per_seed) > 1 else ""))
    lines.append(f"- training accuracy by {window}-step window" + (" (mean ± s.e. across seeds)" if len(per_seed) > 1
                                                                    else "") + ": " + ", ".join(parts) + " points")
    return lines


def main() -> int:
    ap = OneLineParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/r1-zero-mult",
                    help="the main job's run folder (config.yaml, checkpoints/base; default: %(default)s)")
    ap.add_argument("--steps", type=int, default=60, help="GRPO steps per trainer and seed (default: %(default)s)")
    ap.add_argument("--eval-k", type=int, default=4, help="samples per held-out problem in the final evaluation "
                    "(default: %(default)s; the docs' runs use 8)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds, each its own pair of runs (prompts and "
                    "sampling streams); default: the run's seed")
    ap.add_argument("--out", default="trl-curves",
                    help="OUT.json / OUT.md / OUT.png (default: %(default)s, in the current folder)")
    args = ap.parse_args()

    def refuse(problem: str) -> int:  # one line, exit code 2
        print(f"trl_curves.py: {problem}", file=sys.stderr)
        return 2
    try:
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else []
    except ValueError:
        return refuse(f"--seeds={args.seeds!r}: expected comma-separated integers, e.g. 0,1,2")
    if len(set(seeds)) < len(seeds):
        return refuse(f"--seeds={args.seeds!r}: a seed is repeated; expected distinct seeds")
    if args.steps < 1 or args.eval_k < 1:
        return refuse(f"--steps={args.steps} --eval-k={args.eval_k}: expected both >= 1")
    run = Path(args.run)
    base_dir = run / "checkpoints" / "base"
    if not (base_dir / "config.json").exists():
        return refuse(f"{base_dir}: no base checkpoint; run the main job first (make demo)")
    out = Path(args.out)
    from r1.report import output_problem
    why = output_problem(out, (".json", ".md", ".png"))  # before the runs, so that a bad --out does not lose them
    if why:
        return refuse(f"--out={args.out!r}: {why}")
    import dataclasses

    import torch

    from r1.config import load_config
    from r1.models.tokenizer import build_tokenizer
    from r1.run import _eval_sets
    from r1.tasks import make_task

    torch.set_num_threads(2)
    cfg = load_config(run / "config.yaml", [f"rl_steps={args.steps}", "eval_every=0"])
    tok, task = build_tokenizer(), make_task(cfg)
    problems = _eval_sets(cfg, task)[""]  # the run's held-out problems, whatever the seed
    per_seed = {}
    for seed in seeds or [cfg.seed]:
        per_seed[str(seed)] = compare(dataclasses.replace(cfg, seed=seed), base_dir, tok, task, problems, args.steps,
                                      args.eval_k)
    lines = report(per_seed, args.eval_k)
    print("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"steps": args.steps, "eval_k": args.eval_k, "per_seed": per_seed},
                                                   indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(per_seed, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
