"""Names and constants shared across the package (a leaf module: it imports nothing of ours but errors)."""

from __future__ import annotations

import torch

from drqa_plugin.errors import ConfigError

#: The architecture a weights file without another ``arch`` is built as.
DEFAULT_ARCH = "ckdn_r50"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Resampling filters of the scorer and the loss (torch ``interpolate`` modes, PIL-like).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")

#: How a (restored, reference) pair is prepared before the network sees it.
PREPROCESS_MODES = ("ckdn", "none", "tiles")

#: File suffixes treated as images when a folder is scanned (scoring, validation and training data).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Every spelling of a compute precision accepted by the scorer, the loss, the CLI and
# the integrations' options; the first name of each dtype is the canonical one.
_DTYPE_SPELLINGS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
#: Canonical precision names (what the CLI offers and files record).
PRECISION_NAMES = ("fp32", "bf16", "fp16")


def resolve_dtype(precision: str | torch.dtype | None) -> torch.dtype:
    """A compute dtype from a name (``"bf16"``, ``"bfloat16"``, ``"fp32"``, ...) or a torch dtype.

    ``None`` means fp32.

    Raises:
        ConfigError: for an unknown name or a dtype that is not a float precision we run in.
    """
    if precision is None:
        return torch.float32
    if isinstance(precision, torch.dtype):
        if precision not in _DTYPE_SPELLINGS.values():
            raise ConfigError(f"precision {precision} is not supported; use one of {PRECISION_NAMES}")
        return precision
    if isinstance(precision, str) and precision.strip().lower() in _DTYPE_SPELLINGS:
        return _DTYPE_SPELLINGS[precision.strip().lower()]
    raise ConfigError(
        f"unknown precision {precision!r}; use one of {', '.join(_DTYPE_SPELLINGS)} or a torch dtype"
    )


def precision_name(dtype: torch.dtype) -> str:
    """The canonical name (``"fp32"``, ``"bf16"``, ``"fp16"``) of a compute dtype."""
    for name in PRECISION_NAMES:
        if _DTYPE_SPELLINGS[name] == dtype:
            return name
    raise ConfigError(f"precision {dtype} is not supported; use one of {PRECISION_NAMES}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch device from ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (CUDA when present) or a device.

    Raises:
        ConfigError: for an unparsable name, or a CUDA device on a machine without one.
    """
    if device is None or device == "auto":
        return torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for, but this machine has no usable CUDA GPU; use cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return resolved
