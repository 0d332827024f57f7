"""`r1 run` on local Hugging Face checkpoints: GSM8K-format data through the chat-template path, LoRA, R1-distill."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1.cli import main
from r1.models.hf import load_policy
from r1.models.tiny import save_tiny

# A random tiny model earns no reward, so every advantage is 0; the entropy bonus gives the update a gradient.
SMALL = ["entropy_coef=0.05", "rl_steps=2", "prompts_per_step=2", "group_size=2", "max_new_tokens=12", "eval_problems=2", "eval_k=2",
         "save_every=1", "samples_every=1", "log_every=1", "lr=1e-3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _gsm8k_files(tmp_path: Path) -> tuple[Path, Path]:
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a}+{b}=<<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"} for a, b in
            [(2, 3), (4, 5), (10, 7), (6, 6), (8, 1), (3, 9)]]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    return train, test


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_gsm8k_through_the_chat_template_end_to_end(tmp_path):
    model = save_tiny("qwen2", tmp_path / "qwen2")
    train, test = _gsm8k_files(tmp_path)
    args = ["run", "task=gsm8k", f"model_path={model}", f"train_file={train}", f"test_file={test}", *SMALL,
            "instruction=Please reason step by step, and put your final answer within \\boxed{}.",
            f"runs_dir={tmp_path}", "name=g"]
    assert main(args) == 0
    run = tmp_path / "g"
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["reward/unparseable_gold"] == 0 and 0 <= r["reward/accuracy"] <= 1 for r in rows)
    assert all(r["train/sampler_ratio_max_dev"] < 1e-3 for r in rows)  # sampler and trainer agree
    sample = json.loads((run / "samples" / "step-000001.jsonl").read_text().splitlines()[0])
    # the prompt is the model's own chat template with the question and the instruction; gold from "####"
    assert sample["prompt"].startswith("<|im_start|>") and "How many apples" in sample["prompt"]
    assert sample["prompt"].endswith("<|im_start|>assistant\n") and "\\boxed{}" in sample["prompt"]
    assert sample["answer"] in {"5", "9", "17", "12"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["pretrain"]["model_path"] == str(model.resolve())
    for when in ("before", "after"):
        assert summary["eval"][when]["problems"] == 2 and 0 <= summary["eval"][when]["pass@1"] <= 1
    evaluated = json.loads((run / "eval" / "after.json").read_text())
    assert [p["answer"] for p in evaluated["problems"]] == ["9", "12"]  # the test file, in order
    # the checkpoint is a full model that loads the way users load theirs, and differs from the base
    ckpt = run / summary["last_checkpoint"]
    trained, tok = load_policy(ckpt, trainable=False)
    base, _ = load_policy(model, trainable=False)
    assert tok.chat_template and any(not torch.equal(a, b) for a, b in
                                     zip(trained.state_dict().values(), base.state_dict().values()))


def test_lora_trains_only_adapters_and_resumes(tmp_path):
    model = save_tiny("llama3", tmp_path / "llama3")
    train, test = _gsm8k_files(tmp_path)
    args = [f"model_path={model}", "task=gsm8k", f"train_file={train}", f"test_file={test}", *SMALL, "lora_r=4",
            "lora_alpha=8", "beta=0.04", f"runs_dir={tmp_path}"]
    before = load_file(model / "model.safetensors")
    assert main(["run", *args, "name=full", "rl_steps=3"]) == 0
    assert load_file(model / "model.safetensors").keys() == before.keys()
    assert all(torch.equal(t, load_file(model / "model.safetensors")[k]) for k, t in before.items())
    ckpt = tmp_path / "full" / "checkpoints" / "step-000003"
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "model.safetensors").exists()
    adapters = load_file(ckpt / "adapter_model.safetensors")
    assert adapters and all("lora_" in k for k in adapters)
    # KL to the reference (the base with adapters disabled) is 0 at step 1 and positive after an update
    rows = _rows(tmp_path / "full")
    assert abs(rows[0]["train/kl"]) < 1e-6 and rows[2]["train/kl"] > 0
    # stopping after 2 steps and resuming to 3 gives the same metrics as the uninterrupted run
    assert main(["run", *args, "name=part", "rl_steps=2"]) == 0
    part = tmp_path / "part"
    cfg = (part / "config.yaml").read_text().replace("rl_steps: 2", "rl_steps: 3")
    (part / "config.yaml").write_text(cfg)
    (part / "eval" / "after.json").unlink()
    assert main(["run", "--resume", str(part)]) == 0
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [drop(r) for r in _rows(part)] == [drop(r) for r in rows]


def test_r1_distill_template_opens_think_and_grading_sees_it(tmp_path):
    model = save_tiny("r1_distill_qwen", tmp_path / "distill")
    train, test = _gsm8k_files(tmp_path)
    assert main(["run", f"model_path={model}", "task=gsm8k", f"train_file={train}", f"test_file={test}", *SMALL,
                 "rl_steps=1", f"runs_dir={tmp_path}", "name=d"]) == 0
    sample = json.loads((tmp_path / "d" / "samples" / "step-000001.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].endswith("<think>\n")


@pytest.mark.parametrize("arg, needle", [
    ("model_path=/nonexistent", "model_path='/nonexistent': no config.json"),
    ("lora_r=4", "LoRA and dtype apply to model_path"),
    ("prompt_format=xml", "prompt_format='xml'"),
    ("task=gsm8k train_file=nope.jsonl", "train_file='nope.jsonl': file not found"),
])
def test_bad_checkpoint_settings_are_one_line_errors(arg, needle, tmp_path, capsys):
    assert main(["run", *arg.split(), f"runs_dir={tmp_path}"]) == 2
    assert needle in capsys.readouterr().err
