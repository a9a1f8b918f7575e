"""Where in an image does a restoration fail? DR-IQA over sliding windows, drawn as a heat overlay.

:func:`quality_map` scores every ``tile`` x ``tile`` window (step ``stride``) of the restored
image against the same window of its LQ input brought to the restored size (bicubic, as the
scorer does for any smaller reference), with the scorer in ``preprocess="none"`` mode: the
window as it is, no resizing. :func:`render_map` paints each pixel with the mean score of the
windows covering it, over the restored image, with a colour bar. The colours span the map's
own range (the bar gives the numbers): a map shows where an image is worst, not how it
compares with another image's map.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from drqa_plugin.errors import ImageInputError
from drqa_plugin.files import atomic_path
from drqa_plugin.preprocess import MIN_SIDE, match_reference_size, tile_starts

DEFAULT_TILE = 288  # the CKDN protocol's crop: windows the network saw in training
MAX_DISPLAY = 1024  # longest side of the rendered picture, in pixels


@dataclass
class QualityMap:
    """Scores of the windows at (ys[i], xs[j]), each ``tile`` px square, of an image of ``size`` (h, w)."""

    scores: np.ndarray  # (len(ys), len(xs))
    ys: list[int]
    xs: list[int]
    tile: int
    size: tuple[int, int]

    def dense(self, factor: float = 1.0) -> np.ndarray:
        """Per-pixel mean score of the covering windows, on a grid ``factor`` times the image size."""
        h, w = (max(1, round(s * factor)) for s in self.size)
        total = np.zeros((h, w))
        count = np.zeros((h, w))
        for i, y in enumerate(self.ys):
            for j, x in enumerate(self.xs):
                y0, y1 = round(y * factor), max(round(y * factor) + 1, round((y + self.tile) * factor))
                x0, x1 = round(x * factor), max(round(x * factor) + 1, round((x + self.tile) * factor))
                total[y0:y1, x0:x1] += self.scores[i, j]
                count[y0:y1, x0:x1] += 1
        return total / np.maximum(count, 1)


def quality_map(scorer, restored: Tensor, degraded: Tensor, tile: int = DEFAULT_TILE,
                stride: int | None = None, batch: int = 8) -> QualityMap:
    """Window scores of ``restored`` (1, 3, H, W) in [0, 1] against ``degraded`` (1, 3, h, w).

    ``scorer`` is a :class:`~drqa_plugin.scorer.DRIQA` built with ``preprocess="none"``. A tile
    larger than the image shrinks to the image's shorter side; the last window of a row or
    column is flush with the edge, so every pixel is covered.

    Raises:
        ImageInputError: the image (or the tile) is smaller than the network's minimum side.
    """
    if scorer.preprocess != "none":
        raise ValueError(f"quality_map needs a scorer with preprocess='none', got {scorer.preprocess!r}")
    h, w = restored.shape[-2:]
    tile = min(tile, h, w)
    if tile < MIN_SIDE:
        raise ImageInputError(f"quality map: windows of {tile} px are below the minimum side {MIN_SIDE}; "
                              "use a larger --map-tile or image")
    stride = max(1, stride or tile // 2)
    reference = match_reference_size(degraded.float(), (h, w), scorer.reference_interpolation)
    ys = tile_starts(h, tile, stride)
    xs = tile_starts(w, tile, stride)
    boxes = [(y, x) for y in ys for x in xs]
    scores = []
    for start in range(0, len(boxes), batch):
        part = boxes[start : start + batch]
        r = torch.cat([restored[..., y : y + tile, x : x + tile] for y, x in part])
        d = torch.cat([reference[..., y : y + tile, x : x + tile] for y, x in part])
        scores.append(scorer(r, d))
    grid = torch.cat(scores).numpy().reshape(len(ys), len(xs))
    return QualityMap(grid, ys, xs, tile, (h, w))


def render_map(image: np.ndarray, qmap: QualityMap, path: str | os.PathLike, title: str = "",
               alpha: float = 0.45) -> Path:
    """Draw ``qmap`` over ``image`` (HWC uint8) with a colour bar and write a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from PIL import Image

    h, w = image.shape[:2]
    factor = min(1.0, MAX_DISPLAY / max(h, w))
    shown = image
    if factor < 1.0:
        shown = np.asarray(Image.fromarray(image).resize((max(1, round(w * factor)), max(1, round(h * factor))),
                                                         Image.Resampling.BICUBIC))
    heat = qmap.dense(factor)
    stride_px = (qmap.ys[1] - qmap.ys[0] if len(qmap.ys) > 1 else qmap.tile) * factor
    if stride_px >= 4:
        from scipy.ndimage import gaussian_filter

        # Soften the window grid: each pixel's value is still the mean of its windows' scores.
        heat = gaussian_filter(heat, sigma=stride_px / 3, mode="nearest")
    low, high = float(heat.min()), float(heat.max())
    if high - low < 1e-6:
        low, high = low - 0.005, high + 0.005
    dpi = 100
    fig = Figure(figsize=(shown.shape[1] / dpi + 1.3, shown.shape[0] / dpi + (0.35 if title else 0.1)), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(shown, interpolation="nearest")
    overlay = ax.imshow(heat, cmap="RdYlGn", vmin=low, vmax=high, alpha=alpha, interpolation="bilinear",
                        extent=(-0.5, shown.shape[1] - 0.5, shown.shape[0] - 0.5, -0.5))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    bar = fig.colorbar(overlay, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label(f"DR-IQA of {qmap.tile}px windows (higher = better)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return save_figure(fig, path, tight=True)


def save_figure(fig, path: str | os.PathLike, tight: bool = False) -> Path:
    """Write a matplotlib figure as PNG via a temporary file and a rename."""
    path = Path(path)
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png", **({"bbox_inches": "tight", "pad_inches": 0.05} if tight else {}))
    return path
