"""r1 sample: rejection-sampling filters on hand-made cases, and the command on a micro run's checkpoint."""

import json
import subprocess
import sys

import pytest
import torch

from r1.cli import main
from r1.sample import FILTERS, SampleOptions, repeated_ngram_share, verdict
from r1.tasks.math import MathTask
from r1.tasks.multiplication import MultiplicationTask

GOOD = "<think>\n47*8=320+56=376\n47*30=1200+210=1410\n1410+300=1710\n1710+70=1780\n1780+6=1786\n</think>\n" \
       "<answer>1786</answer>"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def test_repeated_ngram_share_by_hand():
    assert repeated_ngram_share("a b a b a b", n=2) == pytest.approx(3 / 5)  # ab ba ab ba ab: 3 of 5 repeat
    assert repeated_ngram_share("a b c") == 0.0  # fewer than 4 tokens: no 4-gram
    assert repeated_ngram_share(GOOD) < 0.2
    loop = "<think>\n" + "1780+6=1786\n" * 12 + "</think>\n<answer>1786</answer>"
    assert repeated_ngram_share(loop) > 0.7  # 12 copies of one line: 0.72
    assert repeated_ngram_share("我我我我我我我我") == pytest.approx(4 / 5)  # one token per CJK character


@pytest.mark.parametrize("completion, length, truncated, opts, expected", [
    (GOOD, 60, False, {}, None),
    (GOOD, 60, True, {}, "overlong"),
    (GOOD, 60, False, {"max_tokens": 50}, "overlong"),
    (GOOD.replace("<answer>1786", "<answer>1787"), 60, False, {}, "wrong"),
    (GOOD + "<answer>1786</answer>", 60, False, {}, "bad_format"),
    (GOOD.replace("<think>\n", "<think>\n我们 now\n"), 60, False, {}, "mixed_language"),  # 1 of 3 words Latin
    (GOOD.replace("<think>\n", "<think>\nhmm\n"), 60, False, {"min_readability": 1.0}, "unreadable"),
    (GOOD.replace("<think>\n", "<think>\nhmm\n"), 60, False, {}, None),  # readability filter off by default
    ("<think>\n" + "1780+6=1786\n" * 12 + "</think>\n<answer>1786</answer>", 99, False, {}, "repetitive"),
])
def test_filters_on_hand_made_cases(completion, length, truncated, opts, expected):
    why, rewards = verdict(MultiplicationTask(), completion, "1786", length, truncated, SampleOptions(**opts), set())
    assert why == expected
    assert set(rewards) == {"accuracy", "format", "language", "readability", "repeat"}


def test_duplicate_and_unparseable_gold():
    task, opts = MultiplicationTask(), SampleOptions()
    assert verdict(task, GOOD, "1786", 60, False, opts, {GOOD})[0] == "duplicate"
    boxed = "<think>\nwe add\n</think>\n\\boxed{5}"
    assert verdict(MathTask("gsm8k"), boxed, "", 20, False, opts, set())[0] == "unparseable_gold"
    assert verdict(MathTask("gsm8k"), boxed.replace("\\boxed{5}", "<answer>5</answer>"), "5", 20, False, opts,
                   set())[0] is None


def test_sample_on_a_micro_run_writes_rows_and_counts_that_add_up(tmp_path):
    micro = ["hidden_size=32", "num_layers=1", "num_heads=2", "num_kv_heads=1", "intermediate_size=64",
             "pretrain_steps=2", "pretrain_batch_size=4", "pretrain_warmup_steps=1", "rl_steps=0",
             "eval_problems=2", "eval_k=1", "threads=1"]
    assert main(["run", *micro, f"runs_dir={tmp_path}", "name=micro"]) == 0
    out = tmp_path / "s.jsonl"
    assert main(["sample", str(tmp_path / "micro"), "--task", "multiplication", "--k", "3", "--out", str(out),
                 "limit=5", "max_new_tokens=16", "max_repeat=1.0", "min_language=0"]) == 0
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["sampled"] == 15 and summary["problems"] == 5 and list(summary["dropped"]) == list(FILTERS)
    assert summary["kept"] + sum(summary["dropped"].values()) == summary["sampled"]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == summary["kept"]
    for r in rows:
        assert {"question", "prompt", "completion", "answer", "rewards", "length"} <= set(r)
        assert r["rewards"]["accuracy"] == 1.0
    # a random 2-step base rarely finishes within 16 tokens: most are overlong, and the numbers say so
    assert summary["dropped"]["overlong"] > 0


@pytest.mark.parametrize("args, needle", [
    (["nowhere", "--task", "multiplication"], "MODEL 'nowhere': no such directory"),
    (["--task", "multiplication"], "expected MODEL first"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "r1.cli", "sample", *args], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_bad_option_is_one_line(tmp_path, capsys):
    from r1.models.policy import build_policy
    from r1.models.tokenizer import build_tokenizer
    from r1.config import RunConfig
    tok = build_tokenizer()
    model = build_policy(RunConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64),
                         tok, 0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    for bad, needle in (("max_repeat=2", "max_repeat=2.0: expected a value in [0, 1]"),
                        ("language=xx", "language='xx'"), ("bogus=1", "unknown config key 'bogus'"),
                        ("limit=many", "limit='many': expected int")):
        assert main(["sample", str(tmp_path / "m"), "--task", "multiplication", bad]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
