"""Old against new lean forward and sampler, alternating calls in one process: is a change to
``src/r1/models/lean.py`` faster, and does it give the same numbers?

    .venv/bin/python benchmarks/lean_ab.py --base HEAD~1                     # the work tree against the commit before
    .venv/bin/python benchmarks/lean_ab.py --base 2fd694e --sizes 10M --repeats 21 --out /tmp/ab.md
    .venv/bin/python benchmarks/lean_ab.py --base HEAD~1 --precision bf16    # dtype=torch.bfloat16 on float32 weights

The two versions of ``lean.py`` (``--base`` and ``--new``: git revisions, ``--new`` by default the work tree) are
loaded side by side as two modules (lean.py imports only torch), on the same model (the Qwen2 sizes of
``benchmarks/grpo_step.py``, random weights, seed 0) and the same batch: the 8 prompts of the GRPO benchmark's first
step x 8 completions of at most 64 tokens, sampled once at temperature 1 by the new version (seed 0). Each
operation runs ``--warmup`` times per version, then ``--repeats`` times per version alternating (base, new, then
new, base, ...), so that the machine's drift between minutes falls on both alike; timing one version after the
other in separate runs read differences of 5-8% that alternating calls did not confirm (docs/performance.md).

Operations (2 threads, as the GRPO benchmark):

* ``sample``: ``lean.sample`` of the 8 prompts x 8 (the same seed for both versions at each repeat; the tokens of
  both are compared);
* ``reference forward``: ``lean.token_logprobs`` without gradients and without entropies (the reference model's
  pass at beta > 0);
* ``forward + backward``: ``lean.token_logprobs`` with gradients and entropies, then the backward of the summed
  log-probabilities (the policy's pass; both versions' parameter gradients are compared).

Printed: one Markdown table (median milliseconds of each version, new / base, and how far the outputs differ: max
absolute difference of the log-probabilities in nats, of the parameter gradients relative to their largest entry,
and the share of sampled rows with identical tokens). ``--out`` also writes it, with a line naming the versions,
the machine and the settings. Exit code 2 with one line on stderr for a bad command line or a revision git
cannot show.

What is noise: the same code on both sides (``--base HEAD`` with a clean work tree) read new / base 0.978-1.003
with 15-31 calls per version on 2 cores (docs/performance.md, item 15); across a refactor with the same
arithmetic (b302c68), 11 calls read 0.964 for the reference forward. Read a ratio within ~2% of 1 (31 calls) or
~4% (11 calls) as no change, and run ``--base HEAD`` first on a new machine.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from r1.cli import OneLineParser

ROOT = Path(__file__).resolve().parents[1]
LEAN = "src/r1/models/lean.py"
G, MAX_NEW = 8, 64
OPERATIONS = ("sample", "reference", "policy")


def load_lean(rev: str | None, folder: Path):
    """The module ``lean.py`` of git revision ``rev`` (None: the work tree's file), loaded under its own name from a
    copy in ``folder`` (TorchScript reads the source of the functions it compiles, so the copy must outlive the
    compilation). Raises ValueError (one line) where git cannot show the file at ``rev``."""
    if rev is None:
        source = (ROOT / LEAN).read_text()
    else:
        proc = subprocess.run(["git", "show", f"{rev}:{LEAN}"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        if proc.returncode:
            why = (proc.stderr.strip().splitlines() or ["git failed"])[-1]
            raise ValueError(f"--base/--new {rev!r}: git cannot show {LEAN} there ({why})")
        source = proc.stdout
    tag = "work_tree" if rev is None else "".join(c if c.isalnum() else "_" for c in rev)
    path = folder / f"lean_{tag}_{len(list(folder.iterdir()))}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses and TorchScript look modules up by name
    spec.loader.exec_module(module)
    return module


def batch(model, tok, lean, dtype):
    """The benchmark's first-step prompts [8, P] (ids, mask) and 8 sampled completions each [64, L] (ids, mask:
    1 up to and including the stop token), drawn by ``lean`` at temperature 1 with seed 0."""
    import torch

    from r1.config import load_config
    from r1.models.prompts import prompt_for
    from r1.tasks.multiplication import MultiplicationTask

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import grpo_step

    cfg = load_config(None, [])
    texts = [prompt_for(tok, p.question, cfg).text for p in grpo_step.step_problems(MultiplicationTask(2, 2), 0)]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    torch.manual_seed(0)
    ids, _ = lean.sample(model, enc.input_ids, enc.attention_mask, G, MAX_NEW, stop_ids=[tok.eos_token_id],
                         pad_id=tok.pad_token_id, dtype=dtype)
    stop = (ids == tok.eos_token_id).long()
    after = (stop.cumsum(-1) - stop) > 0  # positions after the first stop token
    comp_mask = (~after).long()
    rows = torch.arange(enc.input_ids.shape[0]).repeat_interleave(G)
    return enc.input_ids[rows], enc.attention_mask[rows], ids, comp_mask, (enc.input_ids, enc.attention_mask)


def measure(size: str, base, new, repeats: int, warmup: int, dtype, model_dir: Path,
            operations: tuple[str, ...] = OPERATIONS) -> list[dict]:
    """``operations`` (of the module docstring) for one model size; one dict per operation."""
    import torch
    from transformers import AutoModelForCausalLM

    from r1.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    p_ids, p_mask, c_ids, c_mask, prompts = batch(model, tok, new, dtype)
    params = [p for p in model.parameters() if p.requires_grad]

    def sample(lean, seed):
        torch.manual_seed(seed)
        return lean.sample(model, *prompts, G, MAX_NEW, stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
                           dtype=dtype)[0]

    def reference(lean, seed):
        with torch.no_grad():
            return lean.token_logprobs(model, p_ids, p_mask, c_ids, c_mask, dtype=dtype, entropy=False)[0]

    def policy(lean, seed):
        for p in params:
            p.grad = None
        logp, _ = lean.token_logprobs(model, p_ids, p_mask, c_ids, c_mask, dtype=dtype)
        logp.sum().backward()
        return logp.detach(), [p.grad.clone() for p in params]

    rows = []
    for key, name, fn in (("sample", "sample", sample), ("reference", "reference forward", reference),
                          ("policy", "forward + backward", policy)):
        if key not in operations:
            continue
        for lean in (base, new):
            for _ in range(warmup):
                fn(lean, 0)
        times = {"base": [], "new": []}
        outs, same = {}, []
        for r in range(repeats):
            for which in (("base", "new") if r % 2 == 0 else ("new", "base")):
                lean = base if which == "base" else new
                t0 = time.perf_counter()
                outs[which] = fn(lean, 1000 + r)
                times[which].append(time.perf_counter() - t0)
            if name == "sample":  # rows of identical tokens (a different longest row: none identical)
                a, b = outs["base"], outs["new"]
                same.append((a == b).all(-1).float().mean().item() if a.shape == b.shape else 0.0)
        row = {"size": size, "operation": name, "base_ms": 1e3 * statistics.median(times["base"]),
               "new_ms": 1e3 * statistics.median(times["new"])}
        if name == "sample":
            row["differs"] = f"{100 * statistics.mean(same):.1f}% of rows identical"
        elif name == "reference forward":
            row["differs"] = f"logp {float((outs['base'] - outs['new']).abs().max()):.1e}"
        else:
            (la, ga), (lb, gb) = outs["base"], outs["new"]
            scale = max(float(g.abs().max()) for g in ga) or 1.0
            grad = max(float((x - y).abs().max()) for x, y in zip(ga, gb)) / scale
            row["differs"] = f"logp {float((la - lb).abs().max()):.1e}, grad {grad:.1e}"
        rows.append(row)
        print(f"{size:4s} {name:18s} base {row['base_ms']:8.1f} ms  new {row['new_ms']:8.1f} ms  "
              f"{row['new_ms'] / row['base_ms']:.3f}  ({row['differs']})", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | operation | base ms | new ms | new / base | outputs |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['operation']} | {r['base_ms']:.1f} | {r['new_ms']:.1f} | "
                     f"{r['new_ms'] / r['base_ms']:.3f} | {r['differs']} |")
    return "\n".join(lines)


def main() -> int:
    ap = OneLineParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git revision of the old lean.py (e.g. HEAD~1, a commit)")
    ap.add_argument("--new", help="git revision of the new lean.py (default: the work tree's file)")
    ap.add_argument("--sizes", default="1M,10M", help="comma-separated, from 1M and 10M (default: both)")
    ap.add_argument("--repeats", type=int, default=15, help="alternating calls per version, median over them (default 15)")
    ap.add_argument("--warmup", type=int, default=3, help="calls per version before the timed ones (default 3)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="fp32, or bf16 mixed precision (dtype=torch.bfloat16 on the float32 weights)")
    ap.add_argument("--ops", default=",".join(OPERATIONS), help="comma-separated, from sample (lean.sample), reference "
                    "(forward without gradients), policy (forward + backward); default: all three")
    ap.add_argument("--out", help="also write the table (Markdown) here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import grpo_step

    sizes = args.sizes.split(",")
    problem = None
    if not sizes or any(s not in grpo_step.SIZES for s in sizes):
        problem = f"--sizes {args.sizes!r}: expected a comma-separated list of {', '.join(grpo_step.SIZES)}"
    elif not set(args.ops.split(",")) <= set(OPERATIONS):
        problem = f"--ops {args.ops!r}: expected a comma-separated list of {', '.join(OPERATIONS)}"
    elif args.repeats < 1 or args.warmup < 0:
        problem = f"--repeats {args.repeats} --warmup {args.warmup}: expected at least 1 repeat and no negative warm-up"
    elif args.out:
        from r1.report import output_problem
        why = output_problem(Path(args.out), ())
        problem = why and f"--out={args.out!r}: {why}"
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        if not problem:
            try:
                base, new = load_lean(args.base, Path(tmp)), load_lean(args.new, Path(tmp))
            except ValueError as e:
                problem = str(e)
        if problem:
            print(f"lean_ab.py: {problem}", file=sys.stderr)  # one line, exit 2
            return 2
        torch.set_num_threads(grpo_step.THREADS)
        dtype = torch.bfloat16 if args.precision == "bf16" else None
        where = grpo_step.provenance(args.precision, "r1", args.repeats, args.warmup)
        rows = []
        for size in sizes:
            model_dir = grpo_step.build_model(size, Path(tmp) / size)
            rows += measure(size, base, new, args.repeats, args.warmup, dtype, model_dir, tuple(args.ops.split(",")))
    text = (f"lean.py {args.base} (base) against {args.new or 'the work tree'} (new), {args.precision}; median of "
            f"{args.repeats} alternating calls after {args.warmup} warm-up; started {where['started_utc']} UTC on "
            f"{where['cpu']}, {grpo_step.THREADS} threads; torch {where['torch']}; work tree at {where['commit']}"
            "\n\n" + table(rows))
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
