"""Input coercion and the preprocessing protocols of the scorer.

Everything here works on float tensors and is differentiable with respect to
the restored image, so the loss and the scorer share one implementation.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor

from drqa_plugin.constants import IMAGE_SUFFIXES, PREPROCESS_MODES
from drqa_plugin.errors import ImageInputError
from drqa_plugin.images import image_to_array, read_image
from drqa_plugin.pretrained import PreprocessConfig

ImageLike = Union[Tensor, np.ndarray, Image.Image, str, os.PathLike]
ChannelOrder = Literal["RGB", "BGR"]
PreprocessMode = Literal["ckdn", "none", "tiles"]
# Below this the 8x-downsampling trunk has almost no spatial extent left.
MIN_SIDE = 32
# Pairs whose aspect ratios differ more than this are almost surely mismatched files.
ASPECT_TOLERANCE = 0.1


__all__ = ["IMAGE_SUFFIXES", "PREPROCESS_MODES", "ImageInputError", "to_float_batch", "prepare_pair"]


def to_float_batch(image: ImageLike, channel_order: ChannelOrder = "RGB") -> Tensor:
    """Any supported image -> float32 tensor (N, 3, H, W) in [0, 1], RGB.

    Tensors: float in [0, 1] or uint8, CHW or NCHW, always RGB. Arrays: uint8,
    uint16 or float in [0, 1], HWC, HW or NHWC (``channel_order`` says whether
    they are BGR, as OpenCV/BasicSR images are). PIL images and paths are read as RGB
    by :func:`drqa_plugin.images.read_image` (EXIF orientation applied, 16-bit kept). One
    channel is expanded to three, an alpha channel is dropped.
    """
    if channel_order not in ("RGB", "BGR"):
        raise ImageInputError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    if isinstance(image, (str, os.PathLike)):
        return _from_array(read_image(image, alpha="drop"), "RGB")
    if isinstance(image, Image.Image):
        return _from_array(image_to_array(image, alpha="drop"), "RGB")
    if isinstance(image, np.ndarray):
        return _from_array(image, channel_order)
    if isinstance(image, Tensor):
        x = _to_nchw(image)
        x = _to_unit_float(x, "tensor")
        return _to_three_channels(x, "tensor")  # tensors are RGB, the torch convention
    raise ImageInputError(
        f"unsupported image type {type(image).__name__}; use a float tensor in [0,1], "
        "a uint8 array, a PIL image or a file path"
    )


def _from_array(arr: np.ndarray, channel_order: ChannelOrder) -> Tensor:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ImageInputError(f"arrays must be HW, HWC or NHWC; got shape {arr.shape}")
    if arr.dtype == np.uint16:  # 16-bit PNG/TIFF
        arr = arr.astype(np.float32) / 65535.0
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise ImageInputError(f"arrays must be uint8, uint16 or float in [0,1]; got dtype {arr.dtype}")
    if not arr.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
        arr = arr.copy()
    x = rearrange(torch.from_numpy(np.ascontiguousarray(arr)), "n h w c -> n c h w")
    x = _to_three_channels(_to_unit_float(x, "array"), "array")
    return x.flip(1) if channel_order == "BGR" else x


def _to_nchw(x: Tensor) -> Tensor:
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[None]
    if x.ndim == 4:
        return x
    raise ImageInputError(f"tensors must be CHW or NCHW; got shape {tuple(x.shape)}")


def _to_unit_float(x: Tensor, what: str) -> Tensor:
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise ImageInputError(f"{what} must be uint8 or float in [0,1]; got {x.dtype}")
    if x.numel():
        # One pass: NaN propagates through aminmax and +-inf fails the range test.
        lo, hi = x.detach().aminmax()
        if torch.isnan(lo) or torch.isnan(hi):
            raise ImageInputError(f"{what} contains NaN values")
        # Allow small overshoot from resampling; 0-255 floats are a caller bug.
        if lo < -0.05 or hi > 1.05:
            raise ImageInputError(
                f"float {what} must hold values in [0,1]; got range [{lo:.3g}, {hi:.3g}]"
                + (" (0-255 values? divide by 255)" if hi > 2 else "")
            )
    return x.float() if x.dtype != torch.float32 else x


def _to_three_channels(x: Tensor, what: str) -> Tensor:
    c = x.shape[1]
    if c == 3:
        return x
    if c == 1:
        return x.expand(-1, 3, -1, -1)
    if c == 2:  # grey + alpha
        return x[:, :1].expand(-1, 3, -1, -1)
    if c == 4:  # colour + alpha
        return x[:, :3]
    raise ImageInputError(f"{what} has {c} channels; expected 1 (grey), 3 (colour) or 2/4 (with alpha)")


def resize(x: Tensor, size: tuple[int, int], interpolation: str) -> Tensor:
    """Resize NCHW floats like PIL does (antialiased when shrinking, nearest = pixel centres)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if interpolation == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    if interpolation == "area":
        return F.interpolate(x, size=size, mode="area")
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    out = F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=shrinking)
    return out.clamp_(0.0, 1.0) if interpolation == "bicubic" and not out.requires_grad else out


def resize_shorter(x: Tensor, shorter: int, interpolation: str) -> Tensor:
    h, w = x.shape[-2:]
    if h <= w:
        size = (shorter, max(shorter, int(shorter * w / h)))
    else:
        size = (max(shorter, int(shorter * h / w)), shorter)
    return resize(x, size, interpolation)


def center_crop(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def match_reference_size(degraded: Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> Tensor:
    """Resize a degraded reference (e.g. an SR input, 1/s of the output) to the restored size."""
    h, w = degraded.shape[-2:]
    if (h, w) == tuple(size):
        return degraded
    if h > size[0] and w > size[1]:
        warnings.warn(
            f"the degraded reference ({w}x{h}) is larger than the restored image ({size[1]}x{size[0]}); "
            "are restored and degraded swapped? (the restored image comes first)",
            stacklevel=4,
        )
    ratio_ref, ratio_out = w / h, size[1] / size[0]
    if abs(ratio_ref - ratio_out) / ratio_out > ASPECT_TOLERANCE:
        raise ImageInputError(
            f"degraded reference {w}x{h} and restored image {size[1]}x{size[0]} have different aspect "
            "ratios; are these two images of the same scene?"
        )
    return resize(degraded, size, interpolation)


def normalize(x: Tensor, cfg: PreprocessConfig) -> Tensor:
    mean = torch.tensor(cfg.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def prepare_pair(
    restored: Tensor,
    degraded: Tensor,
    mode: PreprocessMode,
    cfg: PreprocessConfig,
    reference_interpolation: str = "bicubic",
) -> tuple[Tensor, Tensor]:
    """(restored, degraded) float NCHW in [0,1] -> normalised network inputs.

    ``"ckdn"``: the official protocol (shorter side to ``cfg.resize_shorter``,
    centre crop ``cfg.crop``; bicubic for the restored image, nearest for the
    reference). ``"none"`` and ``"tiles"``: whole image, normalisation only
    (tiling happens in :func:`tile_pairs`). ``reference_interpolation`` is used
    only to bring a differently sized reference to the restored size first.
    """
    if mode not in PREPROCESS_MODES:
        raise ImageInputError(f"preprocess must be one of {PREPROCESS_MODES}, got {mode!r}")
    if restored.shape[0] != degraded.shape[0]:
        raise ImageInputError(f"{restored.shape[0]} restored vs {degraded.shape[0]} degraded images")
    degraded = match_reference_size(degraded, (restored.shape[-2], restored.shape[-1]), reference_interpolation)
    if mode == "ckdn":
        restored = center_crop(resize_shorter(restored, cfg.resize_shorter, cfg.restored_interpolation), cfg.crop)
        degraded = center_crop(resize_shorter(degraded, cfg.resize_shorter, cfg.reference_interpolation), cfg.crop)
    elif min(restored.shape[-2:]) < MIN_SIDE:
        raise ImageInputError(
            f"image of {restored.shape[-1]}x{restored.shape[-2]} is too small (min side {MIN_SIDE}) for preprocess={mode!r}"
        )
    return normalize(restored, cfg), normalize(degraded, cfg)


def tile_starts(length: int, tile: int, stride: int | None = None) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px, ``stride`` apart (default: no overlap);
    the last one is flush with the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride or tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_pairs(restored: Tensor, degraded: Tensor, tile: int) -> tuple[Tensor, Tensor, int]:
    """Cut equally sized NCHW pairs into tiles covering the whole image.

    Returns (restored_tiles, degraded_tiles, tiles_per_image); tiles are ordered
    image-major, so ``scores.view(n, tiles_per_image).mean(1)`` averages per image.
    Images smaller than ``tile`` on a side use their full extent on that side.
    """
    h, w = restored.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th), tile_starts(w, tw)

    def cut(x: Tensor) -> Tensor:
        tiles = torch.stack([x[..., y : y + th, xx : xx + tw] for y in ys for xx in xs])
        return rearrange(tiles, "t n c h w -> (n t) c h w")

    return cut(restored), cut(degraded), len(ys) * len(xs)
