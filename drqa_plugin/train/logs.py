"""Run logs: ``metrics.csv`` (always), TensorBoard (when installed) and PNG plots at the end."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drqa_plugin.train.losses import LOSS_TERMS

COLUMNS = (
    "split", "step", "epoch", "stage", "lr", "loss", *LOSS_TERMS, "nonfinite_skipped",
    "srcc", "plcc", "krcc", "grouped_srcc", "grouped_plcc", "grouped_krcc", "n",
    # the model's grouped SRCC with every val pair scored against another input's reference (log.reference_check)
    "other_ref_grouped_srcc",
    # gradient norm of the row's last optimiser step before / after clipping (when clipping is on;
    # DeepSpeed reports only the first)
    "grad_norm", "grad_norm_clipped",
)


class MetricsLog:
    """Append-only CSV of train/val rows (main process only), mirrored to TensorBoard.

    On resume, rows logged after the checkpoint's step (by the interrupted run)
    are dropped first, so the file reads like one uninterrupted run.
    """

    def __init__(self, output_dir: Path, tensorboard: bool = True, keep_until_step: int = 0) -> None:
        self.path = Path(output_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_metrics(self.path) if self.path.is_file() and keep_until_step else []
        rows = [r for r in rows if int(r["step"]) <= keep_until_step]
        self._file = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
        self._writer.writeheader()
        for row in rows:
            self._writer.writerow(row)
        self._file.flush()
        self._tb = _summary_writer(Path(output_dir) / "tensorboard") if tensorboard else None

    def write(self, row: Mapping[str, Any]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"metrics.csv has no column(s) {sorted(unknown)}")
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("split", "step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{row['split']}/{key}", value, int(row["step"]))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _summary_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional: the CSV has everything
        return None
    return SummaryWriter(str(folder))


def read_metrics(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict[str, str]], split: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        if r["split"] == split and r.get(key) not in (None, ""):
            xs.append(int(r["step"]))
            ys.append(float(r[key]))
    return xs, ys


def write_plots(output_dir: Path, final_eval: Any | None) -> list[Path]:
    """``plots/losses.png`` (every loss term, stage boundary marked, val SRCC/PLCC) and ``plots/scatter.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder = Path(output_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(Path(output_dir) / "metrics.csv")
    written = [_plot_losses(plt, rows, folder / "losses.png")]
    if final_eval is not None and final_eval.scores:
        written.append(_plot_scatter(plt, final_eval, folder / "scatter.png"))
    return written


def _plot_losses(plt: Any, rows: list[dict[str, str]], path: Path) -> Path:
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for key in LOSS_TERMS:
        xs, ys = _series(rows, "train", key)
        if xs:
            ax_loss.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
    stage1 = [int(r["step"]) for r in rows if r["split"] == "train" and r["stage"] == "1"]
    stage2 = [int(r["step"]) for r in rows if r["split"] == "train" and r["stage"] == "2"]
    if stage2:
        # A row's step counts the updates done, so stage 2 begins right after the last stage-1 row.
        ax_loss.axvline(max(stage1) if stage1 else min(stage2), color="grey", ls="--", lw=1, label="stage 2 starts")
    ax_loss.set(xlabel="optimiser step", ylabel="weighted loss", title="training losses", yscale="log")
    ax_loss.legend()
    for key in ("srcc", "plcc", "grouped_srcc"):
        xs, ys = _series(rows, "val", key)
        if xs:
            ax_val.plot(xs, ys, marker="o", label=key)
    xs, ys = _series(rows, "val", "other_ref_grouped_srcc")
    if xs:  # the reference check: a model that compares keeps this far below its own grouped_srcc
        ax_val.plot(xs, ys, marker="x", ls="--", color="grey", label="grouped_srcc, another input's reference")
    ax_val.set(xlabel="optimiser step", ylabel="correlation", title="validation (student, dr)")
    ax_val.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_scatter(plt: Any, result: Any, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    # Scene ids are categories, not a scale: one qualitative colour per scene, no colour bar.
    scenes = sorted(set(result.groups))
    palette = plt.get_cmap("tab20")
    for i, scene in enumerate(scenes):
        xs = [t for t, g in zip(result.targets, result.groups) if g == scene]
        ys = [s for s, g in zip(result.scores, result.groups) if g == scene]
        ax.scatter(xs, ys, s=12, color=palette(i % 20), label=f"scene {scene}")
    m = result.metrics
    title = f"SRCC {m.get('srcc', math.nan):.3f}  PLCC {m.get('plcc', math.nan):.3f}"
    ax.set(xlabel="target (label)", ylabel="predicted score (dr)", title=title)
    if len(scenes) <= 12:
        ax.legend(fontsize="small", markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
