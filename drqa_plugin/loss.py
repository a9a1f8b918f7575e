"""``DRIQALoss``: degraded-reference quality as a training loss for restoration networks.

``loss = loss_weight * (1 - score(restored, degraded))``, where ``score`` is a frozen
CKDN network's degraded-reference quality in (0, 1). The degraded image is the
network's own input (the LQ image); when it is smaller (super-resolution) it is
resized to the output size first, so the loss needs no ground truth.

Gradients flow to ``restored`` only: the network's parameters are frozen, it stays
in eval mode for good (``.train()`` on a parent module does not switch on its
dropout), and the reference branch runs without autograd.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from drqa_plugin.config import check_keys
from drqa_plugin.constants import (
    DEFAULT_ARCH,
    INTERPOLATIONS,
    PREPROCESS_MODES,
    precision_name,
    resolve_dtype,
)
from drqa_plugin.errors import ConfigError, ImageInputError
from drqa_plugin.models.ckdn import frozen_inference_copy
from drqa_plugin.preprocess import (
    match_reference_size,
    normalize,
    prepare_pair,
    tile_pairs,
)
from drqa_plugin.pretrained import PretrainedConfig
from drqa_plugin.registry import create_model, get_variant
from drqa_plugin.weights import load_model

WeightsSpec = Union[str, os.PathLike, nn.Module, None]
RANDOM_WEIGHTS = "random"
#: What ``DRIQALoss()`` and ``DRIQA()`` score with when no weights are named (fetched once, then cached).
DEFAULT_WEIGHTS = "ckdn_pipal"
REDUCTIONS = ("mean", "sum", "none")
# Values outside this are not a [0, 1] image with some overshoot (a freshly initialised GAN generator
# reaches about [-1.05, 1.45]); 0-255 images are far outside. NaN is refused too.
RANGE_LIMIT = (-1.5, 2.0)


@dataclass(frozen=True)
class DRIQALossConfig:
    """Options of :class:`DRIQALoss` (also the keys accepted in BasicSR's ``driqa_opt``).

    ``preprocess``: ``"none"`` scores the whole patch as it is (the default: training
    patches are small and any size works); ``"ckdn"`` resizes and centre-crops to the
    published 288 px protocol; ``"tiles"`` averages over ``tile_size`` tiles.
    ``precision`` ``"bf16"``/``"fp16"`` (or ``"bfloat16"``, a torch dtype, ...) runs the
    convolutional trunk in that dtype (weights cast once; stored under its canonical
    name); ``channels_last`` uses the NHWC memory format.
    """

    loss_weight: float = 1.0
    reduction: Literal["mean", "sum", "none"] = "mean"
    preprocess: Literal["none", "ckdn", "tiles"] = "none"
    reference_interpolation: str = "bicubic"
    tile_size: int | None = None
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.preprocess not in PREPROCESS_MODES:
            raise ConfigError(f"preprocess must be one of {PREPROCESS_MODES}, got {self.preprocess!r}")
        if self.reference_interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"reference_interpolation must be one of {INTERPOLATIONS}, got {self.reference_interpolation!r}"
            )
        object.__setattr__(self, "precision", precision_name(resolve_dtype(self.precision)))
        if self.tile_size is not None and self.tile_size < 8:
            raise ConfigError(f"tile_size must be >= 8, got {self.tile_size}")

    @property
    def dtype(self) -> torch.dtype:
        return resolve_dtype(self.precision)


def config_keys() -> tuple[str, ...]:
    """Every option name :class:`DRIQALoss` accepts (``weights`` plus the config fields)."""
    return ("weights",) + tuple(f.name for f in fields(DRIQALossConfig))


def resolve_network(weights: WeightsSpec) -> nn.Module:
    """The CKDN network behind a ``weights`` option (a name, a file, a module, or ``"random"``)."""
    if weights is None:
        raise ConfigError(
            "DRIQALoss needs weights: a weights name such as 'ckdn_pipal' (the default) or a drqa-plugin "
            ".safetensors file. A randomly initialised network scores noise and is useless as a loss; pass "
            "weights='random' explicitly only for tests and demos."
        )
    if isinstance(weights, nn.Module):
        return weights
    if isinstance(weights, str) and weights == RANDOM_WEIGHTS:
        warnings.warn(
            "DRIQALoss(weights='random'): the network is randomly initialised, so the loss carries no "
            "information about image quality; use this only for tests and demos",
            stacklevel=3,
        )
        return create_model(DEFAULT_ARCH)
    if isinstance(weights, (str, os.PathLike)):
        return load_model(weights)
    raise TypeError(f"weights must be a file path, an nn.Module or 'random'; got {type(weights).__name__}")


class DRIQALoss(nn.Module):
    """Degraded-reference IQA loss: ``loss_weight * (1 - score(restored, degraded))``.

    Args:
        weights: a weights name (default ``"ckdn_pipal"``, the authors' published model, fetched
            once), the path of a drqa-plugin ``.safetensors`` file, a CKDN module (copied), or
            ``"random"`` (tests/demos only; warns).
        loss_weight, reduction, preprocess, reference_interpolation, tile_size,
        precision, channels_last: see :class:`DRIQALossConfig`.

    Call: ``loss(restored, degraded)`` with float RGB NCHW tensors in [0, 1] (the
    restored image may over- or undershoot; it is not clamped, so gradients survive).
    ``degraded`` may be smaller (SR input): it is resized to ``restored``'s size.
    """

    def __init__(
        self,
        weights: WeightsSpec = DEFAULT_WEIGHTS,
        loss_weight: float = 1.0,
        reduction: str = "mean",
        preprocess: str = "none",
        reference_interpolation: str = "bicubic",
        tile_size: int | None = None,
        precision: str | torch.dtype = "fp32",
        channels_last: bool = False,
        **unknown: Any,
    ) -> None:
        super().__init__()
        # Hosts build losses from option files (BasicSR's build_loss, traiNNer-redux's): a typo
        # must name the key and its likely meaning, not end in a bare TypeError.
        check_keys(unknown, config_keys(), "DRIQALoss options (train.driqa_opt / train.losses)")
        self.cfg = DRIQALossConfig(
            loss_weight=float(loss_weight),
            reduction=reduction,  # type: ignore[arg-type]
            preprocess=preprocess,  # type: ignore[arg-type]
            reference_interpolation=reference_interpolation,
            tile_size=tile_size,
            precision=precision_name(resolve_dtype(precision)),
            channels_last=channels_last,
        )
        source = resolve_network(weights)
        self.pretrained_cfg: PretrainedConfig = getattr(source, "pretrained_cfg", None) or get_variant(
            DEFAULT_ARCH
        ).pretrained
        self.net = frozen_inference_copy(source, dtype=self.cfg.dtype, channels_last=self.cfg.channels_last)


    @property
    def loss_weight(self) -> float:
        return self.cfg.loss_weight

    def train(self, mode: bool = True) -> DRIQALoss:
        # Training code calls .train() on everything it owns; the scoring network must
        # keep its dropout off regardless.
        super().train(mode)
        self.net.eval()
        return self

    def score(self, restored: Tensor, degraded: Tensor) -> Tensor:
        """Differentiable quality scores (N,) in (0, 1), float32; gradients reach ``restored`` only."""
        restored, degraded = self._check_inputs(restored, degraded)
        x, y, tiles = self._prepare(restored, degraded.detach())
        dtype = self.cfg.dtype
        memory_format = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        x = x.to(dtype).contiguous(memory_format=memory_format)
        with torch.no_grad():
            y = y.to(dtype).contiguous(memory_format=memory_format)
            reference, context = self.net.reference_encoder(y), self.net.input_context(y)
        # The detail branch reads the restored pixels, so it runs with gradients like the restored encoder.
        detail = self.net.detail_features(x, y)
        scores = self.net.compare(self.net.restored_encoder(x), reference, context, detail).float()
        return scores.view(restored.shape[0], tiles).mean(1)

    def forward(self, restored: Tensor, degraded: Tensor | None = None) -> Tensor:
        if degraded is None:
            raise ImageInputError(
                "DRIQALoss needs the degraded input as its second argument: loss(restored, degraded) "
                "(in BasicSR: use model_type DRIQASRModel/DRIQASRGANModel with train.driqa_opt, which pass the LQ)"
            )
        penalty = 1.0 - self.score(restored, degraded)
        if self.cfg.reduction == "mean":
            penalty = penalty.mean()
        elif self.cfg.reduction == "sum":
            penalty = penalty.sum()
        return self.cfg.loss_weight * penalty

    def _prepare(self, restored: Tensor, degraded: Tensor) -> tuple[Tensor, Tensor, int]:
        preprocess_cfg = self.pretrained_cfg.preprocess
        if self.cfg.preprocess == "none":
            # Not prepare_pair: a loss must work on patches of any size.
            size = (restored.shape[-2], restored.shape[-1])
            degraded = match_reference_size(degraded, size, self.cfg.reference_interpolation)
            return normalize(restored, preprocess_cfg), normalize(degraded, preprocess_cfg), 1
        x, y = prepare_pair(restored, degraded, self.cfg.preprocess, preprocess_cfg, self.cfg.reference_interpolation)
        if self.cfg.preprocess == "tiles":
            return tile_pairs(x, y, self.cfg.tile_size or preprocess_cfg.crop)
        return x, y, 1

    @staticmethod
    def _check_inputs(restored: Tensor, degraded: Tensor) -> tuple[Tensor, Tensor]:
        for name, t in (("restored", restored), ("degraded", degraded)):
            if not isinstance(t, Tensor):
                raise ImageInputError(f"DRIQALoss: {name} must be a tensor, got {type(t).__name__}")
            if t.ndim != 4 or t.shape[1] != 3:
                raise ImageInputError(f"DRIQALoss: {name} must be RGB NCHW (N, 3, H, W); got {tuple(t.shape)}")
            if not t.is_floating_point():
                raise ImageInputError(f"DRIQALoss: {name} must be a float tensor in [0, 1]; got {t.dtype}")
            # A generator may over- or undershoot [0, 1] a little; 0-255 values are a caller bug
            # that would otherwise give a saturated score and a silent zero loss.
            lo, hi = t.detach().aminmax()
            if bool(torch.isnan(lo) | torch.isnan(hi)) or hi > RANGE_LIMIT[1] or lo < RANGE_LIMIT[0]:
                raise ImageInputError(
                    f"DRIQALoss: {name} must hold values in [0, 1]; got range [{float(lo):.3g}, {float(hi):.3g}]"
                    + (" (0-255 values? divide by 255)" if hi > 2 else "")
                )
        if restored.shape[0] != degraded.shape[0]:
            raise ImageInputError(f"DRIQALoss: {restored.shape[0]} restored vs {degraded.shape[0]} degraded images")
        return restored.float(), degraded.float()

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"loss_weight={c.loss_weight}, reduction={c.reduction!r}, preprocess={c.preprocess!r}, "
            f"precision={c.precision!r}, channels_last={c.channels_last}, provenance={self.pretrained_cfg.provenance!r}"
        )
