"""Curves of a training run from its metrics.jsonl: loss, learning rate, validation bits per byte, HellaSwag and
any other recorded metric, as PNG files.

matplotlib is optional (``gpt2kit[viz]``) and imported only when a plot is made.
"""

from __future__ import annotations

from pathlib import Path

from gpt2kit.errors import UserError
from gpt2kit.io import atomic_path
from gpt2kit.train.metrics import read_metrics

METRIC_FILES = {"val_bpb": "bpb.png"}
"""Metrics drawn on their own whenever a run records them, and the file each goes to (other ``--metric`` keys go
to ``KEY.png``)."""

ALWAYS_DRAWN = {"loss": "loss.png", "val_loss": "loss.png", "lr": "lr.png", "hellaswag_acc": "hellaswag.png",
                "hellaswag_acc_norm": "hellaswag.png"}
"""The metrics the fixed figures show."""

LABELS = {"val_bpb": "val bits per byte"}
"""Axis names of the metrics that have a clearer one than their key."""


def plot_run(run_dir: str, out_dir: str | None = None, log_scale: bool = False,
             metrics: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Write ``loss.png``, ``lr.png``, ``bpb.png`` (validation bits per byte, when the run recorded ``val_bpb``),
    ``hellaswag.png`` (when it has HellaSwag scores) and one ``KEY.png`` for each of ``metrics`` (metrics.jsonl
    keys: ``val_bpb``, ``grad_norm``, ...); returns their paths."""
    records = read_metrics(run_dir)
    if not records:
        raise UserError(f"{Path(run_dir) / 'metrics.jsonl'}: empty; the run has not logged a step yet")
    numeric = sorted({k for r in records for k, v in r.items()
                      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in metrics:
        if key in ALWAYS_DRAWN:
            raise UserError(f"--metric {key}: already drawn in {ALWAYS_DRAWN[key]}")
        if key not in numeric:
            raise UserError(f"--metric {key}: {Path(run_dir) / 'metrics.jsonl'} records no {key!r}; it has "
                            + ", ".join(numeric))
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("gpt2kit plot needs matplotlib: pip install 'gpt2kit[viz]'") from None
    out = Path(out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        return [s for s, _ in pts], [v for _, v in pts]

    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    steps, loss = series("loss")
    ax.plot(steps, loss, label="train loss", linewidth=1)
    vsteps, vloss = series("val_loss")
    if vsteps:
        ax.plot(vsteps, vloss, "o-", label="val loss", markersize=3)
        best = min(range(len(vloss)), key=vloss.__getitem__)
        ax.annotate(f"best {vloss[best]:.3f}", (vsteps[best], vloss[best]), textcoords="offset points", xytext=(5, 8))
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)" + (", log scale" if log_scale else ""))
    ax.set_title(f"loss — {Path(run_dir).resolve().name}")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(_save(fig, out / "loss.png"))

    fig, ax = plt.subplots(figsize=(8, 3.5))
    steps, lr = series("lr")
    ax.plot(steps, lr, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "lr.png"))

    for key in dict.fromkeys([k for k in METRIC_FILES if k in numeric] + list(metrics)):  # each once
        fig = _metric_figure(plt, key, *series(key), Path(run_dir))
        paths.append(_save(fig, out / METRIC_FILES.get(key, f"{key}.png")))

    hsteps, acc_norm = series("hellaswag_acc_norm")
    if hsteps:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(hsteps, acc_norm, "o-", label="acc_norm", markersize=3)
        asteps, acc = series("hellaswag_acc")
        if asteps:
            ax.plot(asteps, acc, "s--", label="acc", markersize=3, alpha=0.7)
        ax.axhline(0.25, color="gray", linestyle=":", linewidth=1, label="chance (4 endings)")
        ax.set_xlabel("step")
        ax.set_ylabel("HellaSwag accuracy")
        ax.set_title(f"HellaSwag — best acc_norm {max(acc_norm):.3f}")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(_save(fig, out / "hellaswag.png"))
    return paths


def _metric_figure(plt, key: str, steps: list[int], values: list[float], run_dir: Path):
    """One metric per step; a validation metric (``val_*``, lower is better) marks its best value."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(steps, values, "o-" if key.startswith("val_") else "-", label=LABELS.get(key, key), markersize=3)
    if key.startswith("val_") and values:
        best = min(range(len(values)), key=values.__getitem__)
        ax.annotate(f"best {values[best]:.3f}", (steps[best], values[best]), textcoords="offset points",
                    xytext=(5, 8))
    ax.set_xlabel("step")
    ax.set_ylabel(LABELS.get(key, key))
    ax.set_title(f"{LABELS.get(key, key)} — {run_dir.resolve().name}")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _save(fig, path: Path) -> str:
    """Lay out, write ``path`` atomically as a 120-dpi PNG and free ``fig``; returns the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return str(path)
