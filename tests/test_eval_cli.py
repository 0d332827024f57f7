"""`r1 eval` end to end: a micro run's held-out set reproduced exactly, identical files on a second run,
every shared benchmark scored on a tiny random model, --compare, and bad input in one line with exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from r1.cli import main
from r1.eval.benchmarks import BENCHMARKS
from r1.models.tiny import save_tiny
from r1.tasks.math import data_dir
from test_run import MICRO

DATA = data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="shared/data not found")
TINY = ["limit=2", "max_new_tokens=6"]


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert main(["run", *MICRO, f"runs_dir={root}", "name=micro"]) == 0
    return root / "micro"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny("qwen2", tmp_path_factory.mktemp("models") / "qwen2")


def _drop_time(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("time")
    return data


def _samples(result: dict) -> list[tuple]:
    return [(s["completion"], s["correct"], s["length"], s["truncated"])
            for p in result["problems"] for s in p["samples"]]


def test_heldout_reproduces_the_run_and_a_second_eval_gives_identical_files(micro_run, tmp_path):
    # default output: <run>/eval/, next to before.json and after.json
    assert main(["eval", str(micro_run), "--benchmarks", "heldout"]) == 0
    ours = json.loads((micro_run / "eval" / "heldout.json").read_text())
    after = json.loads((micro_run / "eval" / "after.json").read_text())
    assert ours["summary"]["pass@1"] == after["summary"]["pass@1"]  # exactly, not approximately
    assert _samples(ours) == _samples(after)  # the same completions, sample for sample
    assert {k: v for k, v in after["summary"].items() if k != "seconds"} == \
        {k: v for k, v in ours["summary"].items() if k in after["summary"]}
    assert ours["k"] == 2 and len(ours["problems"]) == 4  # the run's eval_k and eval_problems
    results = json.loads((micro_run / "eval" / "results.json").read_text())
    assert results["model"]["path"].endswith("step-000003") and results["model"]["kind"] == "run"
    assert len(results["model"]["weights_sha256"]["model.safetensors"]) == 64
    assert results["engine"] == "transformers generate" and results["settings"]["max_new_tokens"] == 12
    assert {"torch", "transformers", "math-verify", "r1"} <= set(results["versions"])
    assert results["time"]["wall_seconds"] > 0

    # same seed and settings, other folder: identical files once the "time" fields are dropped
    assert main(["eval", str(micro_run), "--benchmarks", "heldout", "--out", str(tmp_path / "again")]) == 0
    for name in ("heldout.json", "results.json"):
        assert _drop_time(tmp_path / "again" / name) == _drop_time(micro_run / "eval" / name)
    assert (tmp_path / "again" / "results.md").read_bytes() == (micro_run / "eval" / "results.md").read_bytes()
    # the checkpoint folder itself gives the same, with the run's config; another seed gives other samples
    ckpt = micro_run / "checkpoints" / "step-000003"
    assert main(["eval", str(ckpt), "--benchmarks", "heldout", "--out", str(tmp_path / "ckpt")]) == 0
    assert _drop_time(tmp_path / "ckpt" / "heldout.json") == _drop_time(micro_run / "eval" / "heldout.json")
    assert main(["eval", str(micro_run), "--benchmarks", "heldout", "--out", str(tmp_path / "s1"), "seed=1"]) == 0
    assert _samples(json.loads((tmp_path / "s1" / "heldout.json").read_text())) != _samples(ours)


@needs_data
def test_every_shared_benchmark_is_scored_end_to_end(tiny_model, tmp_path, capsys):
    names = list(BENCHMARKS)
    assert main(["eval", str(tiny_model), "--benchmarks", ",".join(names), "--k", "2", "--out", str(tmp_path / "a"),
                 *TINY]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert list(results["benchmarks"]) == names and results["settings"]["limit"] == 2
    for name in names:
        bench = json.loads((tmp_path / "a" / f"{name}.json").read_text())
        assert bench["k"] == 2 and len(bench["problems"]) == 2 and len(bench["file_sha256"]) == 64
        for p in bench["problems"]:
            assert len(p["samples"]) == 2 and len(p["pass@k"]) == 2 and p["prompt"].startswith("<|im_start|>")
            assert all(s["length"] <= 6 and "extracted" in s for s in p["samples"])
        s = bench["summary"]
        assert 0 <= s["pass@1"] <= 1 and s["scored_problems"] == 2 and s["unparseable_gold"] == 0
        assert set(s["pass@k"]) == {"1", "2"} and 0 <= s["cons@k"] <= 1 and 0 <= s["truncated_frac"] <= 1
        assert f"{name}: pass@1" in out
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| benchmark | problems | k | pass@1 (%) |" in table
    assert all(f"| {name} | 2 | 2 |" in table for name in names)
    # default k per benchmark: AIME 64, MATH-500 4, others 8
    assert main(["eval", str(tiny_model), "--benchmarks", "aime24,math500,countdown", "--out", str(tmp_path / "b"),
                 "limit=1", "max_new_tokens=2"]) == 0
    ks = {n: b["k"] for n, b in json.loads((tmp_path / "b" / "results.json").read_text())["benchmarks"].items()}
    assert ks == {"aime24": 64, "math500": 4, "countdown": 8}


@needs_data
@pytest.mark.parametrize("name", ["mbpp", "humaneval"])
def test_code_benchmarks_are_known_but_not_built(name, tiny_model, capsys):
    assert main(["eval", str(tiny_model), "--benchmarks", name]) == 2
    err = capsys.readouterr().err
    assert f"benchmark '{name}' needs the code task (not built yet)" in err and len(err.strip().splitlines()) == 1


def test_compare_two_results(tiny_model, tmp_path, capsys, monkeypatch):
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many?", "answer": f"#### {a + b}"}
            for a, b in [(2, 3), (4, 5), (10, 7)]]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in (0, 1):
        assert main(["eval", str(tiny_model), "--benchmarks", "gsm8k", "--k", "3", "--out", str(tmp_path / f"s{seed}"),
                     f"gsm8k_file={data}", "max_new_tokens=4", f"seed={seed}"]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--compare", str(tmp_path / "s0"), str(tmp_path / "s1" / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "gsm8k" in out and "pass@1" in out and "cons@k" in out and "seed" in out  # the seeds differ: said so
    md = (tmp_path / "compare.md").read_text()
    assert "| benchmark | figure | A (%) | B (%) | B - A | > 2 se? |" in md
    lines = [x for x in md.splitlines() if x.startswith("| gsm8k |")]
    assert [x.split(" | ")[1] for x in lines] == ["pass@1", "pass@k", "cons@k"]
    assert all(x.rstrip(" |").split(" | ")[-1] in {"yes", "no", "–"} for x in lines)
    assert "Settings differ between results: seed." in md


@pytest.mark.parametrize("args, needle", [
    (["/no/such/model"], "MODEL '/no/such/model': no such directory"),
    (["{model}", "--benchmarks", "math500,bogus"], "benchmark 'bogus': unknown"),
    (["{model}", "--benchmarks", "math500", "math500_file=/no/file.jsonl"],
     "math500_file='/no/file.jsonl': file not found"),
    (["{model}", "bogus_key=1"], "unknown key 'bogus_key'"),
    (["{model}", "limit=0"], "limit='0': expected an integer >= 1"),
    (["{model}", "max_new_tokens=many"], "max_new_tokens='many': expected int"),
    (["{model}", "--benchmarks", "heldout"], "benchmark 'heldout' needs a run directory"),
    (["{model}", "--k", "0"], "--k 0: expected an integer >= 1"),
    (["--compare", "{model}", "{model}"], "no results.json there"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tiny_model, tmp_path, capsys):
    args = [a.replace("{model}", str(tiny_model)) for a in args]
    assert main(["eval", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "r1.cli", "eval", str(tmp_path / "nothing"), "--benchmarks", "gsm8k"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"r1: error: MODEL '{tmp_path / 'nothing'}': no such directory (expected a run " \
        "directory (config.yaml), a checkpoint directory or a local Hugging Face model directory)"
