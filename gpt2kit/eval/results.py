"""Evaluation records: one JSON object per run (printed with ``--json`` and saved beside the checkpoint).

A record holds the task's metrics at the top level (``loss``/``perplexity``/``bpb`` = ``bits_per_byte``/``tokens``,
``acc``/``acc_norm``/``acc_norm_bytes``/``n``, or ``acc``/``perplexity``/``n``; a suite: ``score`` and
``tasks``) and, under ``model``,
``data`` and ``settings``, what produced them: the checkpoint, the data file and its sha256, and the
flags that change the figures.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from pathlib import Path
from typing import Any

from gpt2kit.io import atomic_write_text
from gpt2kit.version import __version__

# metrics shown as percentages in the table
_PERCENT = {"acc", "acc_norm", "acc_norm_bytes"}


def build_record(task: str, metrics: dict[str, Any], *, model: dict[str, Any], data: dict[str, Any],
                 settings: dict[str, Any]) -> dict[str, Any]:
    """The record of one evaluation: metrics first, then provenance."""
    return {
        "task": task,
        **metrics,
        "model": model,
        "data": data,
        "settings": settings,
        "gpt2kit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None, so the output is strict JSON."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def to_json(record: dict[str, Any]) -> str:
    """One line of strict JSON."""
    return json.dumps(json_safe(record), allow_nan=False)


def default_results_path(checkpoint_kind: str, source: str, checkpoint_spec: str, name: str) -> Path:
    """Where results go without ``--out``: beside a checkpoint file, inside a model directory, or
    (hub models, whose files live in a shared cache) in the current directory.

    ``name`` is the task plus, for the loss task, the data's name (``loss-wiki.test``).
    """
    if checkpoint_kind == "hub":
        safe = re.sub(r"[^\w.\-]+", "_", checkpoint_spec)
        return Path.cwd() / f"eval-{name}.{safe}.json"
    src = Path(source)
    if src.is_dir():
        return src / f"eval-{name}.json"
    return src.with_name(f"{src.stem}.eval-{name}.json")


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    """Write the record as pretty JSON, atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(json_safe(record), indent=1, allow_nan=False) + "\n")
    return path


def format_table(record: dict[str, Any], metric_keys: list[str]) -> str:
    """A readable summary: what was evaluated, then one metric per line."""
    model, data = record["model"], record["data"]
    where = data.get("path", "")
    if data.get("split"):
        where += f" [{data['split']}]"
    lines = [
        f"task        {record['task']}",
        f"model       {model.get('checkpoint')} ({model.get('format')}, {model.get('params', 0) / 1e6:.1f}M params)",
        f"data        {where}  sha256 {str(data.get('sha256', ''))[:12]}",
        "-" * 44,
    ]
    for key in metric_keys:
        value = record.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            text = "n/a"
        elif key in _PERCENT:
            text = f"{100 * value:.2f}%"
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = f"{value:.4f}"
        lines.append(f"{key:<16}{text:>16}")
    return "\n".join(lines)


def format_suite_table(record: dict[str, Any]) -> str:
    """One line per task (its metric, chance and centred accuracy), then the suite's score."""
    model = record["model"]
    lines = [
        f"model       {model.get('checkpoint')} ({model.get('format')}, {model.get('params', 0) / 1e6:.1f}M params)",
        f"{'task':<15}{'metric':<10}{'value':>9}{'chance':>9}{'centered':>10}{'n':>8}",
        "-" * 61,
    ]
    for task, r in record["tasks"].items():
        lines.append(f"{task:<15}{r['metric']:<10}{100 * r['value']:>8.2f}%{100 * r['chance']:>8.2f}%"
                     f"{100 * r['centered']:>9.2f}%{r['n']:>8,}")
    lines += ["-" * 61, f"{'score (mean centered)':<43}{100 * record['score']:>9.2f}%"]
    return "\n".join(lines)
