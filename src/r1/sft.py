"""``r1 sft``: supervised fine-tuning on reasoning traces, loss on completion tokens only.

The SFT stages of DeepSeek-R1 (arXiv 2501.12948): the cold start on a few thousand readable long
CoT traces (§2.3.1), the SFT of the base on ~800k rejection-sampled traces for two epochs (§2.3.3),
and distillation into small dense models by SFT alone (§2.4). One example is

    prompt_for(question)  +  completion  +  EOS
    labels: -100 ...         completion  +  EOS          (the prompt is given, not learnt)

The prompt is rendered by :func:`r1.models.prompts.prompt_for` with the stage's config, so SFT and
RL see the same prompt; the EOS that ends the completion is a target, so the model learns to stop.

Data: a jsonl file (``sft_file``), one object per line, one of

* ``{"question": str, "completion": str}``: the question is rendered with ``prompt_for`` (what
  ``r1 sample`` writes; its ``prompt`` field, the rendered text, is then ignored);
* ``{"prompt": str, "completion": str}``: ``prompt`` is used verbatim, already rendered;
* ``{"messages": [{"role": "system"?}, {"role": "user"}, {"role": "assistant"}]}``: one turn; the user
  content is rendered with ``prompt_for`` (the row's system message, if any, replaces ``system_prompt``)
  and the assistant content is the completion. When the prompt opens ``<think>`` (R1-distill) and the
  completion repeats it, the repeat is dropped.

Batching: length bucketing, not packing (measured in ``docs/sft.md``): each optimizer step takes
``sft_batch_size`` examples in a seeded per-epoch shuffle, sorts them by length and runs them in
micro-batches of ``sft_micro_batch`` (each padded only to its own longest row); the gradient is the
batch's mean over target tokens. :func:`packed_loss` (several examples per row, position ids reset
and a block-diagonal causal mask, so nothing attends across examples) computes the same loss; it is
kept for the tests and the measurement.

Outputs, in the stage directory: ``config.yaml``; ``metrics.jsonl`` (per step ``train/loss`` in nats
per target token, ``train/lr``, ``train/grad_norm``, ``train/target_tokens``, ``time/tokens_per_s``
(tokens forwarded per second, padding excluded), ``time/elapsed_s``, and ``eval/*`` every ``eval_every``
steps, as ``r1 run`` logs them); ``checkpoints/step-NNNNNN`` (``save_policy`` + ``trainer_state.pt``)
every ``save_every`` steps and at the end; ``summary.json``. A stage directory with checkpoints is
resumed from its last one (same data order: the shuffle is seeded per epoch, the step seeds torch).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from r1.config import RunConfig, save_config
from r1.models.prompts import prompt_for, prompt_ids, render_prompt
from r1.optim import adamw
from r1.pretrain import lr_at

WARMUP_FRAC = 0.05  # linear warm-up over the first 5% of SFT steps (then cosine to 10%, as pretraining)
BUCKETS = 4  # micro-batches per step when sft_micro_batch = 0 (as pretraining)


class SftError(ValueError):
    """Bad SFT input (data file, model source); the message is one line."""


class Interrupted(Exception):
    """Ctrl-C during SFT; a checkpoint and summary.json were written."""


@dataclass(frozen=True)
class Example:
    """One tokenised trace: ``ids`` = prompt + completion + EOS, ``labels`` = -100 on the prompt, then the same ids."""

    ids: list[int]
    labels: list[int]


_ROW = 'expected {"question"|"prompt": str, "completion": str} or {"messages": [user, assistant]} per line'


def read_traces(path: str | Path) -> list[dict]:
    """The rows of a jsonl trace file, checked (module docstring for the layouts).

    Raises:
        SftError: missing file, a line that is not a JSON object, or a row of none of the layouts.
    """
    path = Path(path)
    if not path.is_file():
        raise SftError(f"sft_file {str(path)!r}: file not found ({_ROW})")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SftError(f"{path} line {n}: not valid JSON ({exc.msg}); {_ROW}") from None
        ok = isinstance(row, dict) and (
            (isinstance(row.get("completion"), str) and isinstance(row.get("question", row.get("prompt")), str))
            or _messages_ok(row.get("messages")))
        if not ok:
            raise SftError(f"{path} line {n}: {_ROW}")
        rows.append(row)
    if not rows:
        raise SftError(f"sft_file {str(path)!r}: no rows ({_ROW})")
    return rows


def _messages_ok(messages) -> bool:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return False
    roles = [m.get("role") for m in messages]
    return roles in (["user", "assistant"], ["system", "user", "assistant"]) and \
        all(isinstance(m.get("content"), str) for m in messages)


def encode_row(tokenizer, row: dict, cfg) -> Example:
    """Tokenise one trace: prompt (exactly one BOS) + completion + EOS; labels -100 on the prompt."""
    if "messages" in row:
        msgs = row["messages"]
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else (cfg.system_prompt or None)
        fmt = cfg.prompt_format if cfg.prompt_format != "auto" else \
            ("chat" if getattr(tokenizer, "chat_template", None) else "r1_zero")
        prompt = render_prompt(tokenizer, msgs[-2]["content"], fmt, system=system, instruction=cfg.instruction or None)
        completion = msgs[-1]["content"]
    elif "question" in row:
        prompt, completion = prompt_for(tokenizer, row["question"], cfg), row["completion"]
    else:  # an already rendered prompt, verbatim
        prompt, completion = None, row["completion"]
    if prompt is None:
        p = tokenizer(row["prompt"], add_special_tokens=False).input_ids
    else:
        p = prompt_ids(tokenizer, prompt.text)
        opened = prompt.completion_prefix.strip()  # "<think>" when the prompt opened it (R1-distill)
        if opened and completion.lstrip().startswith(opened):  # do not learn it a second time
            completion = completion.lstrip()[len(opened):].lstrip("\n")
    c = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return Example(p + c, [-100] * len(p) + c)


def pad_examples(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ids, attention_mask, labels``, each [N, T] right-padded (T = longest example; labels -100 on padding)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    lab = torch.full((len(examples), width), -100, dtype=torch.long)
    att = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        lab[i, :len(e.labels)] = torch.tensor(e.labels)
        att[i, :len(e.ids)] = 1
    return ids, att, lab


def bucketed_loss_backward(model, ids, att, lab, micro_batch: int = 0) -> tuple[torch.Tensor, int]:
    """Mean next-token loss over every target token of the batch, backpropagated micro-batch by micro-batch.

    Rows are sorted by length and cut into micro-batches of ``micro_batch`` rows (0: ``BUCKETS`` of them),
    each padded only to its own longest row; the gradient equals the whole batch's (a sum over target
    tokens divided by their total count), as ``r1.pretrain.bucketed_loss_backward``, on the model's device.

    Args:
        ids, att, lab: [N, T] right-padded input ids, attention mask, labels (-100 = not a target).
    Returns:
        (detached mean loss in nats per target token, number of target tokens).
    """
    device = next(model.parameters()).device
    n_targets = int((lab[:, 1:] != -100).sum())
    size = micro_batch or math.ceil(len(ids) / BUCKETS)
    total = torch.zeros((), device=device)
    for rows in att.sum(1).argsort(stable=True).split(size):
        width = int(att[rows].sum(1).max())
        logits = model(input_ids=ids[rows, :width].to(device), attention_mask=att[rows, :width].to(device)).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),  # [n*(w-1), V]
                                                 lab[rows, 1:width].flatten().to(device), ignore_index=-100,
                                                 reduction="sum")
        (loss / max(1, n_targets)).backward()
        total += loss.detach()
    return total / max(1, n_targets), n_targets


def pack_examples(examples: list[Example], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Several examples per row, first-fit by decreasing length, for :func:`packed_loss`.

    Returns ``input_ids``, ``labels``, ``position_ids`` (reset to 0 at each example), ``segment`` (the example's
    index in its row; padding gets -1 - column, so it is its own segment), each [R, width]. The first label of
    each example is -100 (never predicted from the previous example's last token).
    Raises:
        ValueError: an example is longer than ``width``.
    """
    rows: list[list[Example]] = []
    for e in sorted(examples, key=lambda e: -len(e.ids)):
        if len(e.ids) > width:
            raise ValueError(f"example of {len(e.ids)} tokens does not fit a packed row of {width}")
        row = next((r for r in rows if sum(len(x.ids) for x in r) + len(e.ids) <= width), None)
        rows.append([e]) if row is None else row.append(e)
    out = {"input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
           "labels": torch.full((len(rows), width), -100, dtype=torch.long),
           "position_ids": torch.zeros((len(rows), width), dtype=torch.long),
           "segment": -1 - torch.arange(width).repeat(len(rows), 1)}
    for r, row in enumerate(rows):
        start = 0
        for s, e in enumerate(row):
            end = start + len(e.ids)
            out["input_ids"][r, start:end] = torch.tensor(e.ids)
            out["labels"][r, start + 1:end] = torch.tensor(e.labels[1:])
            out["position_ids"][r, start:end] = torch.arange(len(e.ids))
            out["segment"][r, start:end] = s
            start = end
    return out


def packed_loss(model, packed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of next-token losses over the target tokens of packed rows, and their count.

    The attention mask is 4-D boolean [R, 1, W, W]: query i sees key j iff j <= i and both are in the same
    segment, so no example attends to another (and position ids restart per example, so rotary positions
    are those of an unpacked example). Passed as a 4-D mask, transformers uses it as is.
    """
    seg = packed["segment"]  # [R, W]
    width = seg.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal  # [R, W, W]
    logits = model(input_ids=packed["input_ids"], attention_mask=mask[:, None],
                   position_ids=packed["position_ids"]).logits  # [R, W, V]
    lab = packed["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), lab.flatten(),
                                             ignore_index=-100, reduction="sum")
    return loss, int((lab != -100).sum())


def load_init(cfg) -> tuple:
    """The model to fine-tune and its tokenizer, from ``init_from`` (else ``model_path``); and a one-line source.

    ``init_from`` is a run directory (its last RL checkpoint, else ``checkpoints/base``), a checkpoint
    directory, a Hugging Face model directory, or ``scratch`` (the tiny policy of the recipe, random init,
    ``cfg.seed``). LoRA, dtype and gradient checkpointing apply to ``model_path`` as in ``r1 run``.
    Raises:
        SftError: neither is set, or the directory holds no model; r1.models.hf.ModelLoadError from loading.
    """
    from r1.eval.command import EvalError, resolve_model
    from r1.models.hf import load_policy
    from r1.run import _device, _lora

    source = cfg.init_from or cfg.model_path
    if not source:
        raise SftError("no model to fine-tune: expected init_from=RUN_DIR|CHECKPOINT|HF_DIR|scratch or model_path=HF_DIR")
    if source == "scratch":
        from r1.models.policy import build_policy
        from r1.models.tokenizer import build_tokenizer
        tokenizer = build_tokenizer()
        return build_policy(cfg, tokenizer, cfg.seed), tokenizer, "scratch (random init, seed %d)" % cfg.seed
    try:
        target = resolve_model(source)
    except EvalError as exc:
        raise SftError(str(exc).replace("MODEL", "init_from", 1)) from None
    lora = _lora(cfg) if source == cfg.model_path else None
    model, tokenizer = load_policy(target.model_dir, cfg.dtype, cfg.gradient_checkpointing, lora=lora,
                                   device=_device(cfg))
    return model, tokenizer, str(target.model_dir.resolve())


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of optimizer step ``step`` (0-based): consecutive slices of a per-epoch seeded shuffle.

    An epoch is ``ceil(n / batch_size)`` steps (its last batch may be smaller); the order depends only on
    ``(seed, epoch)``, so a resumed stage sees the same batches.
    """
    per_epoch = math.ceil(n / batch_size)
    epoch, i = divmod(step, per_epoch)
    order = list(range(n))
    random.Random(f"{seed}/sft/{epoch}").shuffle(order)
    return order[i * batch_size:(i + 1) * batch_size]


def total_steps(cfg, n: int) -> int:
    """``sft_steps``, or ``sft_epochs`` passes of ``ceil(n / sft_batch_size)`` steps."""
    return cfg.sft_steps or cfg.sft_epochs * math.ceil(n / cfg.sft_batch_size)


def _checkpoints(stage_dir: Path) -> list[Path]:
    return sorted(p for p in (stage_dir / "checkpoints").glob("step-*")
                  if not p.name.endswith(".tmp") and (p / "trainer_state.pt").exists())  # .tmp: an interrupted save


def run_sft(cfg: RunConfig, stage_dir: str | Path, quiet: bool = False) -> dict:
    """Fine-tune on ``cfg.sft_file`` into ``stage_dir`` (created if needed, resumed if it holds checkpoints).

    Returns the summary (also written to ``summary.json``): ``status``, ``steps``, ``examples``,
    ``dropped_too_long``, ``loss_first``, ``loss_last`` (nats per target token), ``eval`` (last ``eval/*``
    row or None), ``last_checkpoint`` (relative to ``stage_dir``), ``wall_seconds``, ``model``.
    Raises:
        SftError, r1.models.hf.ModelLoadError, r1.models.prompts.PromptFormatError: bad input.
        Interrupted: the first Ctrl-C ends the current step, saves a checkpoint and summary.json, then raises.
    """
    from r1.eval.protocol import heldout_problems
    from r1.rl.trainer import append_jsonl, save_checkpoint
    from r1.run import _eval_during_rl, _progress, console, stop_on_ctrl_c
    from r1.tasks import make_task

    started, stage_dir = time.time(), Path(stage_dir)
    if not cfg.sft_file:
        raise SftError("sft_file is not set: expected sft_file=TRACES.jsonl (e.g. the output of r1 sample)")
    rows = read_traces(cfg.sft_file)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    model, tokenizer, source = load_init(cfg)
    limit = getattr(model.config, "max_position_embeddings", None) or 10**9
    encoded = [encode_row(tokenizer, r, cfg) for r in rows]
    examples = [e for e in encoded if len(e.ids) <= limit]
    if not examples:
        raise SftError(f"sft_file {cfg.sft_file!r}: every example is longer than the model's {limit} positions")
    steps = total_steps(cfg, len(examples))
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "checkpoints").mkdir(exist_ok=True)
    save_config(cfg, stage_dir / "config.yaml")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=cfg.sft_lr, betas=(0.9, 0.95), weight_decay=0.01)
    start, metrics = 0, stage_dir / "metrics.jsonl"
    ckpts = _checkpoints(stage_dir)
    if ckpts:  # resume: weights, optimizer and step from the last checkpoint; metrics cut back to it
        from r1.models.hf import load_policy
        model, tokenizer = load_policy(ckpts[-1], cfg.dtype, cfg.gradient_checkpointing, device=str(
            next(model.parameters()).device))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = adamw(params, lr=cfg.sft_lr, betas=(0.9, 0.95), weight_decay=0.01)
        state = torch.load(ckpts[-1] / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    kept = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    kept = [r for r in kept if r["step"] <= start]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
    task = make_task(cfg) if cfg.eval_every else None
    problems = heldout_problems(task, cfg.eval_problems, cfg.seed) if task else []
    if not quiet:
        console.print(f"SFT: {len(examples)} examples from {cfg.sft_file} ({len(encoded) - len(examples)} longer than "
                      f"{limit} tokens dropped), {steps} steps x {cfg.sft_batch_size} examples, lr {cfg.sft_lr}; "
                      f"model {source}" + (f"; resuming at step {start}" if start else ""))

    def summary(status: str) -> dict:
        rows_ = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
        evals = [r for r in rows_ if "eval/pass@1" in r]
        last = _checkpoints(stage_dir)
        out = {"status": status, "steps": len(rows_), "total_steps": steps, "examples": len(examples),
               "dropped_too_long": len(encoded) - len(examples), "sft_file": str(Path(cfg.sft_file).resolve()),
               "model": source, "loss_first": rows_[0]["train/loss"] if rows_ else None,
               "loss_last": rows_[-1]["train/loss"] if rows_ else None,
               "eval": {k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else None,
               "last_checkpoint": str(last[-1].relative_to(stage_dir)) if last else None,
               "wall_seconds": time.time() - started}
        (stage_dir / "summary.json").write_text(json.dumps(out, indent=1))
        return out

    stop, restore = stop_on_ctrl_c("[yellow]Ctrl-C: finishing this step, then saving a checkpoint[/]")
    try:
        _train(cfg, model, tokenizer, optimizer, examples, start, steps, stage_dir, problems, task, stop, quiet,
               (append_jsonl, save_checkpoint, _eval_during_rl, _progress))
    except (Interrupted, KeyboardInterrupt):
        summary("interrupted; run again on the same stage directory to resume from the last checkpoint")
        raise
    finally:
        restore()
    return summary("finished")


def _train(cfg, model, tokenizer, optimizer, examples, start, steps, stage_dir, problems, task, stop, quiet, fns):
    """The SFT loop from step ``start`` to ``steps``: batch -> loss -> AdamW -> log / evaluate / save."""
    append_jsonl, save_checkpoint, eval_fn, progress = fns
    metrics, began, eval_s = stage_dir / "metrics.jsonl", time.time(), 0.0
    warmup = max(1, round(WARMUP_FRAC * steps))
    model.train()
    with progress() as bar:
        t = bar.add_task("SFT", total=steps, completed=start, rate="", info="", visible=not quiet)
        for step in range(start, steps):
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout, if any: the same on resume
            lr = lr_at(step, steps, warmup, cfg.sft_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            batch = [examples[i] for i in batch_indices(step, len(examples), cfg.sft_batch_size, cfg.seed)]
            ids, att, lab = pad_examples(batch, tokenizer.pad_token_id)
            optimizer.zero_grad(set_to_none=True)
            loss, n_targets = bucketed_loss_backward(model, ids, att, lab, cfg.sft_micro_batch)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            dt = time.perf_counter() - t0
            row = {"step": step + 1, "epoch": step // math.ceil(len(examples) / cfg.sft_batch_size) + 1,
                   "train/loss": loss.item(), "train/lr": lr, "train/grad_norm": grad_norm.item(),
                   "train/target_tokens": n_targets, "time/tokens_per_s": int(att.sum()) / max(1e-9, dt),
                   "time/elapsed_s": time.time() - began - eval_s}
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                row.update(eval_fn(cfg, model, tokenizer, task, problems))
                eval_s += row["eval/seconds"]
            append_jsonl(metrics, [row])
            bar.update(t, advance=1, rate=f"{row['time/tokens_per_s']:.0f} tokens/s", info=f"loss {row['train/loss']:.3f}"
                       + (f" pass@1 {row['eval/pass@1']:.2f}" if row.get("eval/pass@1") is not None else ""))
            last = step + 1 == steps
            if (step + 1) % cfg.save_every == 0 or last or stop["asked"]:
                save_checkpoint(stage_dir / "checkpoints" / f"step-{step + 1:06d}", model, tokenizer, optimizer, step + 1)
                for old in _checkpoints(stage_dir)[:-1]:  # keep the last one only
                    shutil.rmtree(old)
            if stop["asked"] and not last:
                raise Interrupted(step + 1)


def new_stage_dir(cfg) -> Path:
    """A new folder ``runs_dir/name[-N]`` (never an existing one)."""
    base = Path(cfg.runs_dir) / cfg.name
    stage, n = base, 1
    while stage.exists():
        stage, n = base.with_name(f"{cfg.name}-{n}"), n + 1
    return stage
