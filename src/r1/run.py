"""The main job, ``r1 run``: R1-Zero from scratch, stage by stage, resumable.

Stages (each skipped on ``--resume`` when its output exists):
1. tokenizer + base model: build, pretrain on the generated corpus -> checkpoints/base/
2. evaluation before RL -> eval/before.json
3. GRPO -> metrics.jsonl, samples/, checkpoints/step-NNNNNN/ (last one = the final policy)
4. evaluation after RL -> eval/after.json
5. summary.json, report.md, plots/
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import signal
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from transformers.utils import logging as hf_logging

from r1.config import RunConfig, save_config
from r1.eval.protocol import evaluate, heldout_problems
from r1.models.hf import LoraSpec, is_lora, load_policy, load_tokenizer, resolve_device
from r1.models.policy import build_policy, count_parameters
from r1.models.tokenizer import build_tokenizer
from r1.optim import adamw
from r1.pretrain import pretrain
from r1.report import read_metrics, write_report
from r1.rl.trainer import append_jsonl, rl_step, save_checkpoint
from r1.rollout.engine import make_engine
from r1.tasks import make_task

console = Console(soft_wrap=True)  # status lines stay whole in log files
hf_logging.disable_progress_bar()  # our own bars only; no "Writing model shards" per checkpoint


class Interrupted(Exception):
    """Ctrl-C during RL; the checkpoint and report were written."""


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console)


def _load(path: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path)


def _rl_checkpoints(run_dir: Path) -> list[Path]:
    """Complete RL checkpoints, oldest first (a ``step-*.tmp`` folder is a save that a kill interrupted)."""
    return sorted(p for p in (run_dir / "checkpoints").glob("step-*")
                  if not p.name.endswith(".tmp") and (p / "trainer_state.pt").exists())


def _device(cfg) -> str:
    return str(resolve_device(cfg.device))


def _lora(cfg):
    if not cfg.lora_r:
        return None
    targets = cfg.lora_target_modules
    return LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                    target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")])


def _stage_base(cfg, run_dir, tokenizer, task, heldout_keys):
    if cfg.model_path:  # a Hugging Face checkpoint is the base: nothing to pretrain
        base, _ = load_policy(cfg.model_path, cfg.dtype, device=_device(cfg), trainable=False)
        console.print(f"base model: {cfg.model_path} ({base.config.model_type}, "
                      f"{count_parameters(base) / 1e6:.1f}M parameters, {cfg.dtype}, {_device(cfg)})")
        return base, {"model_path": str(Path(cfg.model_path).resolve()), "parameters": count_parameters(base)}
    base_dir = run_dir / "checkpoints" / "base"
    if (base_dir / "model.safetensors").exists():
        console.print(f"[dim]base model: found {base_dir}, not made again[/]")
        return _load(base_dir), json.loads((base_dir / "pretrain.json").read_text())
    if cfg.base_from:  # same seed and architecture -> the same base; reuse it instead of pretraining again
        # (a pipeline also starts RL here from an SFT checkpoint: its weights only, not its optimizer state)
        tmp = _fresh_tmp(base_dir)
        shutil.copytree(cfg.base_from, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
        if not (tmp / "pretrain.json").exists():
            (tmp / "pretrain.json").write_text(json.dumps({"copied_from": str(Path(cfg.base_from).resolve())}, indent=1))
        tmp.rename(base_dir)  # complete or absent: a kill during the copy leaves only the .tmp folder
        console.print(f"[dim]base model: copied from {cfg.base_from}[/]")
        return _load(base_dir), json.loads((base_dir / "pretrain.json").read_text())
    model = build_policy(cfg, tokenizer, cfg.seed)
    console.print(f"policy: {cfg.model_type}, {count_parameters(model) / 1e6:.2f}M parameters, "
                  f"vocabulary {len(tokenizer)}")
    start = time.time()
    with _progress() as bar:
        t = bar.add_task("pretrain base", total=cfg.pretrain_steps, rate="", info="")

        def tick(step, loss):
            rate = (step + 1) / max(1e-9, time.time() - start)
            bar.update(t, advance=1, rate=f"{rate:.1f} steps/s", info=f"loss {loss:.3f}")
        info = pretrain(model, tokenizer, task, heldout_keys, cfg, tick)
    info["seconds"] = time.time() - start
    tmp = _fresh_tmp(base_dir)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "pretrain.json").write_text(json.dumps(info, indent=1))
    tmp.rename(base_dir)  # complete or absent, never half-written
    return model, info


def _fresh_tmp(path: Path) -> Path:
    """``path`` + ``.tmp``, emptied (a kill may have left one)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def _stage_eval(cfg, run_dir, model, tokenizer, task, problems, when, label="", title=None):
    """Evaluate ``model`` on ``problems`` into eval/<when><label>.json (skipped if it exists); ``title`` names it
    on screen (default "<when> RL<label>"). ``model`` may also be a function returning (model, tokenizer), loaded
    only when the file does not exist yet."""
    path = run_dir / "eval" / f"{when}{label}.json"
    if path.exists():
        return json.loads(path.read_text())["summary"]
    path.parent.mkdir(exist_ok=True)
    if not isinstance(model, torch.nn.Module):  # a loader: load only when there is something to evaluate
        model, tokenizer = model()
    title = title or f"{when} RL{label}"
    total = len(problems) * cfg.eval_k
    start = time.time()
    with _progress() as bar:
        t = bar.add_task(f"eval {title}", total=total, rate="", info="")
        result = evaluate(model, tokenizer, task, problems, cfg,
                          lambda n: bar.update(t, completed=n, rate=f"{n / max(1e-9, time.time() - start):.0f} samples/s"))
    result["summary"]["seconds"] = time.time() - start
    path.write_text(json.dumps(result, indent=1))
    s = result["summary"]
    console.print(f"eval {title}: pass@1 {100 * (s['pass@1'] or 0):.1f}%, mean length {s['len_mean']:.1f} tokens, "
                  f"reasoning {100 * s['reasoning_frac']:.0f}%, format {100 * s['format']:.0f}%"
                  + (f", readability {100 * s['readability']:.0f}%" if s.get("readability") is not None else ""))
    return s


def _eval_sets(cfg, task) -> dict:
    """Held-out problem sets by label: "" (generated, fixed seed) and, for Countdown, the test file's stem."""
    sets = {"": heldout_problems(task, cfg.eval_problems, cfg.seed)}
    if cfg.countdown_test_file:
        fitting = task.load_file(cfg.countdown_test_file)
        if fitting:
            sets["-" + Path(cfg.countdown_test_file).stem] = fitting
        else:
            console.print(f"[yellow]{cfg.countdown_test_file}: no problem fits this recipe's numbers; not evaluated[/]")
    return sets


def _eval_during_rl(cfg, policy, tokenizer, task, problems) -> dict:
    """The R1-protocol evaluation on the first ``eval_every_problems`` held-out problems, k = ``eval_every_k``.

    Returns the ``eval/*`` fields logged into that step's metrics row (seconds are wall time of the evaluation).
    Training randomness is reseeded every step, so evaluating does not change the training run.
    """
    start = time.time()
    small = dataclasses.replace(cfg, eval_k=cfg.eval_every_k)
    policy.eval()
    s = evaluate(policy, tokenizer, task, problems[:cfg.eval_every_problems], small)["summary"]
    policy.train()
    return {"eval/pass@1": s["pass@1"], "eval/len_mean": s["len_mean"], "eval/len_correct": s["len_correct"],
            "eval/reasoning_frac": s["reasoning_frac"], "eval/format": s["format"],
            "eval/language": s["language"], "eval/readability": s["readability"],
            "eval/seconds": time.time() - start}


def stop_on_ctrl_c(message: str):
    """Install a SIGINT handler: the first Ctrl-C prints ``message`` and sets ``stop["asked"]`` (the loop
    finishes its step, saves and stops); a second raises KeyboardInterrupt at once.

    Returns ``(stop, restore)``; call ``restore()`` to put the previous handler back.
    """
    stop = {"asked": False}

    def on_sigint(signum, frame):
        if stop["asked"]:
            raise KeyboardInterrupt
        stop["asked"] = True
        console.print(message)
    previous = signal.signal(signal.SIGINT, on_sigint)
    return stop, lambda: signal.signal(signal.SIGINT, previous)


def _stage_rl(cfg, run_dir, base, tokenizer, task, heldout_keys, eval_problems=()):
    ckpts = _rl_checkpoints(run_dir)
    if cfg.model_path:
        kw = dict(dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing, device=_device(cfg))
        policy = load_policy(ckpts[-1], **kw)[0] if ckpts else load_policy(cfg.model_path, lora=_lora(cfg), **kw)[0]
    else:
        policy = _load(ckpts[-1]) if ckpts else copy.deepcopy(base)
    # frozen: KL is taken to the base (R1 Eq. 2); with LoRA the base is the policy with adapters disabled
    reference = None if is_lora(policy) else base.eval().requires_grad_(False)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    start_step, rows = 0, []
    if ckpts:
        state = torch.load(ckpts[-1] / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        if "reference" in state:
            reference.load_state_dict(state["reference"])
        rows = [r for r in read_metrics(run_dir) if r["step"] <= start_step]  # drop steps after the checkpoint
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for path in (run_dir / "samples").glob("step-*.jsonl"):
            if int(path.stem.split("-")[1]) > start_step:
                path.unlink()
        if start_step >= cfg.rl_steps:
            console.print(f"[dim]RL: finished ({ckpts[-1].name}, rl_steps={cfg.rl_steps}), not run again[/]")
        else:
            console.print(f"[dim]RL: resuming from {ckpts[-1].name}[/]")
    if start_step >= cfg.rl_steps or _out_of_time(cfg, rows):
        return policy
    policy.train()
    engine = make_engine(cfg, policy, tokenizer)  # vLLM: loads the weights it starts from (a resumed policy's too)
    if start_step:
        engine.sync_weights(policy)
    stop, restore = stop_on_ctrl_c("[yellow]Ctrl-C: finishing this step, then saving a checkpoint and the report[/]")
    step = start_step
    try:
        with _progress() as bar:
            t = bar.add_task("GRPO", total=cfg.rl_steps, completed=start_step, rate="", info="")
            began, eval_s = time.time(), 0.0
            elapsed0 = rows[-1].get("time/elapsed_s", 0.0) if rows else 0.0
            for step in range(start_step, cfg.rl_steps):
                row, samples = rl_step(step, policy, reference, optimizer, tokenizer, task, heldout_keys, cfg,
                                       engine=engine)
                if cfg.ref_refresh_every and (step + 1) % cfg.ref_refresh_every == 0:
                    reference.load_state_dict(policy.state_dict())  # periodic reference refresh
                row["time/elapsed_s"] = elapsed0 + time.time() - began - eval_s  # training time, evaluations excluded
                if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                    row.update(_eval_during_rl(cfg, policy, tokenizer, task, eval_problems))
                    eval_s += row["eval/seconds"]
                append_jsonl(run_dir / "metrics.jsonl", [row])
                if (step + 1) % cfg.samples_every == 0 or step == 0:
                    append_jsonl(run_dir / "samples" / f"step-{step + 1:06d}.jsonl", samples)
                rate = (step + 1 - start_step) / max(1e-9, time.time() - began)
                bar.update(t, advance=1, rate=f"{rate:.2f} steps/s",
                           info=f"acc {row['reward/accuracy'] or 0:.2f} len {row['rollout/len_mean']:.0f}")
                if (step + 1) % cfg.log_every == 0:
                    bar.console.print(
                        f"step {step + 1:4d} | reward {row['reward/mean'] or 0:.3f} | acc {row['reward/accuracy'] or 0:.3f} | "
                        f"format {row['reward/format']:.2f} | len {row['rollout/len_mean']:.1f} | "
                        f"reasoning {row['rollout/reasoning_frac']:.2f} | kl {row['train/kl']:.4f} | "
                        f"gen {row['time/generate_s']:.2f}s upd {row['time/update_s']:.2f}s")
                last = step + 1 == cfg.rl_steps or _out_of_time(cfg, [row])
                if (step + 1) % cfg.save_every == 0 or last or stop["asked"]:
                    save_checkpoint(run_dir / "checkpoints" / f"step-{step + 1:06d}", policy, tokenizer, optimizer,
                                    step + 1, reference if cfg.ref_refresh_every else None)
                if stop["asked"] and not last:
                    raise Interrupted(step + 1)
                if last:
                    break
    finally:
        restore()
    return policy


def _out_of_time(cfg, rows: list[dict]) -> bool:
    """True when ``rl_max_seconds`` is set and the last row's training time (evaluations excluded) reached it."""
    return bool(cfg.rl_max_seconds and rows and rows[-1].get("time/elapsed_s", 0.0) >= cfg.rl_max_seconds)


def prepare_run_dir(cfg: RunConfig) -> Path:
    """A new run directory runs/<name>[-N] with the resolved config written into it."""
    base = Path(cfg.runs_dir) / cfg.name
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir = base.with_name(f"{cfg.name}-{n}")
        n += 1
    (run_dir / "samples").mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def run(cfg: RunConfig, run_dir: Path) -> dict:
    """Run (or resume) every stage of the main job in ``run_dir``; return the summary.

    Raises:
        Interrupted: Ctrl-C during RL (a checkpoint and the report so far were written).
    """
    started = time.time()
    prior = json.loads((run_dir / "summary.json").read_text()).get("wall_seconds", 0.0) \
        if (run_dir / "summary.json").exists() else 0.0
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    console.print(f"run directory: [bold]{run_dir}[/]  (task {cfg.task}, seed {cfg.seed})")
    console.print(f"batch: {cfg.prompts_per_step} prompts x G={cfg.group_size} = "
                  f"{cfg.prompts_per_step * cfg.group_size} completions per GRPO step, up to {cfg.max_new_tokens} "
                  f"tokens each; {cfg.rl_steps} step{'s' if cfg.rl_steps != 1 else ''}; eval {cfg.eval_problems} problems x k={cfg.eval_k}"
                  + ("; RL in bf16 mixed precision" if cfg.mixed_precision == "bf16" else ""))
    if not cfg.model_path and _device(cfg) != "cpu":  # say so rather than ignore device=cuda in silence
        console.print(f"[yellow]device={cfg.device} ({_device(cfg)}) applies to model_path checkpoints; the tiny "
                      "policy built from scratch is pretrained and trained on the CPU[/]")
    tokenizer = load_tokenizer(cfg.model_path) if cfg.model_path else build_tokenizer()
    task = make_task(cfg)
    eval_sets = _eval_sets(cfg, task)
    heldout_keys = {p.key for problems in eval_sets.values() for p in problems}  # never trained on

    def summary(status: str) -> dict:
        evals = {}
        for label in eval_sets:
            for when in ("before", "after"):
                p = run_dir / "eval" / f"{when}{label}.json"
                if p.exists():
                    evals[when + label.replace("-", "_")] = json.loads(p.read_text())["summary"]
        rows = read_metrics(run_dir)
        ckpts = _rl_checkpoints(run_dir)
        out = {"status": status, "task": cfg.task, "seed": cfg.seed, "eval": evals, "steps": len(rows),
               "wall_seconds": prior + time.time() - started, "pretrain": pretrain_info,
               "last_checkpoint": str(ckpts[-1].relative_to(run_dir)) if ckpts else None}
        (run_dir / "summary.json").write_text(json.dumps(out, indent=1))
        write_report(run_dir, cfg, {"status": status, "wall_seconds": out["wall_seconds"], "pretrain": pretrain_info})
        return out

    pretrain_info = None
    base, pretrain_info = _stage_base(cfg, run_dir, tokenizer, task, heldout_keys)
    for label, problems in eval_sets.items():
        _stage_eval(cfg, run_dir, base, tokenizer, task, problems, "before", label)
    try:
        policy = _stage_rl(cfg, run_dir, base, tokenizer, task, heldout_keys, eval_sets[""])
    except (Interrupted, KeyboardInterrupt):
        summary(f"interrupted during RL; resume with `r1 run --resume {run_dir}`")
        raise
    for label, problems in eval_sets.items():
        _stage_eval(cfg, run_dir, policy, tokenizer, task, problems, "after", label)
    out = summary("finished")
    console.print(f"[bold green]done[/] in {out['wall_seconds']:.0f} s: report {run_dir / 'report.md'}")
    return out
