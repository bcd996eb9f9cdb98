"""Multiple-choice tasks defined exactly as lm-evaluation-harness 0.4 defines them (its task yaml files).

Each task turns one row of its Hugging Face dataset into a :class:`Question`: the prompt text, the
continuations scored after it (the harness's ``target_delimiter`` ``" "`` included) and the choice strings
whose length in characters normalises ``acc_norm``. Winogrande is the harness's partial evaluation: the
choices go into the context (the sentence up to the blank, filled in) and the one continuation (the rest of
the sentence) is scored after each.

Rows come from ``--data FILE`` (the dataset's rows as JSONL or Parquet) or, without it, from the hub split
the harness evaluates, fetched once with ``datasets`` and cached as JSONL.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2kit.errors import UserError
from gpt2kit.eval.download import cache_root
from gpt2kit.eval.questions import ChoiceItem, encode_pair
from gpt2kit.io import atomic_write_text, iter_jsonl
from gpt2kit.tokenizer import Tokenizer

MMLU_LETTERS = ("A", "B", "C", "D")
FEWSHOT_DELIMITER = "\n\n"
"""Between few-shot examples (the harness default)."""


@dataclass(frozen=True)
class Question:
    """One row as prompt text: ``contexts`` has one entry, or one per choice (partial evaluation)."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    """One per choice, or one shared by every context."""
    choices: tuple[str, ...]
    """The harness's ``doc_to_choice``: ``len(choice)`` divides the log-likelihood in ``acc_norm``."""
    gold: int

    def pairs(self) -> list[tuple[str, str]]:
        """(context, continuation) of each choice."""
        if len(self.contexts) == 1:
            return [(self.contexts[0], c) for c in self.continuations]
        return [(ctx, self.continuations[0]) for ctx in self.contexts]

    def answered(self) -> str:
        """The prompt with its correct answer, as a few-shot example shows it."""
        ctx, cont = self.pairs()[self.gold]
        return ctx + cont


@dataclass(frozen=True)
class ChoiceTask:
    """One harness multiple-choice task."""

    name: str
    """The ``gpt2kit eval`` name."""
    harness: str
    """The lm-evaluation-harness task name."""
    hub: tuple[str, str | None, str]
    """(dataset, config, split) the harness evaluates."""
    schema: str
    """The fields a row needs, for messages."""
    question: Callable[[dict], Question]
    """Row to question; a ValueError says what is wrong with the row."""
    metrics: tuple[str, ...]
    """The harness's metric_list."""
    description: Callable[[dict], str] = lambda row: ""
    """Text before the few-shot examples and the question (MMLU's subject header)."""
    fewshot_group: Callable[[dict], str] | None = None
    """Where the harness takes the first n few-shot rows of the row's group (MMLU: its subject's dev rows);
    None where it samples them at random, which gpt2kit does not reproduce (0-shot only)."""


def _field(row: dict, key: str, kind: type) -> Any:
    if key not in row:
        raise ValueError(f"missing {key!r}")
    if not isinstance(row[key], kind) or isinstance(row[key], bool):
        raise ValueError(f"{key!r} must be {kind.__name__}, got {type(row[key]).__name__}")
    return row[key]


def _strings(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key!r} must be a list of strings")
    if not value:
        raise ValueError(f"{key!r} is empty: the question has no choices")
    if len(value) < 2:
        raise ValueError(f"{key!r} has 1 choice; a question needs at least 2")
    return value


def _int_label(value: Any, key: str, n: int, offset: int = 0) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value - offset < n:
        raise ValueError(f"{key!r} {value!r} is not one of the {n} choices")
    return value - offset


def arc_question(row: dict) -> Question:
    """``Question: {{question}}\\nAnswer:``; choices ``choices.text``; gold ``choices.label.index(answerKey)``."""
    question = _field(row, "question", str)
    choices = _field(row, "choices", dict)
    texts = _strings(choices.get("text"), "choices.text")
    labels = _strings(choices.get("label"), "choices.label")
    key = _field(row, "answerKey", str)
    if len(labels) != len(texts) or key not in labels:
        raise ValueError(f"'answerKey' {key!r} is not one of choices.label {labels}")
    return Question((f"Question: {question}\nAnswer:",), tuple(" " + t for t in texts), tuple(texts),
                    labels.index(key))


def mmlu_question(row: dict) -> Question:
    """``{{question.strip()}}\\nA. ..\\nD. ..\\nAnswer:``; choices ``" A"`` .. ``" D"``; gold ``answer``."""
    question = _field(row, "question", str)
    options = _strings(row.get("choices"), "choices")
    if len(options) != 4:
        raise ValueError(f"'choices' has {len(options)} entries; MMLU questions have 4")
    body = "".join(f"\n{letter}. {text}" for letter, text in zip(MMLU_LETTERS, options))
    return Question((f"{question.strip()}{body}\nAnswer:",), tuple(" " + x for x in MMLU_LETTERS), MMLU_LETTERS,
                    _int_label(row.get("answer"), "answer", 4))


def mmlu_description(row: dict) -> str:
    """The harness's per-subject header, e.g. ``... about abstract algebra.\\n\\n``."""
    subject = _field(row, "subject", str)
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def piqa_question(row: dict) -> Question:
    """``Question: {{goal}}\\nAnswer:``; choices ``[sol1, sol2]``; gold ``label``."""
    goal = _field(row, "goal", str)
    sols = (_field(row, "sol1", str), _field(row, "sol2", str))
    return Question((f"Question: {goal}\nAnswer:",), tuple(" " + s for s in sols), sols,
                    _int_label(row.get("label"), "label", 2))


def winogrande_question(row: dict) -> Question:
    """Partial evaluation: contexts ``sentence[:blank] + option``; continuation ``" " + rest.strip()``."""
    sentence = _field(row, "sentence", str)
    if "_" not in sentence:
        raise ValueError("'sentence' has no '_' blank to fill")
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + _field(row, k, str) for k in ("option1", "option2"))
    return Question(contexts, (" " + sentence[blank + 1:].strip(),), contexts,
                    _int_label(row.get("answer"), "answer", 2, offset=1))


TASKS: dict[str, ChoiceTask] = {t.name: t for t in (
    ChoiceTask("arc-easy", "arc_easy", ("allenai/ai2_arc", "ARC-Easy", "test"),
               "question, choices {text, label}, answerKey", arc_question, ("acc", "acc_norm")),
    ChoiceTask("arc-challenge", "arc_challenge", ("allenai/ai2_arc", "ARC-Challenge", "test"),
               "question, choices {text, label}, answerKey", arc_question, ("acc", "acc_norm")),
    ChoiceTask("mmlu", "mmlu", ("cais/mmlu", "all", "test"), "question, subject, choices (4), answer",
               mmlu_question, ("acc",), mmlu_description, lambda row: _field(row, "subject", str)),
    ChoiceTask("piqa", "piqa", ("baber/piqa", None, "validation"), "goal, sol1, sol2, label",
               piqa_question, ("acc", "acc_norm")),
    ChoiceTask("winogrande", "winogrande", ("allenai/winogrande", "winogrande_xl", "validation"),
               "sentence (with a _ blank), option1, option2, answer ('1' or '2')", winogrande_question, ("acc",)),
)}
"""The multiple-choice tasks by ``gpt2kit eval`` name."""


SUITES = {
    "small": ("hellaswag", "arc-easy", "arc-challenge", "mmlu", "piqa", "winogrande"),
    "nanochat": ("arc-easy", "arc-challenge", "mmlu"),
}
"""Named sets of multiple-choice tasks for ``gpt2kit eval suite``."""

SUITE_METRIC = {"hellaswag": "acc_norm", "arc-easy": "acc_norm", "arc-challenge": "acc_norm", "mmlu": "acc",
                "piqa": "acc_norm", "winogrande": "acc"}
"""The accuracy a suite centres for each task: acc_norm where the harness reports one, else acc."""


def get_task(name: str, known: Sequence[str] | None = None) -> ChoiceTask:
    """The task called ``name``; an unknown name is a UserError with the closest known names."""
    if name in TASKS:
        return TASKS[name]
    known = list(known or TASKS)
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise UserError(f"unknown task {name!r}{hint} (tasks: {', '.join(known)})")


def read_rows(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """(``file:line`` or ``file:row N``, row) for each row of a JSONL or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--data {path}: no such file; pass the task's rows as JSONL or Parquet")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"--data {path}: reading Parquet needs pyarrow (pip install 'gpt2kit[hf]'), "
                            "or pass the rows as JSONL") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise UserError(f"--data {path}: not a readable Parquet file ({e})") from None
        return [(f"{path}:row {i + 1}", r) for i, r in enumerate(rows)]
    return [(f"{path}:{lineno}", obj) for lineno, obj in iter_jsonl(path, "JSONL of the dataset's rows")]


def load_questions(task: ChoiceTask, path: str | os.PathLike, limit: int | None = None, *, num_fewshot: int = 0,
                   fewshot_path: str | os.PathLike | None = None) -> list[tuple[str, Question, str]]:
    """(where, question, prompt prefix) for the first ``limit`` rows of ``path``; a bad row is a UserError
    naming the file, the line and the fields the task needs. The prefix is the task's description and the
    first ``num_fewshot`` answered questions of the row's group in ``fewshot_path``."""
    shots: dict[str, list[Question]] = {}
    if num_fewshot:
        if task.fewshot_group is None:
            raise UserError(f"--num-fewshot: the harness samples {task.name}'s few-shot examples at random; "
                            "gpt2kit scores it 0-shot only")
        if fewshot_path is None:
            raise UserError(f"--num-fewshot {num_fewshot} needs --fewshot-data FILE (the dev split's rows)")
        for where, row in read_rows(fewshot_path):
            group, q = _parse(task, where, row, task.fewshot_group)
            shots.setdefault(group, []).append(q)
    out = []
    for where, row in read_rows(path):
        if limit is not None and len(out) >= limit:
            break
        group, q = _parse(task, where, row, task.fewshot_group if num_fewshot else None)
        examples = shots.get(group, [])[:num_fewshot] if num_fewshot else []
        if len(examples) < num_fewshot:
            raise UserError(f"--fewshot-data {fewshot_path}: {len(examples)} rows for {group!r}, "
                            f"--num-fewshot {num_fewshot} needs that many")
        prefix = task.description(row) + "".join(e.answered() + FEWSHOT_DELIMITER for e in examples)
        out.append((where, q, prefix))
    if not out:
        raise UserError(f"--data {path}: no rows; expected the {task.name} dataset's rows ({task.schema})")
    return out


def _parse(task: ChoiceTask, where: str, row: Any, group: Callable[[dict], str] | None) -> tuple[str, Question]:
    try:
        if not isinstance(row, dict):
            raise ValueError(f"expected an object, got {type(row).__name__}")
        q = task.question(row)
        task.description(row)
        return (group(row) if group else ""), q
    except ValueError as e:
        raise UserError(f"{where}: {e}; {task.name} rows need {task.schema}") from None


def choice_items(questions: Sequence[tuple[str, Question, str]],
                 tokenizer: Tokenizer | None = None) -> list[ChoiceItem]:
    """Questions tokenized (harness tokenization) in ``tokenizer``, the model's (GPT-2's by default), for
    :func:`~gpt2kit.eval.choice.score_choices`."""
    items = []
    for where, q, prefix in questions:
        rows = tuple(encode_pair(prefix + ctx, cont, tokenizer) for ctx, cont in q.pairs())
        items.append(ChoiceItem(rows, q.gold, tuple(len(c) for c in q.choices),
                                tuple(len(c.encode("utf-8")) for c in q.choices), where=where))
    return items


def task_data(task: ChoiceTask, data: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """``data`` when given, else the harness's split from the hub, saved once as JSONL in ``cache_dir``
    (default ``<cache>/tasks``)."""
    if data is not None:
        return Path(data)
    dataset, config, split = task.hub
    dest = Path(cache_dir) if cache_dir is not None else cache_root() / "tasks"
    dest = dest / f"{task.name}-{split}.jsonl"
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    try:
        import datasets
    except ImportError:
        raise UserError(f"{task.name}: no --data given and downloading needs `datasets` "
                        "(pip install 'gpt2kit[hf]'); or pass --data FILE") from None
    try:
        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as e:  # datasets raises many types (connection, offline mode, missing config)
        raise UserError(
            f"{task.name}: no --data given and fetching {dataset} ({config}, {split}) from the Hugging Face hub "
            f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the network may be "
            "unreachable: download the rows elsewhere and pass --data FILE (JSONL or Parquet)"
        ) from None
    atomic_write_text(dest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return dest
