"""On-the-fly synthetic DR-IQA samples from unlabelled pristine photos.

For sample ``index`` a NumPy generator seeded from (seed, split, epoch, index)
draws everything: the photo, the crop, the degradation and two restorations.
So the same sample comes out on every rank, in every worker and after every
resume, with no state shared between them. All work happens at crop size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from drqa_plugin.data.config import DataConfig, DegradationConfig, RestorationConfig
from drqa_plugin.data.labellers import get_labeller
from drqa_plugin.data.photos import DataError, Photo, read_rgb_cached

try:
    import cv2
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the synthetic data pipeline needs OpenCV: pip install opencv-python-headless"
    ) from exc

_CV2_INTERP = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}
_SPLIT_CODE = {"train": 0, "val": 1}

FloatImage = np.ndarray  # float32 HWC RGB in [0, 1]


def sample_rng(seed: int, split: str, epoch: int, index: int) -> np.random.Generator:
    """The generator that decides everything about one sample."""
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(epoch), int(index)])


def _resize(x: FloatImage, width: int, height: int, interp: str) -> FloatImage:
    return cv2.resize(x, (width, height), interpolation=_CV2_INTERP[interp])


def _blur(x: FloatImage, sigma: float) -> FloatImage:
    return cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT101)


def _jpeg(x: FloatImage, quality: int) -> FloatImage:
    u8 = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - cv2 always encodes valid uint8 arrays
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    assert decoded is not None  # we just encoded it
    return decoded[..., ::-1].astype(np.float32) / 255.0


def degrade(pristine: FloatImage, cfg: DegradationConfig, rng: np.random.Generator) -> tuple[FloatImage, FloatImage]:
    """(degraded reference at full size, its low-resolution version).

    blur -> downscale -> noise -> JPEG, then upscale back: the reference looks
    like the upsampled input a real restoration method would receive.
    """
    h, w = pristine.shape[:2]
    x = pristine
    if rng.random() < cfg.blur_prob:
        x = _blur(x, rng.uniform(*cfg.blur_sigma_range))
    scale = rng.uniform(*cfg.scale_range)
    lw, lh = max(4, round(w / scale)), max(4, round(h / scale))
    x = _resize(x, lw, lh, cfg.down_interpolations[rng.integers(len(cfg.down_interpolations))])
    if rng.random() < cfg.noise_prob:
        sigma = rng.uniform(*cfg.noise_sigma_range)
        # Half the time luminance-only noise (sensor-like), else per-channel.
        shape = (lh, lw, 1) if rng.random() < 0.5 else (lh, lw, 3)
        x = x + rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
    x = np.clip(x, 0.0, 1.0)
    if rng.random() < cfg.jpeg_prob:
        x = _jpeg(x, int(rng.uniform(*cfg.jpeg_quality_range)))
    low = np.ascontiguousarray(x, dtype=np.float32)
    degraded = np.clip(_resize(low, w, h, cfg.up_interpolation), 0.0, 1.0)
    return degraded, low


@dataclass(frozen=True)
class RestoreContext:
    degraded: FloatImage
    low: FloatImage
    pristine: FloatImage


def _op_unsharp(x: FloatImage, ctx: RestoreContext, rng: np.random.Generator) -> FloatImage:
    amount = rng.uniform(0.3, 2.5)
    return x + np.float32(amount) * (x - _blur(x, rng.uniform(0.8, 3.0)))


def _op_denoise(x: FloatImage, ctx: RestoreContext, rng: np.random.Generator) -> FloatImage:
    kind = rng.integers(3)
    if kind == 0:
        return _blur(x, rng.uniform(0.5, 1.8))
    if kind == 1:
        return cv2.medianBlur(np.ascontiguousarray(x), 3 if rng.random() < 0.6 else 5)
    return cv2.bilateralFilter(np.ascontiguousarray(x), int(rng.integers(5, 10)),
                               float(rng.uniform(0.05, 0.25)), float(rng.uniform(2.0, 6.0)))


def _op_ringing(x: FloatImage, ctx: RestoreContext, rng: np.random.Generator) -> FloatImage:
    # An ideal (brick-wall) low-pass in the Fourier domain produces Gibbs
    # oscillations next to edges, like over-eager sinc/Lanczos or deconvolution.
    h, w = x.shape[:2]
    spectrum = np.fft.rfft2(x, axes=(0, 1))
    fy = np.abs(np.fft.fftfreq(h))[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    cutoff = rng.uniform(0.12, 0.35)  # cycles/pixel, Nyquist = 0.5
    mask = ((fy <= cutoff) & (fx <= cutoff)).astype(np.float32)
    boost = np.float32(rng.uniform(1.0, 1.6))  # over-shoot the passband's top octave
    mask = mask * np.where(np.maximum(fy, fx) > cutoff / 2, boost, np.float32(1.0))
    return np.fft.irfft2(spectrum * mask[..., None], s=(h, w), axes=(0, 1)).astype(np.float32)


def _op_gan_texture(x: FloatImage, ctx: RestoreContext, rng: np.random.Generator) -> FloatImage:
    # Hallucinated high-frequency texture where the image already has structure,
    # plus sharpening: what GAN super-resolution outputs look like.
    h, w = x.shape[:2]
    noise = rng.standard_normal((h, w, 1), dtype=np.float32)
    noise = noise - _blur(noise, 1.0)[..., None]
    grey = x.mean(axis=2)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    structure = _blur(np.sqrt(gx * gx + gy * gy), 2.0)
    structure = structure / (structure.max() + 1e-6)
    amplitude = np.float32(rng.uniform(0.04, 0.2))
    sharpened = x + np.float32(rng.uniform(0.5, 1.5)) * (x - _blur(x, 1.2))
    return sharpened + amplitude * (0.3 + structure[..., None]) * noise


def _op_detail(x: FloatImage, ctx: RestoreContext, rng: np.random.Generator) -> FloatImage:
    # Stands for a method that really recovers content: part of the way to pristine.
    alpha = np.float32(rng.uniform(0.2, 0.9))
    return x + alpha * (ctx.pristine - x)


RESTORERS: dict[str, Callable[[FloatImage, RestoreContext, np.random.Generator], FloatImage]] = {
    "unsharp": _op_unsharp,
    "denoise": _op_denoise,
    "ringing": _op_ringing,
    "gan_texture": _op_gan_texture,
    "detail": _op_detail,
}
_UPSCALERS = ("nearest", "bilinear", "bicubic", "lanczos", "area")


def restore(ctx: RestoreContext, ops: Sequence[str], rng: np.random.Generator) -> FloatImage:
    """Apply restoration-like operators in order; ``interp`` re-upsamples the low-res input.

    Unknown names raise ValueError. The result is clipped to [0, 1].
    """
    h, w = ctx.degraded.shape[:2]
    x = ctx.degraded
    for op in ops:
        if op == "interp":
            x = _resize(ctx.low, w, h, _UPSCALERS[rng.integers(len(_UPSCALERS))])
        elif op in RESTORERS:
            x = RESTORERS[op](np.ascontiguousarray(x, dtype=np.float32), ctx, rng)
        else:
            raise ValueError(f"unknown restoration operator {op!r}; known: {('interp', *RESTORERS)}")
    return np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)


def draw_ops(cfg: RestorationConfig, rng: np.random.Generator) -> list[str]:
    """1..max_ops distinct operators; ``interp`` first because it starts from the low-res input."""
    count = int(rng.integers(1, cfg.max_ops + 1))
    ops = [cfg.ops[i] for i in rng.permutation(len(cfg.ops))[:count]]
    return sorted(ops, key=lambda op: op != "interp")


def _to_tensor(x: FloatImage) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))


@lru_cache(maxsize=64)
def _crop_source(path: str, crop: int) -> np.ndarray:
    """The decoded photo, upscaled once if its shorter side is below ``crop``."""
    image = read_rgb_cached(path)
    h, w = image.shape[:2]
    if min(h, w) < crop:
        factor = crop / min(h, w)
        image = cv2.resize(image, (max(crop, round(w * factor)), max(crop, round(h * factor))),
                           interpolation=cv2.INTER_CUBIC)
        image.setflags(write=False)
    return image


class SyntheticPairs(Dataset):
    """Deterministic synthetic (restored, degraded, restored_2, pristine) samples.

    ``photos`` are this split's scenes; ``groups`` their scene ids (stable across
    splits). Sample ``i`` uses photo ``i % len(photos)`` so scenes are balanced.
    Call :meth:`set_epoch` to draw fresh samples each epoch (deterministic too).
    """

    def __init__(self, photos: Sequence[Photo], groups: Sequence[int], cfg: DataConfig, split: str,
                 length: int) -> None:
        if not photos:
            raise DataError(f"synthetic {split} split has no photos")
        if split not in _SPLIT_CODE:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.photos = list(photos)
        self.groups = list(groups)
        self.cfg = cfg
        self.split = split
        self.length = int(length)
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def group_ids(self) -> list[int]:
        """Each sample's ``group`` (its photo's scene id), without synthesising or labelling it."""
        return [self.groups[i % len(self.photos)] for i in range(self.length)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"sample index {index} out of range [0, {self.length})")
        rng = sample_rng(self.cfg.seed, self.split, self.epoch, index)
        slot = index % len(self.photos)
        photo = self.photos[slot]
        source = _crop_source(photo.path, self.cfg.crop)
        c = self.cfg.crop
        top = int(rng.integers(source.shape[0] - c + 1))
        left = int(rng.integers(source.shape[1] - c + 1))
        pristine = source[top:top + c, left:left + c].astype(np.float32) * np.float32(1 / 255)
        degraded, low = degrade(pristine, self.cfg.degradation, rng)
        ctx = RestoreContext(degraded, low, pristine)
        restored = restore(ctx, draw_ops(self.cfg.restoration, rng), rng)
        restored_2 = restore(ctx, draw_ops(self.cfg.restoration, rng), rng)
        images = {k: _to_tensor(v) for k, v in
                  (("restored", restored), ("degraded", degraded), ("restored_2", restored_2),
                   ("pristine", pristine))}
        with torch.no_grad():
            scores = get_labeller(self.cfg.labeller)(
                torch.stack([images["restored"], images["restored_2"]]), images["pristine"][None]
            )
        return {
            **images,
            "target": scores[0].float(),
            "target_2": scores[1].float(),
            "group": self.groups[slot],
            "name": f"{photo.name}_{self.split}_{self.epoch}_{index:06d}",
        }
