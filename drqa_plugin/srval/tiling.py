"""Super-resolve an image in overlapping tiles so memory stays bounded for any image size.

The LQ image is cut into a grid of *cores* of at most ``tile`` px; each core is run with
``overlap`` px of real image context on every side (less at the image border) and only the
core's part of the output is kept. A model whose receptive field fits in ``overlap`` gives the
untiled result exactly, up to float rounding; wider models differ slightly near the seams
(measured in the tests and ``docs/validate.md``). The output is assembled in a buffer of the
requested dtype (uint8 by default: 3 bytes per output pixel instead of 12), so peak memory is
the output buffer plus one tile's activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from drqa_plugin.errors import ConfigError


def core_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """Balanced [start, end) spans of at most ``tile`` px that cover ``length`` px."""
    n = max(1, math.ceil(length / tile))
    edges = [round(i * length / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


def to_uint8(x: Tensor) -> Tensor:
    """[0, 1] floats -> uint8 with rounding, as an image file stores them."""
    return x.float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def super_resolve(
    model: Callable[[Tensor], Tensor],
    lq: Tensor,
    scale: int,
    tile: int = 0,
    overlap: int = 16,
    out_dtype: torch.dtype = torch.uint8,
) -> Tensor:
    """Run ``model`` on ``lq`` (1, 3, h, w) in [0, 1]; returns (3, s*h, s*w) on the CPU in ``out_dtype``.

    ``tile <= 0`` (or an image that fits in one tile) runs the whole image at once.
    uint8 output is rounded from the model's [0, 1] output; float output is that output.

    Raises:
        ConfigError: a negative overlap.
        RuntimeError: the model returned another size than ``scale`` times its input.
    """
    if overlap < 0:
        raise ConfigError(f"tile overlap must be >= 0, got {overlap}")
    h, w = lq.shape[-2:]
    convert = to_uint8 if out_dtype == torch.uint8 else (lambda t: t.to(out_dtype))
    if tile <= 0 or (h <= tile and w <= tile):
        y = model(lq)
        _check_size(y, h, w, scale)
        return convert(y[0].cpu())
    out = torch.empty(3, h * scale, w * scale, dtype=out_dtype)
    for y0, y1 in core_spans(h, tile):
        for x0, x1 in core_spans(w, tile):
            iy0, iy1 = max(0, y0 - overlap), min(h, y1 + overlap)
            ix0, ix1 = max(0, x0 - overlap), min(w, x1 + overlap)
            y = model(lq[..., iy0:iy1, ix0:ix1])
            _check_size(y, iy1 - iy0, ix1 - ix0, scale)
            oy, ox = (y0 - iy0) * scale, (x0 - ix0) * scale
            core = y[0, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale]
            out[:, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = convert(core.cpu())
    return out


def _check_size(y: Tensor, h: int, w: int, scale: int) -> None:
    if y.ndim != 4 or y.shape[1] != 3 or tuple(y.shape[-2:]) != (h * scale, w * scale):
        raise RuntimeError(
            f"the model returned {tuple(y.shape)} for a {w}x{h} input, expected (1, 3, {h * scale}, {w * scale})"
        )
