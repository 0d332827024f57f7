"""``r1 eval --compare A B [C ...]``: results of ``r1 eval`` side by side, each against the first (A).

For every benchmark and figure (pass@1, pass@k, cons@k) a difference ``d = x_B - x_A`` is called
larger than its uncertainty when ``|d| > 2 * sqrt(se_A^2 + se_B^2)``: the two standard errors (one
standard error of the mean over problems each, ``r1.eval.metrics``) combined as for independent
estimates, at about 95% two-sided. Two models scored on the same problems are positively correlated,
so this unpaired rule is conservative (a paired test on the per-problem values would call more
differences). A difference is not computed (``–``) when the two results used other problems (count
or data-file hash) or, for pass@k and cons@k, another k.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

FIGURES = (("pass@1", "pass@1"), ("pass@k", "pass@k"), ("cons@k", "cons@k"))
SETTINGS = ("seed", "temperature", "top_p", "max_new_tokens", "prompt_format", "system_prompt", "instruction",
            "dtype", "limit")


def load_results(arg: str) -> tuple[Path, dict]:
    """``(path, results)`` of a results.json file or a folder holding one.

    Raises:
        ValueError: no results.json there, or not valid JSON of ``r1 eval``.
    """
    path = Path(arg)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ValueError(f"--compare {arg!r}: no results.json there (expected results.json files of r1 eval "
                         "or the folders holding them)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--compare {arg!r}: {path} is not valid JSON ({exc.msg})") from None
    if not isinstance(results, dict) or "benchmarks" not in results:
        raise ValueError(f"--compare {arg!r}: {path} has no 'benchmarks' (expected the results.json of r1 eval)")
    return path, results


def figure(summary: dict, name: str) -> tuple[float | None, float | None]:
    """``(value, standard error)`` of ``pass@1``, ``pass@k`` (at the k drawn) or ``cons@k`` in a summary."""
    if name == "pass@k":
        top = summary["pass@k"][str(summary["k"])]
        return top["mean"], top["se"]
    return summary[name], summary[f"{name}_se"]


def difference(a: dict, b: dict, name: str) -> tuple[float | None, bool | None, str]:
    """``(b - a, larger than its uncertainty, why not computed)`` for one figure of two benchmark results."""
    if a["summary"]["problems"] != b["summary"]["problems"] or a.get("file_sha256") != b.get("file_sha256"):
        return None, None, "other problems"
    if name != "pass@1" and a["summary"]["k"] != b["summary"]["k"]:
        return None, None, "other k"
    (xa, sa), (xb, sb) = figure(a["summary"], name), figure(b["summary"], name)
    if xa is None or xb is None:
        return None, None, "no value"
    d = xb - xa
    if sa is None or sb is None:
        return d, None, ""
    return d, abs(d) > 2 * math.sqrt(sa ** 2 + sb ** 2), ""


def compare_rows(all_results: list[dict]) -> list[list[str]]:
    """Table rows: benchmark, figure, then per result its value (``% ± se``), and for B, C, ... the
    difference to A and whether it is larger than its uncertainty (``yes``/``no``/``–``)."""
    names = list(dict.fromkeys(n for r in all_results for n in r["benchmarks"]))
    first = all_results[0]["benchmarks"]
    rows = []
    for bench in names:
        for label, name in FIGURES:
            row = [bench, label]
            for j, res in enumerate(all_results):
                b = res["benchmarks"].get(bench)
                if b is None:
                    row += ["–"] if j == 0 else ["–", "–", "–"]
                    continue
                x, se = figure(b["summary"], name)
                k = b["summary"]["k"]
                value = "–" if x is None else f"{100 * x:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")
                row.append(value + (f" (k={k})" if name != "pass@1" else ""))
                if j == 0:
                    continue
                if bench not in first:
                    row += ["–", "–"]
                    continue
                d, big, why = difference(first[bench], b, name)
                diff = (why or "–") if d is None else f"{100 * d:+.1f}"
                row += [diff, "–" if big is None else ("yes" if big else "no")]
            rows.append(row)
    return rows


def header(n: int) -> list[str]:
    letters = [chr(ord("A") + i) for i in range(n)]
    cols = ["benchmark", "figure", f"{letters[0]} (%)"]
    for x in letters[1:]:
        cols += [f"{x} (%)", f"{x} - A", "> 2 se?"]
    return cols


def compare_markdown(paths: list[Path], all_results: list[dict]) -> str:
    """``compare.md``: the legend (which result is which, its weights and settings) and the table."""
    lines = ["# r1 eval: comparison", ""]
    for i, (path, res) in enumerate(zip(paths, all_results)):
        m, st = res.get("model", {}), res.get("settings", {})
        w = ", ".join(f"{k} {v[:16]}" for k, v in m.get("weights_sha256", {}).items())
        lines.append(f"- **{chr(ord('A') + i)}**: {path} (model {m.get('path')}; weights sha256 {w or '–'}; "
                     + ", ".join(f"{k} {st.get(k)}" for k in SETTINGS) + ")")
    differing = settings_differences(all_results)
    if differing:
        lines += ["", f"Settings differ between results: {', '.join(differing)}."]
    cols = header(len(all_results))
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in compare_rows(all_results)]
    lines += ["", "Values in % ± one standard error over problems. A difference is larger than its uncertainty "
              "(\"> 2 se?\" yes) when |B - A| > 2 sqrt(se_A^2 + se_B^2) (about 95%, unpaired, conservative; "
              "r1/eval/compare.py).", ""]
    return "\n".join(lines)


def settings_differences(all_results: list[dict]) -> list[str]:
    """Names of the settings (and library versions) that are not the same in every result."""
    out = [k for k in SETTINGS if len({json.dumps(r.get("settings", {}).get(k)) for r in all_results}) > 1]
    out += [f"{k} version" for k in ("torch", "transformers", "math-verify")
            if len({r.get("versions", {}).get(k) for r in all_results}) > 1]
    return out


def print_comparison(paths: list[Path], all_results: list[dict], console: Console) -> None:
    """The comparison as a rich table on ``console``."""
    for i, path in enumerate(paths):
        console.print(f"[bold]{chr(ord('A') + i)}[/]: {path}")
    differing = settings_differences(all_results)
    if differing:
        console.print(f"[yellow]settings differ between results: {', '.join(differing)}[/]")
    table = Table(*header(len(all_results)))
    for row in compare_rows(all_results):
        table.add_row(*row)
    console.print(table)
