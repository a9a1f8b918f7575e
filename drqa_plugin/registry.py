"""Named model variants and their pretrained configs (timm-style).

A variant says how to build the network and how its inputs must be prepared;
the config travels inside every weights file we write, so a file alone is
enough to score correctly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from drqa_plugin.models.ckdn import CKDN, CKDNConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
# Names of the compute precisions accepted by the CLI, the loss and the BasicSR options.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
                raise ValueError(f"{name} must be one of {INTERPOLATIONS}, got {getattr(self, name)!r}")
        if self.crop > self.resize_shorter:
            raise ValueError(f"crop {self.crop} is larger than resize_shorter {self.resize_shorter}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "PreprocessConfig":
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


@dataclass(frozen=True)
class ModelVariant:
    name: str
    build: Callable[[], nn.Module]
    pretrained: PretrainedConfig
    description: str


_VARIANTS: dict[str, ModelVariant] = {}


def register_variant(variant: ModelVariant) -> ModelVariant:
    if variant.name in _VARIANTS and _VARIANTS[variant.name] is not variant:
        raise ValueError(f"model variant {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


def get_variant(name: str) -> ModelVariant:
    try:
        return _VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown model variant {name!r}; known: {sorted(_VARIANTS)}") from None


def list_models() -> list[str]:
    return sorted(_VARIANTS)


def create_model(name: str = "ckdn_r50") -> nn.Module:
    """A freshly initialised network of a named variant (on CPU, fp32, eval mode)."""
    model = get_variant(name).build()
    model.pretrained_cfg = get_variant(name).pretrained
    return model.eval()


register_variant(
    ModelVariant(
        name="ckdn_r50",
        build=lambda: CKDN(CKDNConfig()),
        pretrained=PretrainedConfig(
            license="MIT (architecture: researchmm/CKDN); weights: as stated by their source",
            provenance="randomly initialised",
        ),
        description="CKDN (Zheng et al., ICCV 2021): ResNet-50 encoders + layer2 comparator, 288 px",
    )
)
