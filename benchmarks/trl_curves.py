"""Learning per step: r1 and TRL's GRPOTrainer from the main job's base model, at the main job's settings.

    make demo                                             # the main job: runs/r1-zero-mult (its base and config)
    .venv/bin/pip install "trl==1.16.0"                   # benchmark-only (pip install -e ".[bench]")
    .venv/bin/python benchmarks/trl_curves.py --run runs/r1-zero-mult --steps 60 --out docs/img/trl-curves

Both trainers start from the run's ``checkpoints/base`` and see the same prompts in the same order (the
multiplication problems r1's trainer draws at each step, held-out problems excluded), with the run's
settings: B prompts x G completions, max_new_tokens, temperature, no top-k / top-p, learning rate
(constant), AdamW betas (0.9, 0.99) without weight decay, gradient clipping, clip range, beta (k3 KL to
the base), GRPO's per-sequence token mean (TRL ``loss_type="grpo"``), group-std advantages, one optimizer
step per rollout batch, and the same reward functions (accuracy + format_weight x format, graded exactly
as r1 grades them). Per step: training accuracy, mean reward, completion length, seconds. At the end, both
final policies are evaluated by r1's protocol (held-out problems x k samples at T 0.6, top-p 0.95).

Writes OUT.json (every step of both), OUT.md (summary table) and OUT.png (curves).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path


def problems_for_step(task, cfg, step: int, heldout: set) -> list:
    """The prompts r1's ``rl_step`` draws at ``step`` (rng ``{seed}/rl/{step}``)."""
    from r1.pretrain import sample_train_problem
    rng = random.Random(f"{cfg.seed}/rl/{step}")
    return [sample_train_problem(task, rng, heldout) for _ in range(cfg.prompts_per_step)]


def run_r1(cfg, base_dir: Path, tok, task, heldout: set, steps: int):
    import torch
    from transformers import AutoModelForCausalLM

    from r1.rl.trainer import rl_step

    policy = AutoModelForCausalLM.from_pretrained(base_dir)
    reference = AutoModelForCausalLM.from_pretrained(base_dir).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
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
    args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=B * G, num_generations=G,
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


def plot(results: dict, out: Path, window: int = 10) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, color in (("trl", "tab:orange"), ("r1", "tab:blue")):
        rows = results[name]["rows"]
        steps = [r["step"] for r in rows]
        for ax, key, title in zip(axes, ("accuracy", "reward", "length"),
                                  ("training accuracy", "mean reward (accuracy + format)", "completion length (tokens)")):
            vals = [r[key] for r in rows]
            smooth = [sum(vals[max(0, i - window + 1):i + 1]) / len(vals[max(0, i - window + 1):i + 1])
                      for i in range(len(vals))]
            ax.plot(steps, vals, color=color, alpha=0.25)
            ax.plot(steps, smooth, color=color, label=f"{name} ({window}-step mean)")
            ax.set_title(title)
            ax.set_xlabel("GRPO step")
    axes[0].legend()
    fig.suptitle("r1 vs TRL GRPOTrainer from the same base, same prompts and settings")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/r1-zero-mult", help="the main job's run folder (config.yaml, checkpoints/base)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-k", type=int, default=4, help="samples per held-out problem in the final evaluation")
    ap.add_argument("--out", default="trl-curves", help="OUT.json / OUT.md / OUT.png")
    args = ap.parse_args()
    run = Path(args.run)
    base_dir = run / "checkpoints" / "base"
    if not (base_dir / "config.json").exists():
        print(f"{base_dir}: no base checkpoint; run the main job first (make demo)", file=sys.stderr)
        return 2
    import dataclasses

    import torch

    from r1.config import load_config
    from r1.eval.protocol import evaluate
    from r1.models.tokenizer import build_tokenizer
    from r1.run import _eval_sets
    from r1.tasks import make_task

    torch.set_num_threads(2)
    cfg = load_config(run / "config.yaml", [f"rl_steps={args.steps}", "eval_every=0"])
    tok, task = build_tokenizer(), make_task(cfg)
    problems = _eval_sets(cfg, task)[""]
    heldout = {p.key for p in problems}
    eval_cfg = dataclasses.replace(cfg, eval_k=args.eval_k)
    results = {}
    for name, fn in (("r1", run_r1), ("trl", run_trl)):
        t0 = time.time()
        model, rows = fn(cfg, base_dir, tok, task, heldout, args.steps)
        train_s = time.time() - t0
        model.eval()
        ev = evaluate(model, tok, task, problems, eval_cfg)
        summary = ev["summary"]
        per_problem = [sum(bool(x["correct"]) for x in p["samples"]) / len(p["samples"]) for p in ev["problems"]]
        mean = sum(per_problem) / len(per_problem)
        se = (sum((x - mean) ** 2 for x in per_problem) / (len(per_problem) - 1) / len(per_problem)) ** 0.5
        results[name] = {"rows": rows, "train_seconds": train_s, "eval": summary, "pass_se": se,
                         "per_problem": per_problem}
        print(f"{name}: {args.steps} steps in {train_s:.0f} s, pass@1 {summary['pass@1']:.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot(results, out)
    lines = ["| trainer | steps | train s | s/step | mean training accuracy, last 10 steps | held-out pass@1 "
             f"(k={args.eval_k}) ± s.e. | format | readability | mean length |", "|---|---|---|---|---|---|---|---|---|"]
    for name in ("trl", "r1"):
        r = results[name]
        last = [x["accuracy"] for x in r["rows"][-10:]]
        e = r["eval"]
        lines.append(f"| {name} | {len(r['rows'])} | {r['train_seconds']:.0f} | {r['train_seconds'] / len(r['rows']):.2f} | "
                     f"{sum(last) / len(last):.3f} | {e['pass@1']:.3f} ± {r['pass_se']:.3f} | {e['format']:.3f} | "
                     f"{e['readability']:.3f} | {e['len_mean']:.1f} |")
    diff = [a - b for a, b in zip(results["r1"]["per_problem"], results["trl"]["per_problem"])]
    d_mean = sum(diff) / len(diff)
    d_se = (sum((x - d_mean) ** 2 for x in diff) / (len(diff) - 1) / len(diff)) ** 0.5
    lines.append(f"\nr1 minus TRL, held-out pass@1 paired over the {len(diff)} problems: {100 * d_mean:+.1f} "
                 f"± {100 * d_se:.1f} points.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
