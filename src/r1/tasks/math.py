"""Math word and competition problems read from local files: GSM8K, MATH / MATH-500, AIME, AMC.

Files are read with ``datasets.load_dataset("json" | "parquet", data_files=...)`` (``.jsonl``,
``.json``, ``.parquet``), offline and with a throw-away cache, into :class:`MathProblem` rows.
Field names are mapped per task (``Fields``); user data with other names sets them.

Gold answers, per task (``gold_answer``):

* ``gsm8k``: the text after the last ``####`` of the answer field, commas removed (``#### 1,000``
  gives ``1000``). It must then be a number, else the gold is ``""`` (unparseable: skipped).
  Completions may state their answer GSM8K's way, ``#### 72``, as well as ``\\boxed{72}`` or
  ``<answer>72</answer>`` (``hash_marker``): GSM8K's own solutions end that way.
* ``math`` (MATH, MATH-500): the answer field, else the last ``\\boxed{}`` of the solution field.
* ``aime``, ``amc``: a number written canonically (``"025"`` -> ``"25"``, ``27.0`` -> ``"27"``),
  so answers compare as numbers; anything else is kept as written.

Reference files and default fields (``../shared/data``, see its README):

| task | train (default) | test (default) | question / answer / solution |
| --- | --- | --- | --- |
| gsm8k | gsm8k/train.jsonl (7,473) | gsm8k/test.jsonl (1,319) | question / answer / - |
| math | math/train.jsonl (12,000) | math500/test.jsonl (500) | problem / answer / solution |
| aime | math/train.jsonl | aime/aime24.jsonl (30; aime25.jsonl 30) | problem / answer / solution |
| amc | math/train.jsonl | amc/amc23.jsonl (40) | problem / answer / solution |

AIME and AMC have no training split of their own: the default trains on MATH and evaluates on
the contest (the usual R1-Zero setting, e.g. SimpleRL-Zoo and Open-Reasoner-Zero evaluations).
"""

from __future__ import annotations

import math
import os
import random
import re
import tempfile
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from r1.rewards.math import Grade, grade, last_boxed

TASKS = ("gsm8k", "math", "aime", "amc")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class MathProblem:
    """One problem. ``answer`` is the normalised gold answer; ``solution`` a worked solution or ''."""

    question: str
    answer: str
    key: tuple  # ("text", whitespace-normalised question): held-out problems stay out of training
    solution: str = ""


@dataclass(frozen=True)
class Fields:
    """Names of the fields holding the question, the answer and (optional, '' = none) a worked solution."""

    question: str
    answer: str
    solution: str = ""


DEFAULT_FIELDS = {
    "gsm8k": Fields("question", "answer"),
    "math": Fields("problem", "answer", "solution"),
    "aime": Fields("problem", "answer", "solution"),
    "amc": Fields("problem", "answer", "solution"),
}
REFERENCE_FILES = {  # task: (train, test), relative to the shared data folder
    "gsm8k": ("gsm8k/train.jsonl", "gsm8k/test.jsonl"),
    "math": ("math/train.jsonl", "math500/test.jsonl"),
    "aime": ("math/train.jsonl", "aime/aime24.jsonl"),
    "amc": ("math/train.jsonl", "amc/amc23.jsonl"),
}


def data_dir() -> Path | None:
    """The shared data folder: ``$R1_DATA_DIR``, else ``shared/data`` in or next to the repository or cwd."""
    candidates = [Path(os.environ["R1_DATA_DIR"])] if os.environ.get("R1_DATA_DIR") else []
    candidates += [_REPO / "shared" / "data", _REPO.parent / "shared" / "data",
                   Path("shared/data"), Path("../shared/data")]
    return next((p for p in candidates if p.is_dir()), None)


def reference_file(task: str, split: str) -> str:
    """The reference file of ``task`` for ``split`` ("train" or "test"), or '' when the data folder is not found."""
    root = data_dir()
    return str(root / REFERENCE_FILES[task][split == "test"]) if root else ""


def _canonical_number(text: str) -> str | None:
    """``"025"`` -> ``"25"``, ``"27.0"`` -> ``"27"``, ``"-1.50"`` -> ``"-1.5"``; None if not a plain number."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def gold_answer(task: str, answer, solution: str = "") -> str:
    """The normalised gold answer of a row of ``task`` (rules in the module docstring); '' when there is none."""
    text = "" if answer is None else str(answer).strip()
    if task == "gsm8k":
        text = text.rsplit("####", 1)[-1].strip().replace(",", "").rstrip(".")
        return _canonical_number(text.lstrip("$")) or ""
    if task == "math":
        if not text and solution:
            text = last_boxed(solution) or ""
        return text
    if isinstance(answer, float) and math.isfinite(answer) and answer.is_integer():
        return str(int(answer))
    return _canonical_number(text) or text


def gsm8k_solution(answer: str) -> str:
    """The worked part of a GSM8K answer (the ``#### N`` line removed)."""
    return answer.rsplit("####", 1)[0].rstrip()


def _question_key(question: str) -> tuple:
    return ("text", " ".join(question.split()))


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl`` / ``.json`` / ``.parquet`` file through ``datasets``, offline, with a temporary cache.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the extension is not one of those, or the file does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    kind = kinds.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: expected a .jsonl, .json or .parquet file")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only; read before datasets is first imported
    import datasets

    quiet = datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="r1-datasets-") as cache:
            return datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=cache).to_list()
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a malformed file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: cannot read as {kind}: {first}") from None
    finally:
        if quiet:
            datasets.enable_progress_bars()


def load_problems(path: str | Path, task: str, fields: Fields | None = None) -> list[MathProblem]:
    """Problems of ``task`` from ``path`` with gold answers normalised by ``gold_answer``.

    Args:
        path: a ``.jsonl``, ``.json`` or ``.parquet`` file.
        task: one of ``TASKS`` (fixes the gold-answer rule and the default fields).
        fields: field names; ``DEFAULT_FIELDS[task]`` when None.
    Raises:
        FileNotFoundError, ValueError: missing or unreadable file, or a field absent from the rows.
    """
    fields = fields or DEFAULT_FIELDS[task]
    rows = read_rows(path)
    if rows:
        for role, name in (("question", fields.question), ("answer", fields.answer)):
            if name not in rows[0]:
                raise ValueError(f"{path}: no field {name!r} for the {role} (fields: {', '.join(rows[0])}); "
                                 f"set {role}_field= to the right name")
    problems = []
    for row in rows:
        question = str(row[fields.question])
        raw = row[fields.answer]
        solution = str(row.get(fields.solution) or "") if fields.solution else ""
        if task == "gsm8k" and not solution:
            solution = gsm8k_solution(str(raw))
        problems.append(MathProblem(question, gold_answer(task, raw, solution), _question_key(question), solution))
    return problems


def thinking_text(completion: str) -> str:
    """The reasoning of ``completion``: inside ``<think>...</think>``, or before ``</think>`` when the
    template already opened ``<think>`` (R1-distill), or after an unclosed ``<think>``; '' otherwise."""
    if "</think>" in completion:
        head = completion.split("</think>", 1)[0]
        return head.split("<think>", 1)[1] if "<think>" in head else head
    return completion.split("<think>", 1)[1] if "<think>" in completion else ""


class MathTask:
    """A math task over a training file and a test file, with the math-verify accuracy reward.

    Args:
        name: one of ``TASKS``.
        train_file, test_file: data files; '' = the reference file (``REFERENCE_FILES``).
        fields: field names; ``DEFAULT_FIELDS[name]`` when None.
    """

    def __init__(self, name: str, train_file: str = "", test_file: str = "", fields: Fields | None = None):
        if name not in TASKS:
            raise ValueError(f"task {name!r}: expected one of {', '.join(TASKS)}")
        self.name = name
        self.fields = fields or DEFAULT_FIELDS[name]
        self.train_file = train_file or reference_file(name, "train")
        self.test_file = test_file or reference_file(name, "test")
        self._train: list[MathProblem] | None = None
        self._test: list[MathProblem] | None = None
        self._trainable: list[MathProblem] | None = None

    def load_file(self, path: str | Path) -> list[MathProblem]:
        """Problems from ``path`` (read with this task's fields and gold rule)."""
        return load_problems(path, self.name, self.fields)

    def _require(self, split: str, path: str) -> str:
        if not path:
            raise FileNotFoundError(f"task {self.name}: no {split} file set and the reference data folder "
                                    f"(shared/data) was not found; set {split}_file= or R1_DATA_DIR")
        return path

    @property
    def train_problems(self) -> list[MathProblem]:
        """The training split (loaded once)."""
        if self._train is None:
            self._train = self.load_file(self._require("train", self.train_file))
        return self._train

    @property
    def test_problems(self) -> list[MathProblem]:
        """The evaluation split (loaded once)."""
        if self._test is None:
            self._test = self.load_file(self._require("test", self.test_file))
        return self._test

    @property
    def trainable(self) -> list[MathProblem]:
        """Training problems with a gold answer (an empty gold is never trained on; see ``skipped``)."""
        if self._trainable is None:
            self._trainable = [p for p in self.train_problems if p.answer]
        return self._trainable

    @property
    def skipped(self) -> int:
        """Training problems left out of ``sample`` because their gold answer is empty."""
        return len(self.train_problems) - len(self.trainable)

    def sample(self, rng: random.Random) -> MathProblem:
        """A training problem with a gold answer, drawn uniformly (the trainer excludes held-out keys)."""
        return rng.choice(self.trainable)

    def gold(self, answer, solution: str = "") -> str:
        """The normalised gold of a raw answer (e.g. a full GSM8K answer text), as stored in ``MathProblem.answer``."""
        return gold_answer(self.name, answer, solution)

    def grade(self, completion: str, answer: str) -> Grade:
        """The full outcome (``correct`` True/False/None and the reason); ``answer`` is a normalised gold."""
        return grade(completion, answer, hash_marker=self.name == "gsm8k")

    def verify(self, completion: str, answer: str) -> float:
        """1.0 / 0.0, or NaN when the gold answer cannot be parsed (a NaN reward is excluded, never given)."""
        reward = self.grade(completion, answer).reward
        return float("nan") if reward is None else reward

    def reasons(self, completion: str) -> bool:
        """True if the completion holds non-empty thinking."""
        return bool(thinking_text(completion).strip())

    def trace(self, problem: MathProblem, long: bool, rng: random.Random) -> str:
        """A corpus completion in the R1-Zero layout: the worked solution as thinking if ``long``, else none."""
        think = problem.solution.strip() if long else ""
        return f"<think>\n{think}\n</think>\n<answer>{problem.answer}</answer>"
