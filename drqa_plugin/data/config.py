"""Dataclass configs of the training data (one per concern).

Every field can be set from YAML or a dotted ``data.x.y=value`` override, through
the package's one config mechanism (:func:`drqa_plugin.config.from_dict`); the
checks below run however a config is built, so a bad value fails at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drqa_plugin.config import from_dict
from drqa_plugin.constants import INTERPOLATIONS
from drqa_plugin.errors import ConfigError

KINDS = ("synthetic", "pipal")
LABELLERS = ("ssim", "ms_ssim", "stlpips_alex", "stlpips_vgg")
# The synthetic pipeline resamples with OpenCV, which also has Lanczos (used to upscale only).
DOWN_INTERPOLATIONS = INTERPOLATIONS
UP_INTERPOLATIONS = tuple(i for i in INTERPOLATIONS if i != "area") + ("lanczos",)
RESTORATION_OPS = ("interp", "unsharp", "denoise", "ringing", "gan_texture", "detail")


def _range(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair [min, max], got {value!r}") from None
    if not (low <= a <= b <= high):
        raise ConfigError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return (a, b)


def _prob(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _choices(name: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    bad = [v for v in items if v not in allowed]
    if not items or bad:
        raise ConfigError(f"{name} must be a non-empty subset of {allowed}, got {value!r}")
    return items


@dataclass
class DegradationConfig:
    """How the degraded reference is made from a pristine crop.

    Order (a common real-world chain): blur -> downscale by ``scale`` -> noise
    -> JPEG -> upscale back to the crop size. The low-resolution intermediate is
    kept so "restorations" can start from it, like a real SR method would.
    """

    scale_range: tuple[float, float] = (1.5, 4.0)
    down_interpolations: tuple[str, ...] = ("area", "bilinear", "bicubic")
    up_interpolation: str = "bicubic"
    blur_prob: float = 0.5
    blur_sigma_range: tuple[float, float] = (0.4, 2.0)
    noise_prob: float = 0.5
    noise_sigma_range: tuple[float, float] = (0.005, 0.05)  # in [0, 1] intensity units
    jpeg_prob: float = 0.5
    jpeg_quality_range: tuple[float, float] = (30, 90)

    def __post_init__(self) -> None:
        self.scale_range = _range("degradation.scale_range", self.scale_range, 1.0, 16.0)
        self.down_interpolations = _choices(
            "degradation.down_interpolations", self.down_interpolations, DOWN_INTERPOLATIONS
        )
        if self.up_interpolation not in UP_INTERPOLATIONS:
            raise ConfigError(
                f"degradation.up_interpolation must be one of {UP_INTERPOLATIONS}, got {self.up_interpolation!r}"
            )
        self.blur_prob = _prob("degradation.blur_prob", self.blur_prob)
        self.noise_prob = _prob("degradation.noise_prob", self.noise_prob)
        self.jpeg_prob = _prob("degradation.jpeg_prob", self.jpeg_prob)
        self.blur_sigma_range = _range("degradation.blur_sigma_range", self.blur_sigma_range, 0.0, 20.0)
        self.noise_sigma_range = _range("degradation.noise_sigma_range", self.noise_sigma_range, 0.0, 1.0)
        self.jpeg_quality_range = _range("degradation.jpeg_quality_range", self.jpeg_quality_range, 1, 100)


@dataclass
class RestorationConfig:
    """Which restoration-like operators make the two "restored" images.

    Each restored image applies 1..``max_ops`` operators drawn from ``ops``
    (without repetition) to the degraded image / its low-resolution version.
    ``detail`` blends a random fraction of the true pristine detail back in,
    standing for a restoration that genuinely recovers content, so labels span
    "worse than the input" to "close to pristine".
    """

    ops: tuple[str, ...] = RESTORATION_OPS
    max_ops: int = 2

    def __post_init__(self) -> None:
        self.ops = _choices("restoration.ops", self.ops, RESTORATION_OPS)
        if not 1 <= int(self.max_ops) <= len(self.ops):
            raise ConfigError(f"restoration.max_ops must be in [1, {len(self.ops)}], got {self.max_ops!r}")
        self.max_ops = int(self.max_ops)


@dataclass
class PIPALLayout:
    """Sub-folders of a PIPAL-style root (``""`` = the root itself).

    The list names the restored images; the degraded reference of ``X.bmp`` is
    ``ref_X.bmp`` and the pristine image of ``A0001_xx_yy.bmp`` is ``A0001.bmp``.
    """

    restored_dir: str = ""
    degraded_dir: str = ""
    pristine_dir: str = ""
    degraded_prefix: str = "ref_"
    drop_pattern: str = "_06_"  # the official code drops these names


@dataclass
class DataConfig:
    """Everything the trainer needs to build its datasets.

    kind="synthetic": ``root`` is a folder of pristine photos (None = the photos
    bundled with scikit-image); samples are generated on the fly.
    kind="pipal": ``root`` + ``list_file`` (+ ``val_list_file``) in the PIPAL
    layout; without ``val_list_file`` the scenes are split by ``val_fraction``.
    """

    kind: str = "synthetic"
    root: str | None = None
    list_file: str | None = None
    val_list_file: str | None = None
    crop: int = 288
    # pipal train split: one of the 8 flips/transposes of the square crop, drawn per sample and
    # applied to all of its images alike (a quality label does not depend on orientation).
    augment: bool = False
    # pipal train split: regress each label minus the mean label of its input (its scene), plus the
    # split's mean. The per-input order, what a loss or a validation metric uses, is unchanged; how
    # hard an input is to restore (content, degradation strength) is no longer a target to fit.
    center_labels: bool = False
    # pipal train split: 0 = one restoration per sample; K >= 2 = each sample is one input with K of its
    # restorations at one shared crop (loader.batch_size counts restorations and must be a multiple of K):
    # what loss.listwise needs to rank the restorations of an input against each other.
    group_size: int = 0
    num_samples: int = 512  # synthetic: samples per epoch in the train split
    val_samples: int = 64  # synthetic: fixed samples in the val split
    val_fraction: float = 0.2  # fraction of photos / scenes held out
    val_photos: tuple[str, ...] = ()  # synthetic: explicit held-out photo stems
    labeller: str = "ms_ssim"
    seed: int = 0
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    restoration: RestorationConfig = field(default_factory=RestorationConfig)
    pipal: PIPALLayout = field(default_factory=PIPALLayout)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"data.kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.labeller, str) or not self.labeller:
            raise ConfigError(f"data.labeller must be a labeller name such as {LABELLERS}, got {self.labeller!r}")
        if int(self.crop) < 16:
            raise ConfigError(f"data.crop must be >= 16, got {self.crop!r}")
        self.crop = int(self.crop)
        for flag in ("augment", "center_labels"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"data.{flag} must be true or false, got {getattr(self, flag)!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 0 \
                or self.group_size == 1:
            raise ConfigError(f"data.group_size must be 0 (off) or an integer >= 2, got {self.group_size!r}")
        if self.group_size and self.kind != "pipal":
            raise ConfigError("data.group_size needs data.kind='pipal' (a list that names several restorations "
                              "of each input)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"data.seed must be a non-negative integer, got {self.seed!r}")
        if int(self.num_samples) < 1 or int(self.val_samples) < 1:
            raise ConfigError("data.num_samples and data.val_samples must be >= 1")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        self.val_photos = (self.val_photos,) if isinstance(self.val_photos, str) else tuple(self.val_photos)
        for name, cls in (("degradation", DegradationConfig), ("restoration", RestorationConfig),
                          ("pipal", PIPALLayout)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, from_dict(cls, value, f"data.{name}."))
        if self.kind == "pipal" and (self.root is None or self.list_file is None):
            raise ConfigError("data.kind='pipal' needs data.root and data.list_file")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DataConfig:
        return from_dict(cls, raw, "data.")
