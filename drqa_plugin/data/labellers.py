"""Full-reference quality labellers for the synthetic pipeline.

A labeller maps (images (N,3,H,W), pristine (N or 1,3,H,W)), float RGB in
[0, 1], to a quality score (N,) in [0, 1], higher = better. Built in: SSIM and
MS-SSIM (own torch code, no extra dependency) and, when the optional
``stlpips-pytorch`` wheel is installed, shift-tolerant LPIPS (1 - distance).
Register more with :func:`register_labeller`.

See docs/data.md and shared labels.md: SSIM-type labels prefer blur over GAN
texture; a learned perceptual metric is the better teacher where available.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class Labeller(Protocol):
    def __call__(self, images: Tensor, pristine: Tensor) -> Tensor: ...


_FACTORIES: dict[str, Callable[[], Labeller]] = {}

_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def register_labeller(name: str, factory: Callable[[], Labeller]) -> None:
    """Make ``factory()`` available as ``DataConfig.labeller = name``."""
    _FACTORIES[name] = factory
    get_labeller.cache_clear()  # a re-registered name must not keep its old instance


def available_labellers() -> tuple[str, ...]:
    return tuple(sorted(_FACTORIES))


@cache
def get_labeller(name: str) -> Labeller:
    """The labeller called ``name``, built once per process."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown labeller {name!r}; available: {available_labellers()}")
    return _FACTORIES[name]()


@lru_cache(maxsize=8)
def _gaussian_window(size: int, sigma: float) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: Tensor, window: Tensor) -> Tensor:
    # Separable "valid" Gaussian filtering per channel (as in the SSIM paper: no padding).
    c = x.shape[1]
    k = window.to(x)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _ssim_maps(x: Tensor, y: Tensor, window: Tensor, data_range: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-image SSIM and contrast-structure means, both (N,)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    # One grouped convolution for all five moments: per-call overhead dominates on CPU.
    moments = _filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    mu_x, mu_y, exx, eyy, exy = moments.chunk(5, dim=1)
    sxx = exx - mu_x**2
    syy = eyy - mu_y**2
    sxy = exy - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def luminance(x: Tensor) -> Tensor:
    """BT.601 luma (N,1,H,W) of RGB (N,3,H,W); grey (N,1,H,W) passes through."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _check(images: Tensor, pristine: Tensor) -> tuple[Tensor, Tensor]:
    if images.ndim != 4 or pristine.ndim != 4 or images.shape[1:] != pristine.shape[1:]:
        raise ValueError(f"labeller needs (N,C,H,W) images of one size, got {tuple(images.shape)} "
                         f"and {tuple(pristine.shape)}")
    # SSIM is conventionally computed on luma; it also costs a third of per-channel RGB.
    x = luminance(images.float())
    return x, luminance(pristine.float()).expand_as(x)


def ssim(images: Tensor, pristine: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """SSIM of the BT.601 luma (Gaussian 11x11, sigma 1.5, K=(0.01, 0.03), no padding)."""
    x, y = _check(images, pristine)
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"SSIM needs images of at least {window_size} px, got {tuple(x.shape[-2:])}")
    return _ssim_maps(x, y, _gaussian_window(window_size, sigma))[0].clamp(0.0, 1.0)


def ms_ssim(images: Tensor, pristine: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Multi-scale SSIM of the BT.601 luma (Wang et al. 2003 weights).

    Small crops cannot hold all 5 scales with an 11 px window; only the scales
    that fit are used and their weights renormalised, so crops >= 176 px give
    standard MS-SSIM and smaller crops a close variant.
    """
    x, y = _check(images, pristine)
    scales = 0
    size = min(x.shape[-2:])
    while scales < len(_MS_SSIM_WEIGHTS) and size >= window_size:
        scales += 1
        size //= 2
    if scales == 0:
        raise ValueError(f"MS-SSIM needs images of at least {window_size} px, got {tuple(x.shape[-2:])}")
    weights = torch.tensor(_MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    window = _gaussian_window(window_size, sigma)
    values = []
    for i in range(scales):
        s, cs = _ssim_maps(x, y, window)
        values.append(s if i == scales - 1 else cs)
        if i < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    # Negative contrast-structure would make fractional powers undefined.
    stacked = torch.stack(values, 1).clamp_min(1e-6)
    return torch.prod(stacked ** weights.to(stacked), dim=1).clamp(0.0, 1.0)


register_labeller("ssim", lambda: ssim)
register_labeller("ms_ssim", lambda: ms_ssim)


def _import_stlpips():
    """Import the optional ``stlpips_pytorch`` package.

    Its modules import ``IPython.embed`` and ``torchsummary.summary`` at import
    time without declaring either dependency, and never call them. When those
    packages are absent, inert stand-ins are present only during the import and
    removed afterwards, so no other code sees them.
    """
    import importlib
    import sys
    import types

    added = []
    for module, attr in (("IPython", "embed"), ("torchsummary", "summary")):
        try:
            importlib.import_module(module)
        except ImportError:
            stand_in = types.ModuleType(module)
            setattr(stand_in, attr, lambda *args, **kwargs: None)
            sys.modules[module] = stand_in
            added.append(module)
    try:
        from stlpips_pytorch import stlpips
    except ImportError as exc:
        raise ImportError(
            "labeller 'stlpips_*' needs the optional package stlpips-pytorch: "
            "pip install --no-deps stlpips-pytorch"
        ) from exc
    finally:
        for module in added:
            sys.modules.pop(module, None)
    return stlpips


def stlpips_weights_path(net: str = "alex") -> str:
    """The shift-tolerant ``alex``/``vgg`` weights file inside the installed ``stlpips-pytorch`` wheel."""
    import os

    stlpips = _import_stlpips()
    return os.path.join(os.path.dirname(stlpips.__file__), "weights", "vST0.0", f"{net}_shift_tolerant.pth")


class STLPIPSLabeller:
    """Quality = 1 - ShiftTolerant-LPIPS distance (Ghildyal & Liu 2022), clamped to [0, 1].

    Weights ship inside the ``stlpips-pytorch`` wheel (BSD-2); they are loaded
    here with ``weights_only=True`` and checked strictly (the package's own
    loader is non-strict and saves the linear heads under different names).
    Costly at large crops: the shift-tolerant trunk runs its first 11x11
    convolution at full resolution (see docs/data.md for timings).
    """

    def __init__(self, net: str = "alex") -> None:
        stlpips = _import_stlpips()
        self.model = stlpips.LPIPS(pretrained=False, net=net, variant="shift_tolerant", verbose=False)
        state = torch.load(stlpips_weights_path(net), map_location="cpu", weights_only=True)
        # The file names the linear heads lin<i>.*; the module also exposes them as lins.<i>.*.
        for key in list(state):
            if key.startswith("lin") and not key.startswith("lins."):
                index, rest = key[3:].split(".", 1)
                state[f"lins.{index}.{rest}"] = state[key]
        self.model.load_state_dict(state, strict=True)
        self.model.eval().requires_grad_(False)

    def __call__(self, images: Tensor, pristine: Tensor) -> Tensor:
        if images.ndim != 4 or pristine.ndim != 4 or images.shape[1:] != pristine.shape[1:]:
            raise ValueError(f"labeller needs (N,3,H,W) images of one size, got {tuple(images.shape)} "
                             f"and {tuple(pristine.shape)}")
        x = images.float()
        self.model.to(x.device)  # follows its inputs (a bank built with device="cuda"); no-op when there
        with torch.no_grad():
            distance = self.model(x, pristine.float().expand_as(x), normalize=True)
        return (1.0 - distance.flatten()).clamp(0.0, 1.0)


register_labeller("stlpips_alex", lambda: STLPIPSLabeller("alex"))
register_labeller("stlpips_vgg", lambda: STLPIPSLabeller("vgg"))
