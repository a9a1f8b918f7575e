"""Named model variants (timm-style): each architecture module registers its variants.

This module holds only the registry; ``drqa_plugin.models`` fills it when it is
imported (``drqa_plugin`` imports it), so looking a variant up never needs the
caller to know which module defines it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from drqa_plugin.constants import DEFAULT_ARCH
from drqa_plugin.pretrained import PretrainedConfig


@dataclass(frozen=True)
class ModelVariant:
    """How to build one named network, and what its (randomly initialised) weights promise."""

    name: str
    build: Callable[[], nn.Module]
    pretrained: PretrainedConfig
    description: str


_VARIANTS: dict[str, ModelVariant] = {}


def register_variant(variant: ModelVariant) -> ModelVariant:
    """Add a variant; registering the same object twice is a no-op, another under a taken name an error."""
    if variant.name in _VARIANTS and _VARIANTS[variant.name] is not variant:
        raise ValueError(f"model variant {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


def get_variant(name: str) -> ModelVariant:
    """The registered variant called ``name``.

    Raises:
        KeyError: naming the known variants.
    """
    try:
        return _VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown model variant {name!r}; known: {sorted(_VARIANTS)}") from None


def list_models() -> list[str]:
    """Names of the registered variants."""
    return sorted(_VARIANTS)


def create_model(name: str = DEFAULT_ARCH) -> nn.Module:
    """A freshly initialised network of a named variant (on CPU, fp32, eval mode)."""
    variant = get_variant(name)
    model = variant.build()
    setattr(model, "pretrained_cfg", variant.pretrained)  # noqa: B010  (nn.Module's typing knows only tensors)
    setattr(model, "arch_name", variant.name)  # noqa: B010  (save_model records it; one class serves variants)
    return model.eval()
