"""``RUN/report.md``: the pipeline's report card (settings, hardware, stage times, curves, figures, samples).

Everything in it comes from ``RUN/pipeline.json`` and the stages' own files (``metrics.jsonl`` for the
curves, drawn by :func:`gpt2kit.train.plot.plot_run`); it is rewritten atomically.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from gpt2kit.device import describe_gpus, native_bf16
from gpt2kit.errors import UserError
from gpt2kit.io import atomic_write_text
from gpt2kit.model.config import GPTConfig
from gpt2kit.model.gpt import GPT
from gpt2kit.pipeline.config import PipelineConfig, PipelineSize
from gpt2kit.pipeline.state import STAGES
from gpt2kit.train.plot import plot_run
from gpt2kit.version import __version__

REPORT_FILE = "report.md"


def hardware() -> dict[str, Any]:
    """What this machine is: CPU model and cores, native bfloat16, torch, and the GPUs torch sees."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "cpu_native_bf16": native_bf16("cpu"),
                            "torch": torch.__version__, "python": platform.python_version(),
                            "os": f"{platform.system()} {platform.release()}"}
    gpus = describe_gpus()
    if gpus:
        info["gpu"] = gpus
    return info


def write_report(run: Path, cfg: PipelineConfig, size: PipelineSize, record: dict[str, Any]) -> Path:
    """Write ``run/report.md`` (and its curves under ``run/report/``) from the pipeline's record; returns its path."""
    stages = record["stages"]
    lines = [f"# gpt2kit pipeline report: {run.resolve().name}", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M %Z')} by gpt2kit {__version__}. Started {record.get('started')}.",
             "", "## Settings", "",
             f"- command: `{cfg.command()}`",
             f"- size: **{size.name}** ({size.expect}); launched as `{size.launch}`",
             f"- data: {', '.join(cfg.sources)}"]
    tok = stages.get("tokenizer", {})
    if tok.get("tokenizer"):
        lines.insert(len(lines) - 1, f"- tokenizer: `{tok['tokenizer']}`, {tok['vocab_size']:,} tokens"
                     + (f" in `{tok['dir']}` (trained on {tok.get('trained_on')})" if tok.get("dir") else
                        " (GPT-2's)"))  # before the data line, which counts its tokens
    prep = stages.get("prepare", {})
    if prep.get("tokens"):
        lines[-1] += " -> " + ", ".join(f"{v:,} {k} tokens" for k, v in prep["tokens"].items())
    pre = stages.get("pretrain", {})
    if pre.get("model"):
        m = pre["model"]
        params = _model_params(m)
        lines.append(f"- pretraining: preset `{pre.get('preset')}`, {pre.get('step')} steps, model L={m['n_layer']} "
                     f"H={m['n_head']} C={m['n_embd']} T={m['block_size']} vocab {m['vocab_size']:,} ({params})")
    sft = stages.get("sft", {})
    if sft.get("settings"):
        s = sft["settings"]
        lines.append(f"- instruction tuning: {sft.get('data')} ({sft.get('train_examples')} train / "
                     f"{sft.get('val_examples')} held-out examples), template `{sft.get('template')}`, "
                     f"{sft.get('steps')} steps, lr {s.get('lr')}, batch {s.get('batch_size')}"
                     + (f", LoRA r={s['lora_rank']}" if s.get("lora_rank") else ", all weights"))
    if cfg.sft is None:
        lines.append("- the shipped instruction set teaches a toy model the chat turn format (a reply, then the end of "
                     "its turn), nothing more: a model this small knows little, and its answers show it")
    lines += ["", "## Hardware", ""]
    lines += [f"- {k}: {v}" for k, v in hardware().items()]
    lines += ["", "## Stages", "", "| stage | status | time | runs |", "|---|---|---|---|"]
    for name in STAGES:
        st = stages.get(name, {})
        status = "done" if name == "report" else st.get("status", "not run")
        lines.append(f"| {name} | {status} | {_duration(st.get('seconds'))} | {st.get('attempts', 1 if st else 0)} |")
    lines += ["", "## Curves", ""]
    lines += _curves(run)
    lines += ["", "## Validation and benchmarks", ""]
    lines += _figures(stages)
    ev = stages.get("eval", {})
    if ev.get("samples"):
        lines += ["", "## Samples of the pretrained model", "",
                  "Temperature 0.8, top-k 40, 48 tokens, prompts from the starts of validation documents.", ""]
        for s in ev["samples"]:
            lines += [f"> **{_md(s['prompt'])}** {_md(s['text'])}", ""]
    if ev.get("answers"):
        lines += ["## Chat answers of the tuned model", "", "Greedy, up to 64 tokens.", ""]
        for a in ev["answers"]:
            lines += [f"- **user:** {_md(a['question'])}", f"  **model:** {_md(a['answer']) or '(nothing)'}"]
    lines += ["", "## Talk to it", "", "```",
              f"gpt2kit chat --checkpoint {cfg.out}",
              f"gpt2kit serve --checkpoint {cfg.out}        # then open http://127.0.0.1:8000/ in a browser",
              f"gpt2kit sample --checkpoint {cfg.out} --instruction \"Name three colors.\"",
              f"gpt2kit eval loss --checkpoint {cfg.out} --data {Path(cfg.out) / 'data'}"]
    written = stages.get("export", {}).get("written", {})
    if "gguf" in written:
        lines.append(f"llama-cli -m {written['gguf']} -p \"<|user|>\\nHello!\\n<|assistant|>\\n\" -n 64   # llama.cpp")
    lines += ["```", ""]
    if "hf" in written:
        lines += [f"Hugging Face export: `{written['hf']}` (`transformers.GPT2LMHeadModel.from_pretrained`).", ""]
    path = run / REPORT_FILE
    atomic_write_text(path, "\n".join(lines))
    return path


def _curves(run: Path) -> list[str]:
    out = []
    for stage, title in (("pretrain", "pretraining"), ("sft", "instruction tuning")):
        if not (run / stage / "metrics.jsonl").exists():
            continue
        try:
            paths = plot_run(str(run / stage), str(run / "report" / stage))
        except UserError as e:
            out.append(f"- {title}: no curves ({e})")
            continue
        for p in paths:
            rel = Path(p).relative_to(run)
            out.append(f"![{title} {rel.stem}]({rel.as_posix()})")
    return out or ["(no metrics yet)"]


def _figures(stages: dict[str, Any]) -> list[str]:
    figures = stages.get("eval", {}).get("figures") or {}
    lines = ["| figure | pretrained | tuned |", "|---|---|---|"]
    rows: list[tuple[str, str, str]] = []
    pre, tuned = figures.get("pretrained", {}), figures.get("tuned", {})
    for key, label in (("loss", "validation loss (nats/token)"), ("bits_per_byte", "validation bits per byte")):
        if "val" in pre or "val" in tuned:
            rows.append((label, _num(pre.get("val", {}).get(key)), _num(tuned.get("val", {}).get(key))))
    sft = stages.get("sft", {})
    if sft.get("best_val_loss") is not None:
        rows.append(("held-out instruction loss (response tokens)", "", _num(sft["best_val_loss"])))
    for task in sorted((set(pre) | set(tuned)) - {"val"}):
        for metric in ("acc", "acc_norm"):
            if metric in pre.get(task, {}) or metric in tuned.get(task, {}):
                n = (pre.get(task) or tuned.get(task)).get("n")
                rows.append((f"{task} {metric} (n={n})", _num(pre.get(task, {}).get(metric)),
                             _num(tuned.get(task, {}).get(metric))))
    if not rows:
        return ["(the evaluation stage has not run)"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if not any(t != "val" for t in set(pre) | set(tuned)):
        lines += ["", "No benchmark data was given: add `--eval hellaswag=FILE arc-easy=FILE ...` "
                      "(local files in the datasets' own formats, see docs/eval.md)."]
    return lines


def _model_params(m: dict[str, Any]) -> str:
    with torch.device("meta"):
        n = GPT(GPTConfig.from_dict(m)).num_params()
    return f"{n / 1e6:.2f}M parameters"


def _num(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else ("" if x is None else str(x))


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _md(text: str) -> str:
    """Model text made inert in Markdown: no HTML, no links or emphasis, one line."""
    for ch in "\\`*_[]<>#|":
        text = text.replace(ch, "\\" + ch)
    return " ".join(text.split())
