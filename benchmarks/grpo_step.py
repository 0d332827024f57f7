"""Seconds per GRPO step: r1 against TRL's GRPOTrainer doing the same work, side by side on this machine.

    .venv/bin/pip install "trl==1.16.0"          # benchmark-only (pip install -e ".[bench]"); never a runtime dependency
    .venv/bin/python benchmarks/grpo_step.py                      # the table: {1M, 10M} x {beta 0.04, 0} x {G 8, 16}
    .venv/bin/python benchmarks/grpo_step.py --configs 1M:0.04:8 --steps 12 --out /tmp/t.md
    .venv/bin/python benchmarks/grpo_step.py --precision bf16 --out docs/img/grpo-step-bf16.md   # both in bf16 mixed precision
    .venv/bin/python benchmarks/grpo_step.py --configs 1M:0.04:8 --rounds 5     # 5 rounds, the engines' order alternating

Same work for both engines (each config, each engine in its own fresh subprocess, so peak RSS is its own):
the same Qwen2 weights (built from a config with a fixed seed, saved once, loaded by both), r1's character
tokenizer, the same prompts in the same order (the main job's 2-digit multiplication problems as r1's
trainer draws them), 8 prompts x G completions per step sampled at temperature 1.0 with no top-k / top-p
(full sampling, no greedy shortcut), at most 64 new tokens, the same reward (exact-product accuracy +
format), beta (a reference forward when beta > 0), learning rate 1e-5 constant, clip 0.2, token-mean loss
(TRL's default ``loss_type="dapo"``; r1 ``loss_aggregation=token_mean``), one optimizer step over all
completions per rollout batch (TRL ``steps_per_generation=1``, ``num_iterations=1``). 2 threads. TRL runs with
its own defaults otherwise, gradient checkpointing included (``--trl-set gradient_checkpointing=false`` turns
it off). ``--precision``: fp32 for both (the default), or bf16 mixed precision for both: TRL ``bf16=True``
(its default; ``torch.autocast`` around the forward passes), r1 ``mixed_precision=bf16``.

Reported per engine (median over ``--steps`` steps after ``--warmup``): seconds per step, and inside it
generate / reward / update seconds (TRL: its ``_generate`` and ``_calculate_rewards`` timed by wrapping,
update = step - generate - reward, which holds the reference and loss forward, backward and the optimizer);
generated tokens/s (completion tokens incl. EOS / generate seconds, median of the per-step rates); trained
tokens/s (prompt + completion tokens of the batch, padding not counted, / update seconds); peak RSS (MB, ``ru_maxrss`` of the subprocess); the ratio TRL / r1.
A line above the table (and ``_settings`` in the .json) names the precision, the engines and their overrides, the
steps, the start time, the CPU, the package versions and the git commit (``+changes``: the work tree differed).

``--rounds R`` (default 1) runs each configuration R times, each round both engines in fresh processes, their
order alternating (TRL then r1, then r1 then TRL, ...), so that the machine's drift between minutes falls on both
alike. The table then pools the measured steps of all rounds (medians over R x ``--steps`` steps; peak RSS: the
largest of the rounds), and a line under it gives TRL / r1 in s/step round by round (each round's own medians),
the spread to read a ratio against. The .json keys its rounds ``ENGINE:SIZE:BETA:G#ROUND``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from r1.cli import OneLineParser

SIZES = {  # Qwen2 sizes around 1M and 10M parameters with r1's 105-token character vocabulary
    "1M": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=384),
    "10M": dict(hidden_size=320, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                intermediate_size=1024),
}
DEFAULT_CONFIGS = [f"{s}:{b}:{g}" for s in ("1M", "10M") for b in ("0.04", "0") for g in ("8", "16")]
PROMPTS_PER_STEP, MAX_NEW, LR, SEED = 8, 64, 1e-5, 0
THREADS = 2  # torch intra-op threads of each engine's process


def build_model(size: str, out: Path) -> Path:
    """Save a Qwen2 model of ``size`` (random weights, seed 0) with r1's tokenizer into ``out``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(SEED)
    cfg = Qwen2Config(vocab_size=len(tok), max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      **SIZES[size])
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def step_problems(task, step: int) -> list:
    """The prompts r1's trainer draws at ``step`` (``r1.rl.trainer.rl_step``: rng ``{seed}/rl/{step}``)."""
    from r1.pretrain import sample_train_problem

    rng = random.Random(f"{SEED}/rl/{step}")
    return [sample_train_problem(task, rng, set()) for _ in range(PROMPTS_PER_STEP)]


def reward_total(task, text: str, answer: str) -> float:
    """accuracy + format, exactly r1's ``score`` with format_weight 1."""
    from r1.rewards.format import format_reward
    return task.verify(text, answer) + format_reward(text)


# ------------------------------------------------------------------------------------------- engines


def run_r1(model_dir: Path, beta: float, G: int, steps: int, overrides: list[str] = ()) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from r1.config import load_config
    from r1.models.tokenizer import build_tokenizer
    from r1.optim import adamw
    from r1.rl.trainer import rl_step
    from r1.tasks.multiplication import MultiplicationTask

    cfg = load_config(None, [f"prompts_per_step={PROMPTS_PER_STEP}", f"group_size={G}", f"max_new_tokens={MAX_NEW}",
                             "temperature=1.0", f"beta={beta}", f"lr={LR}", "clip_eps=0.2",
                             "loss_aggregation=token_mean", "num_iterations=1", f"seed={SEED}", *overrides])
    tok, task = build_tokenizer(), MultiplicationTask(2, 2)
    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval().requires_grad_(False) if beta > 0 else None
    opt = adamw([p for p in policy.parameters() if p.requires_grad], lr=LR, betas=(0.9, 0.99), weight_decay=0.0)
    policy.train()
    rows = []
    for step in range(steps):
        t0 = time.perf_counter()
        row, samples = rl_step(step, policy, reference, opt, tok, task, set(), cfg)
        total = time.perf_counter() - t0
        rows.append({"step_s": total, "generate_s": row["time/generate_s"], "reward_s": row["time/reward_s"],
                     "update_s": row["time/update_s"], "completion_tokens": row["rollout/len_mean"] * len(samples),
                     "prompt_tokens": sum(len(tok(s["prompt"], add_special_tokens=False).input_ids) for s in samples),
                     "accuracy": row["reward/accuracy"]})
    return rows


def run_trl(model_dir: Path, beta: float, G: int, steps: int, precision: str = "fp32",
            overrides: list[str] = ()) -> list[dict]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1.models.tokenizer import build_tokenizer, prompt_text
    from r1.tasks.multiplication import MultiplicationTask

    tok, task = build_tokenizer(), MultiplicationTask(2, 2)
    problems = [p for s in range(steps) for p in step_problems(task, s)]
    data = Dataset.from_list([{"prompt": prompt_text(tok, p.question), "answer": p.answer} for p in problems])
    specials = {tok.pad_token_id, tok.eos_token_id}

    def reward(prompts, completions, completion_ids, answer, **kwargs):  # decode keeping <think>/<answer> tags
        texts = [tok.decode([i for i in ids if i not in specials], skip_special_tokens=False) for ids in completion_ids]
        return [reward_total(task, t, a) for t, a in zip(texts, answer)]

    scratch = tempfile.TemporaryDirectory()  # TRL's output_dir (nothing is saved there); removed when this returns
    args = GRPOConfig(output_dir=scratch.name, per_device_train_batch_size=PROMPTS_PER_STEP * G,
                      num_generations=G, max_completion_length=MAX_NEW, temperature=1.0, top_p=1.0, top_k=0,
                      beta=beta, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, epsilon=0.2,
                      loss_type="dapo", num_iterations=1, steps_per_generation=1, max_steps=steps,
                      shuffle_dataset=False, use_cpu=True, bf16=precision == "bf16", report_to="none", save_strategy="no",
                      logging_steps=1, seed=SEED, disable_tqdm=True, max_grad_norm=1.0,
                      adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0,
                      **{k: json.loads(v) for k, v in (kv.split("=", 1) for kv in overrides)})
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok)
    timers = {"generate_s": 0.0, "reward_s": 0.0, "completion_tokens": 0, "prompt_tokens": 0}

    def timed(name, fn, count=None):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            timers[name] += time.perf_counter() - t0
            if count:
                count(a, out)
            return out
        return wrapper

    def count_tokens(a, out):  # _calculate_rewards(inputs, prompts, completions, completion_ids_list)
        timers["completion_tokens"] += sum(len(c) for c in a[3])  # TRL's completion ids end with the EOS
        timers["prompt_tokens"] += sum(len(tok(p, add_special_tokens=False).input_ids) for p in a[1])

    trainer._generate = timed("generate_s", trainer._generate)
    trainer._calculate_rewards = timed("reward_s", trainer._calculate_rewards, count_tokens)
    rows: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()
            for key in timers:
                timers[key] = 0
            return None

        def on_step_end(self, *a, **k):
            total = time.perf_counter() - self.t0
            rows.append({"step_s": total, "generate_s": timers["generate_s"], "reward_s": timers["reward_s"],
                         "update_s": total - timers["generate_s"] - timers["reward_s"],
                         "completion_tokens": timers["completion_tokens"], "prompt_tokens": timers["prompt_tokens"]})
            return None

    trainer.add_callback(Clock())
    torch.manual_seed(SEED)
    trainer.train()
    return rows


# ------------------------------------------------------------------------------------------- driver


def one(engine: str, size: str, beta: float, G: int, steps: int, model_dir: Path, overrides: list[str],
        precision: str = "fp32", trl_overrides: list[str] = ()) -> dict:
    """Run one engine on one config in this process; return the per-step rows and the peak RSS."""
    import torch
    torch.set_num_threads(THREADS)
    if engine == "r1":
        rows = run_r1(model_dir, beta, G, steps, [f"mixed_precision={'bf16' if precision == 'bf16' else 'no'}", *overrides])
    else:
        rows = run_trl(model_dir, beta, G, steps, precision, trl_overrides)
    return {"rows": rows, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def pool(results: list[dict], warmup: int) -> dict:
    """The rounds of one engine on one config as one result: the rows after each round's ``warmup`` steps, one
    after the other, and the largest peak RSS of the rounds (summarize it with ``warmup=0``)."""
    return {"rows": [row for res in results for row in res["rows"][warmup:]],
            "peak_rss_mb": max(res["peak_rss_mb"] for res in results)}


def by_round(per_round: dict, warmup: int) -> str:
    """One line: TRL / r1 in s/step for each round of each config (each round's own medians), and their median.
    ``per_round``: {(size, beta, G): {"trl": [result, ...], "r1": [result, ...]}}, rounds in order."""
    parts = []
    for (size, beta, G), eng in per_round.items():
        if not (eng.get("trl") and eng.get("r1")):
            continue
        ratios = [summarize(t, warmup)["step_s"] / summarize(r, warmup)["step_s"] for t, r in zip(eng["trl"], eng["r1"])]
        parts.append(f"{size} / {beta} / {G}: " + ", ".join(f"{x:.2f}x" for x in ratios)
                     + f" (median {statistics.median(ratios):.2f}x)")
    return ("TRL / r1 in s/step by round (each round's own medians; both engines in each round, their order "
            "alternating; the table above pools the steps of all rounds, its peak RSS the largest round's): "
            + "; ".join(parts)
            if parts else "")


def summarize(result: dict, warmup: int) -> dict:
    rows = result["rows"][warmup:]
    med = {k: statistics.median(r[k] for r in rows) for k in ("step_s", "generate_s", "reward_s", "update_s")}
    # rates: the median of the per-step rates (a single descheduled step cannot skew them)
    gen_tok = statistics.median(r["completion_tokens"] / max(1e-9, r["generate_s"]) for r in rows)
    trained = statistics.median((r["completion_tokens"] + r["prompt_tokens"]) / max(1e-9, r["update_s"]) for r in rows)
    return {**med, "gen_tokens_per_s": gen_tok, "trained_tokens_per_s": trained, "peak_rss_mb": result["peak_rss_mb"],
            "steps": len(rows)}


def table(results: dict) -> str:
    head = ("| model | beta | G | engine | s/step | generate s | reward s | update s | generated tok/s | "
            "trained tok/s | peak RSS MB |")
    lines = [head, "|" + "---|" * 11]
    for (size, beta, G), eng in results.items():
        for name in ("trl", "r1"):
            s = eng.get(name)
            if s:
                lines.append(f"| {size} | {beta} | {G} | {name} | {s['step_s']:.3f} | {s['generate_s']:.3f} | "
                             f"{s['reward_s']:.3f} | {s['update_s']:.3f} | {s['gen_tokens_per_s']:.0f} | "
                             f"{s['trained_tokens_per_s']:.0f} | {s['peak_rss_mb']:.0f} |")
        if eng.get("trl") and eng.get("r1"):
            t, r = eng["trl"], eng["r1"]
            ratio = lambda k: t[k] / r[k] if r[k] else float("nan")  # noqa: E731
            inv = lambda k: r[k] / t[k] if t[k] else float("nan")  # noqa: E731
            lines.append(f"| {size} | {beta} | {G} | **TRL / r1** | **{ratio('step_s'):.2f}x** | {ratio('generate_s'):.2f}x | "
                         f"{ratio('reward_s'):.2f}x | {ratio('update_s'):.2f}x | {inv('gen_tokens_per_s'):.2f}x | "
                         f"{inv('trained_tokens_per_s'):.2f}x | {t['peak_rss_mb'] / r['peak_rss_mb']:.2f}x |")
    return "\n".join(lines)


def provenance(precision: str, engines: str, steps: int, warmup: int, r1_set: list[str] = (),
               trl_set: list[str] = (), rounds: int = 1) -> dict:
    """Where and how a table was measured: precision, engines, steps, rounds, the overrides of each engine, start
    time (UTC), CPU model, threads, package versions and the git commit of the code (``+changes`` when the work tree
    differs from it; None outside git)."""
    import platform
    from datetime import datetime, timezone
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        commit += "+changes" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"precision": precision, "engines": engines, "steps": steps, "warmup": warmup, "rounds": rounds,
            "set": list(r1_set), "trl_set": list(trl_set),
            "started_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "cpu": cpu, "threads": THREADS,
            "commit": commit, "torch": ver("torch"), "transformers": ver("transformers"), "trl": ver("trl")}


def header(p: dict) -> str:
    """One Markdown line naming what :func:`provenance` recorded, written above the table."""
    names = {"fp32": "fp32", "bf16": "bf16 mixed precision"}
    engines = "both engines" if set(p["engines"].split(",")) == {"trl", "r1"} else p["engines"]
    versions = ", ".join(f"{k} {p[k]}" for k in ("torch", "transformers", "trl") if p.get(k))
    overrides = "".join(f"; {flag} {' '.join(p[key])}" for flag, key in (("r1 --set", "set"), ("TRL --trl-set", "trl_set"))
                        if p.get(key))
    rounds = p.get("rounds", 1)
    steps = (f"median of {p['steps']} steps after {p['warmup']} warm-up" if rounds == 1 else
             f"median of {rounds} rounds x {p['steps']} steps, each round after {p['warmup']} warm-up, the engines' "
             f"order alternating")
    return (f"{names.get(p['precision'], p['precision'])} ({engines}){overrides}; {steps}; "
            f"started {p['started_utc']} UTC on {p['cpu']}, {p['threads']} threads; {versions}; "
            f"commit {p['commit'] or 'unknown'}")


def _bad_arguments(args) -> str | None:
    """What is wrong with the command line, in one line (None when nothing is)."""
    engines = args.engines.split(",")
    if not engines or any(e not in ("trl", "r1") for e in engines):
        return f"--engines {args.engines!r}: expected a comma-separated list of trl and r1"
    for item in args.configs.split(","):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in SIZES:
            return f"--configs item {item!r}: expected SIZE:BETA:G with SIZE one of {', '.join(SIZES)}"
        try:
            beta, G = float(parts[1]), int(parts[2])
        except ValueError:
            return f"--configs item {item!r}: expected a number for BETA and an integer for G"
        if not math.isfinite(beta) or beta < 0 or G < 2:
            return f"--configs item {item!r}: expected a finite BETA >= 0 and G >= 2 (a group needs two completions)"
    if args.steps < 1 or args.warmup < 0:
        return f"--steps {args.steps} --warmup {args.warmup}: expected at least 1 measured step and no negative warm-up"
    if args.rounds < 1:
        return f"--rounds {args.rounds}: expected at least 1 round"
    if "r1" in engines:
        from r1.config import ConfigError, load_config
        try:
            load_config(None, list(args.set))
        except ConfigError as e:
            return f"--set: {e}"
    if args.trl_set and not args.one:  # checked once, whatever --engines says (the per-engine runs skip it)
        from dataclasses import fields
        try:
            from trl import GRPOConfig
        except ImportError:
            return "--trl-set: trl is not installed (pip install -e '.[bench]')"
        known = {f.name for f in fields(GRPOConfig)}
        for kv in args.trl_set:
            key, eq, value = kv.partition("=")
            if not eq or key not in known:
                return f"--trl-set {kv!r}: expected KEY=JSON with KEY a GRPOConfig field"
            try:
                json.loads(value)
            except ValueError:
                return f"--trl-set {kv!r}: the value is not JSON (write true/false, numbers, \"strings\")"
    return None


def main() -> int:
    ap = OneLineParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="SIZE:BETA:G,... (default: all 8 of the table)")
    ap.add_argument("--engines", default="trl,r1", help="comma-separated, from trl and r1 (default: both)")
    ap.add_argument("--steps", type=int, default=10, help="measured steps after warm-up, median over them (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="steps run before the measured ones (default 2)")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each config, both engines in each, their order "
                    "alternating; the table pools them and a line gives TRL / r1 per round (default 1)")
    ap.add_argument("--out", help="also write the table (Markdown) and the raw rows (.json beside it) here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="r1 config override for the r1 engine (ablations: sampler=generate, fast_logprobs=false)")
    ap.add_argument("--trl-set", action="append", default=[], metavar="KEY=JSON",
                    help="GRPOConfig override for the TRL engine, e.g. gradient_checkpointing=false (TRL's default: true)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="both engines: fp32, or bf16 mixed precision (TRL bf16=True, its default; r1 mixed_precision=bf16)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: ENGINE:SIZE:BETA:G:MODEL_DIR -> JSON on stdout
    args = ap.parse_args()
    problem = _bad_arguments(args)
    if not problem and args.out and not args.one:  # before the runs, so that a bad --out does not lose them
        from r1.report import output_problem
        why = output_problem(Path(args.out), (".json",))
        problem = why and f"--out={args.out!r}: {why}"
    if problem:
        print(f"grpo_step.py: {problem}", file=sys.stderr)  # one line, exit 2
        return 2
    if args.one:
        engine, size, beta, G, model_dir = args.one.split(":", 4)
        print(json.dumps(one(engine, size, float(beta), int(G), args.steps + args.warmup, Path(model_dir), args.set,
                             args.precision, args.trl_set)))
        return 0
    results, raw = {}, {}
    where = provenance(args.precision, args.engines, args.steps, args.warmup, args.set, args.trl_set, args.rounds)
    engines = args.engines.split(",")
    per_round = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for item in args.configs.split(","):
            size, beta, G = item.split(":")
            if size not in models:
                models[size] = build_model(size, Path(tmp) / size)
            runs = per_round.setdefault((size, beta, G), {e: [] for e in engines})
            for engine in (e for r in range(args.rounds) for e in (engines if r % 2 == 0 else engines[::-1])):
                cmd = [sys.executable, __file__, "--one", f"{engine}:{size}:{beta}:{G}:{models[size]}",
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--precision", args.precision,
                       *[f"--set={kv}" for kv in args.set], *[f"--trl-set={kv}" for kv in args.trl_set]]
                t0 = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[engine].append(res)
                label = item if args.rounds == 1 else f"{item}#{len(runs[engine])}"
                raw[f"{engine}:{label}"] = res
                s = summarize(res, args.warmup)
                print(f"{engine:4s} {label:12s} {s['step_s']:.3f} s/step (gen {s['generate_s']:.3f}, reward "
                      f"{s['reward_s']:.3f}, update {s['update_s']:.3f}), peak RSS {s['peak_rss_mb']:.0f} MB "
                      f"[{time.time() - t0:.0f} s]", flush=True)
            for engine in engines:
                results.setdefault((size, beta, G), {})[engine] = summarize(pool(runs[engine], args.warmup), 0)
    text = header(where) + "\n\n" + table(results)
    spread = by_round(per_round, args.warmup) if args.rounds > 1 else ""
    if spread:
        text += "\n\n" + spread
    print("\n" + text + "\n\nEach column is its own median over steps (parts need not add up to s/step)"
          + ("; the TRL / r1 row divides TRL by r1 for seconds and RSS, r1 by TRL for the rates (tok/s): "
             "above 1, r1 is better; the reward column is a millisecond or two on both sides, and its ratio means "
             "nothing." if "," in args.engines else "."))
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"_settings": where, **raw}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
