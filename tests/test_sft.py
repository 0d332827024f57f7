"""r1 sft: completion-only labels, bucketing and packing against a per-example float64 reference, training."""

import json
import random
import subprocess
import sys

import pytest
import torch

from r1.cli import main
from r1.config import RunConfig
from r1.models.policy import build_policy
from r1.models.tokenizer import build_tokenizer
from r1.sft import (Example, bucketed_loss_backward, encode_row, pack_examples, packed_loss, pad_examples,
                    read_traces, run_sft)
from r1.tasks.multiplication import MultiplicationTask

MICRO = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # these micro models gain nothing from a second thread, and lose much when it is shared
    yield


def _traces(path, n=24, seed=0):
    task, rng = MultiplicationTask(), random.Random(seed)
    rows = []
    for i in range(n):
        p = task.sample(rng)
        rows.append({"question": p.question, "completion": task.trace(p, i % 2 == 0, rng)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_labels_mask_the_prompt_and_keep_eos():
    tok, cfg = build_tokenizer(), RunConfig()
    a = encode_row(tok, {"question": "12*34", "completion": "<think>\n</think>\n<answer>408</answer>"}, cfg)
    b = encode_row(tok, {"messages": [{"role": "user", "content": "9*9"},
                                      {"role": "assistant", "content": "<think>\n</think>\n<answer>81</answer>"}]}, cfg)
    # "User: 12*34\nAssistant: " is 6 + 5 + 1 + 11 = 23 characters = 23 prompt tokens; the completion is
    # <think> \n </think> \n <answer> 4 0 8 </answer> = 9 tokens, then EOS (id 1): 10 targets
    assert len(a.ids) == 33 and a.labels[:23] == [-100] * 23 and a.labels[23:] == a.ids[23:]
    assert a.ids[-1] == tok.eos_token_id == 1 and a.labels[-1] == 1
    assert tok.decode(a.ids[:23]) == "User: 12*34\nAssistant: "
    # "User: 9*9\nAssistant: " = 21 prompt tokens; 8 completion tokens + EOS
    assert len(b.ids) == 30 and b.labels[:21] == [-100] * 21 and b.labels[21:] == b.ids[21:]
    ids, att, lab = pad_examples([a, b], tok.pad_token_id)
    assert ids.shape == (2, 33) and att[1].sum() == 30
    assert lab[1, 30:].tolist() == [-100] * 3 and ids[1, 30:].tolist() == [tok.pad_token_id] * 3  # padding ignored
    assert (lab != -100).sum(1).tolist() == [10, 9]
    # an already rendered prompt is used verbatim
    c = encode_row(tok, {"prompt": "User: 1*1\nAssistant: ", "completion": "x"}, cfg)
    assert c.labels == [-100] * 21 + [c.ids[-2], 1]


def _examples(tok, cfg, n=7):
    task, rng = MultiplicationTask(), random.Random(1)
    out = []
    for i in range(n):
        p = task.sample(rng)
        out.append(encode_row(tok, {"question": p.question, "completion": task.trace(p, i % 3 == 0, rng)}, cfg))
    return out


def test_bucketing_and_packing_equal_the_per_example_float64_reference():
    tok, cfg = build_tokenizer(), RunConfig(**MICRO)
    model = build_policy(cfg, tok, 0).double()
    examples = _examples(tok, cfg)
    with torch.no_grad():  # reference: one example at a time, no padding, sum over targets / count
        total, count = 0.0, 0
        for e in examples:
            logits = model(input_ids=torch.tensor([e.ids])).logits[0, :-1]
            lab = torch.tensor(e.labels[1:])
            total += torch.nn.functional.cross_entropy(logits, lab, ignore_index=-100, reduction="sum").item()
            count += int((lab != -100).sum())
    reference = total / count
    ids, att, lab = pad_examples(examples, tok.pad_token_id)
    for micro in (0, 1, 3, len(examples)):
        loss, n = bucketed_loss_backward(model, ids, att, lab, micro)
        assert n == count and loss.item() == pytest.approx(reference, abs=1e-6)
    packed = pack_examples(examples, 128, tok.pad_token_id)
    assert packed["input_ids"].shape[0] < len(examples)  # several examples share a row
    with torch.no_grad():
        loss, n = packed_loss(model, packed)
    assert n == count and (loss / n).item() == pytest.approx(reference, abs=1e-6)


def test_packing_never_attends_across_examples():
    tok, cfg = build_tokenizer(), RunConfig(**MICRO)
    model = build_policy(cfg, tok, 0).double().eval()
    a, b = Example([5, 6, 7, 8], [-100, 6, 7, 8]), Example([9, 10, 11], [-100, 10, 11])
    packed = pack_examples([a, b], 8, tok.pad_token_id)
    assert packed["input_ids"][0].tolist()[:7] == [5, 6, 7, 8, 9, 10, 11]
    assert packed["position_ids"][0].tolist()[:7] == [0, 1, 2, 3, 0, 1, 2]
    assert packed["labels"][0].tolist()[:7] == [-100, 6, 7, 8, -100, 10, 11]  # b's first token is not a target of a
    seg = packed["segment"]
    mask = ((seg[:, :, None] == seg[:, None, :]) & torch.ones(8, 8, dtype=torch.bool).tril())[:, None]
    kwargs = dict(attention_mask=mask, position_ids=packed["position_ids"])
    with torch.no_grad():
        before = model(input_ids=packed["input_ids"], **kwargs).logits[0, 4:7]
        changed = packed["input_ids"].clone()
        changed[0, :4] = torch.tensor([20, 21, 22, 23])  # another first example
        after = model(input_ids=changed, **kwargs).logits[0, 4:7]
        alone = model(input_ids=torch.tensor([[9, 10, 11]])).logits[0]
    assert torch.equal(before, after)  # b does not see a
    assert torch.allclose(before, alone, atol=1e-10)  # and is computed as if alone


def _cfg(tmp_path, traces, **kw):
    base = dict(init_from="scratch", sft_file=str(traces), sft_steps=12, sft_batch_size=8, sft_lr=3e-3,
                save_every=5, threads=1)
    return RunConfig(**MICRO, **{**base, **kw})


def test_sft_lowers_the_loss_and_is_deterministic(tmp_path):
    traces = _traces(tmp_path / "traces.jsonl")
    eval_kw = dict(eval_every=6, eval_problems=4, eval_every_problems=2, eval_every_k=2, max_new_tokens=12)
    s1 = run_sft(_cfg(tmp_path, traces, **eval_kw), tmp_path / "a", quiet=True)
    run_sft(_cfg(tmp_path, traces, **eval_kw), tmp_path / "b", quiet=True)
    assert s1["status"] == "finished" and s1["steps"] == 12 and s1["examples"] == 24
    assert s1["loss_last"] < s1["loss_first"] - 0.5
    read = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    keep = lambda r: {k: v for k, v in r.items() if not k.startswith("time/") and k != "eval/seconds"}  # noqa: E731
    assert [keep(r) for r in read("a")] == [keep(r) for r in read("b")]
    assert [("eval/pass@1" in r) for r in read("a")] == [False] * 5 + [True] + [False] * 5 + [True]
    assert all(r["time/tokens_per_s"] > 0 and r["train/target_tokens"] > 0 for r in read("a"))
    ckpts = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert ckpts == ["step-000012"] and s1["last_checkpoint"] == "checkpoints/step-000012"
    assert (tmp_path / "a" / "config.yaml").is_file() and s1["eval"]["eval/pass@1"] is not None
    a = (tmp_path / "a" / "checkpoints" / "step-000012" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "checkpoints" / "step-000012" / "model.safetensors").read_bytes()


def test_resume_from_a_checkpoint_gives_the_same_run(tmp_path, monkeypatch):
    import r1.sft
    traces = _traces(tmp_path / "traces.jsonl")
    cfg = _cfg(tmp_path, traces, sft_steps=8, save_every=4)
    full = run_sft(cfg, tmp_path / "full", quiet=True)
    # kill during step 7: metrics hold steps 1..6, the last checkpoint is step 4
    real, calls = r1.sft.bucketed_loss_backward, []

    def dying(*args):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(r1.sft, "bucketed_loss_backward", dying)
    with pytest.raises(KeyboardInterrupt):
        run_sft(cfg, tmp_path / "part", quiet=True)
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 6
    assert [p.name for p in (tmp_path / "part" / "checkpoints").iterdir()] == ["step-000004"]
    monkeypatch.setattr(r1.sft, "bucketed_loss_backward", real)
    resumed = run_sft(cfg, tmp_path / "part", quiet=True)
    read = lambda d: [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")}  # noqa: E731
                      for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert read("part") == read("full") and resumed["steps"] == full["steps"] == 8
    w = lambda d: (tmp_path / d / "checkpoints" / "step-000008" / "model.safetensors").read_bytes()  # noqa: E731
    assert w("part") == w("full")
    # the SFT optimizer (r1.optim.adamw), as saved and resumed: fused on CPU, betas (0.9, 0.95), weight decay 0.01
    state = torch.load(tmp_path / "part" / "checkpoints" / "step-000008" / "trainer_state.pt", weights_only=False)
    group = state["optimizer"]["param_groups"][0]
    assert (group["fused"], tuple(group["betas"]), group["weight_decay"]) == (True, (0.9, 0.95), 0.01)


def test_read_traces_rejects_bad_rows(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1*1", "completion": "x"}\n{"question": "2*2"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_traces(bad)


@pytest.mark.parametrize("args, needle", [
    (["sft_file=missing.jsonl", "init_from=scratch"], "sft_file='missing.jsonl': file not found"),
    (["init_from=scratch"], "sft_file is not set"),
    (["sft_lr=0", "init_from=scratch"], "sft_lr=0.0: expected > 0"),
    (["init_from=nowhere"], "init_from='nowhere': no such directory"),
    (["BAD"], "recipe 'BAD' not found"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "r1.cli", "sft", *args, f"runs_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_cli_bad_row_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1, 2]\n")
    assert main(["sft", f"sft_file={bad}", "init_from=scratch", f"runs_dir={tmp_path / 'runs'}"]) == 2
    assert "line 1" in capsys.readouterr().err
