"""Full-reference metrics against GT where it exists, and the per-checkpoint summary statistics.

PSNR is computed here on the RGB uint8 images (data range 255, MSE over all three channels,
as BasicSR's ``calculate_psnr`` with ``test_y_channel=False``). SSIM is the package's own
:func:`drqa_plugin.data.ssim` (BT.601 luma, 11x11 Gaussian window, sigma 1.5). Both take
``crop_border`` pixels off every edge first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor


def _crop(x: Tensor, border: int) -> Tensor:
    if border <= 0:
        return x
    return x[..., border:-border, border:-border]


def psnr(restored: Tensor, gt: Tensor, crop_border: int = 0) -> float:
    """PSNR in dB of two uint8 (3, H, W) images of one size; ``inf`` when they are identical."""
    if restored.shape != gt.shape:
        raise ValueError(f"PSNR needs images of one size, got {tuple(restored.shape)} and {tuple(gt.shape)}")
    a, b = _crop(restored, crop_border).double(), _crop(gt, crop_border).double()
    if a.numel() == 0:
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {tuple(restored.shape[-2:])} image")
    mse = float(torch.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(restored: Tensor, gt: Tensor, crop_border: int = 0) -> float:
    """SSIM of two uint8 (3, H, W) images of one size (luma, see :func:`drqa_plugin.data.ssim`)."""
    from drqa_plugin.data import ssim as ssim_batch

    a = _crop(restored, crop_border).float().div(255.0).unsqueeze(0)
    b = _crop(gt, crop_border).float().div(255.0).unsqueeze(0)
    return float(ssim_batch(a, b)[0])


def fit_gt(gt: Tensor, size: tuple[int, int], scale: int) -> Tensor:
    """GT cropped to the SR size when it is larger by less than the scale (LQ made from a GT not
    divisible by it, as BasicSR's ``mod_crop`` handles).

    Raises:
        ValueError: any other size mismatch.
    """
    h, w = size
    gh, gw = gt.shape[-2:]
    if (gh, gw) == (h, w):
        return gt
    if h <= gh < h + scale and w <= gw < w + scale:
        return gt[..., :h, :w]
    raise ValueError(f"GT is {gw}x{gh} but the SR output is {w}x{h}")


def summary_stats(values: Iterable[float | None]) -> dict[str, float]:
    """mean, median and 5th percentile (linear interpolation) of the finite values; NaN when none."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": math.nan, "median": math.nan, "p5": math.nan}
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "p5": float(np.percentile(arr, 5))}
