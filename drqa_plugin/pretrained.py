"""Pretrained configs: what a weights file promises about its inputs and scores (a leaf module).

The config travels inside every weights file we write, so a file alone is
enough to score correctly (timm's pretrained_cfg, for one architecture family).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from drqa_plugin.constants import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS
from drqa_plugin.errors import ConfigError


@dataclass(frozen=True)
class PreprocessConfig:
    """How the ``"ckdn"`` protocol prepares a (restored, reference) pair.

    Shorter side resized to ``resize_shorter`` then centre-cropped to ``crop``;
    the restored image and the reference use their own interpolation, as in the
    official evaluation code (bicubic for restored, nearest for references).
    """

    resize_shorter: int = 329  # floor(288 / 0.875)
    crop: int = 288
    restored_interpolation: str = "bicubic"
    reference_interpolation: str = "nearest"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("restored_interpolation", "reference_interpolation"):
            if getattr(self, name) not in INTERPOLATIONS:
                raise ConfigError(f"{name} must be one of {INTERPOLATIONS}, got {getattr(self, name)!r}")
        if self.crop > self.resize_shorter:
            raise ConfigError(f"crop {self.crop} is larger than resize_shorter {self.resize_shorter}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PreprocessConfig:
        raw = json.loads(text)
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        return cls(**raw)


@dataclass(frozen=True)
class PretrainedConfig:
    """What a weights file of a variant promises about its scores."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    score_range: tuple[float, float] = (0.0, 1.0)
    higher_is_better: bool = True
    license: str = "unspecified"
    provenance: str = "unspecified"
