"""DR-IQA as a pyiqa metric: ``pyiqa.create_metric("drqa_ckdn", weights=...)``.

    import pyiqa
    from drqa_plugin.integrations.pyiqa import register

    register()                                                     # adds "drqa_ckdn" to pyiqa
    metric = pyiqa.create_metric("drqa_ckdn", weights="ckdn.safetensors", device="cpu")
    score = metric(restored, degraded)                             # pyiqa's FR call order

:func:`register` adds a metric *name* to pyiqa (its ``DEFAULT_CONFIGS``) and our
network to its arch registry under ``DRQA_CKDN``; pyiqa's own ``ckdn`` is never
touched, and a name pyiqa already has is refused. The metric is FR-mode
(``metric(restored, degraded)``, the degraded input playing pyiqa's reference),
``lower_better=False``, scores in (0, 1). Without autograd it runs our fast scorer
(:class:`drqa_plugin.DRIQA`: folded BatchNorm, fused CPU kernels, chunks); with
``as_loss=True`` (pyiqa turns autograd on) it runs the frozen differentiable network
of :class:`drqa_plugin.loss.DRIQALoss`, so gradients reach ``restored``.

pyiqa 0.1.16 reads plugin entry points (``pyiqa.archs``, ``pyiqa.metrics``, ...) only
on its first registry lookup, after ``create_metric`` has already refused an unknown
metric name, so an entry point cannot make ``create_metric("drqa_ckdn")`` work by
itself: call :func:`register` first.

:class:`DRIQANet` is a plain ``nn.Module`` and needs no pyiqa; the torchmetrics
adapter uses it too.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from drqa_plugin.config import check_keys
from drqa_plugin.errors import ConfigError
from drqa_plugin.loss import DRIQALoss, DRIQALossConfig, WeightsSpec, resolve_network
from drqa_plugin.scorer import DRIQA

__all__ = ["ARCH_NAME", "DEFAULT_NAME", "DRIQANet", "register"]

DEFAULT_NAME = "drqa_ckdn"
ARCH_NAME = "DRQA_CKDN"
NET_KEYS = ("weights", "preprocess", "reference_interpolation", "tile_size", "precision", "chunk_size")


class DRIQANet(nn.Module):
    """``net(restored, degraded) -> scores (N,)`` in (0, 1), on the module's device.

    Without autograd (or when ``restored`` does not require grad) it runs the fast
    scorer; when autograd is on and ``restored`` requires grad, the differentiable
    frozen network (gradients to ``restored`` only). Both use the same protocol
    (``preprocess``, default ``"ckdn"``), so they agree to float rounding.

    The CKDN networks are private (not submodules): they never appear in
    ``parameters()`` or ``state_dict()``, stay frozen and in eval mode whatever a
    parent's ``.train()`` does, and are built lazily for the device the module is
    moved to (``.to(device)`` works; a zero-size buffer tracks the device).

    Args:
        weights: a drqa-plugin ``.safetensors`` file (or registered weights name), a CKDN
            module (copied), or ``"random"`` (tests only; warns). Required.
        preprocess, reference_interpolation, tile_size: the scoring protocol (as
            :class:`drqa_plugin.DRIQA`).
        precision: ``fp32`` (default) or ``bf16``/``fp16`` for the convolutional trunk.
        chunk_size: pairs per forward pass of the fast scorer.
    """

    def __init__(
        self,
        weights: WeightsSpec = None,
        *,
        preprocess: str = "ckdn",
        reference_interpolation: str = "bicubic",
        tile_size: int | None = None,
        precision: str | torch.dtype = "fp32",
        chunk_size: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        check_keys(unknown, NET_KEYS, "DR-IQA metric options", error=ConfigError)
        # Validates every value (a ConfigError names the bad one) before any network is built.
        self.cfg = DRIQALossConfig(
            preprocess=preprocess,  # type: ignore[arg-type]
            reference_interpolation=reference_interpolation,
            tile_size=tile_size,
            precision=precision,  # type: ignore[arg-type]
        )
        self.chunk_size = chunk_size
        if weights is None:
            raise ConfigError(
                "the DR-IQA metric needs weights=: a drqa-plugin .safetensors file (train one, or convert "
                "published CKDN weights with `drqa convert`), or a registered weights name"
            )
        source = copy.deepcopy(weights) if isinstance(weights, nn.Module) else resolve_network(weights)
        # Not a submodule: it is the template the private copies are made from.
        self._source: nn.Module
        object.__setattr__(self, "_source", source.float().eval().requires_grad_(False))
        self._anchor: Tensor
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        self._scorers: dict[str, DRIQA] = {}
        self._differentiable: dict[str, DRIQALoss] = {}

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def scorer(self) -> DRIQA:
        """The fast scorer on the module's device (built on first use)."""
        key = str(self.device)
        if key not in self._scorers:
            self._scorers[key] = DRIQA(
                self._source,
                preprocess=self.cfg.preprocess,
                device=self.device,
                dtype=self.cfg.dtype,
                chunk_size=self.chunk_size,
                tile_size=self.cfg.tile_size,
                reference_interpolation=self.cfg.reference_interpolation,
            )
            # frozen_inference_copy leaves the modules it creates (folded convs) in training
            # mode; none of them depends on the mode, but eval is the truth.
            self._scorers[key].model.eval()
        return self._scorers[key]

    def differentiable(self) -> DRIQALoss:
        """The frozen differentiable network on the module's device (built on first use)."""
        key = str(self.device)
        if key not in self._differentiable:
            self._differentiable[key] = DRIQALoss(
                self._source,
                preprocess=self.cfg.preprocess,
                reference_interpolation=self.cfg.reference_interpolation,
                tile_size=self.cfg.tile_size,
                precision=self.cfg.precision,
            ).to(self.device).eval()
        return self._differentiable[key]

    def forward(self, restored: Any, degraded: Any) -> Tensor:
        if torch.is_grad_enabled() and isinstance(restored, Tensor) and restored.requires_grad:
            return self.differentiable().score(_rgb(restored), _rgb(degraded))
        # A normal tensor (the scorer returns an inference-mode CPU tensor).
        return self.scorer()(restored, degraded).to(self.device).clone()

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles (DDP spawn, deepcopy of a parent) carry the source network only.
        state = self.__dict__.copy()
        state["_scorers"], state["_differentiable"] = {}, {}
        return state

    def extra_repr(self) -> str:
        provenance = getattr(getattr(self._source, "pretrained_cfg", None), "provenance", "?")
        return f"preprocess={self.cfg.preprocess!r}, precision={self.cfg.precision!r}, provenance={provenance!r}"


def _rgb(x: Any) -> Any:
    """A one-channel NCHW tensor expanded to RGB (pyiqa accepts grey images)."""
    if isinstance(x, Tensor) and x.ndim == 4 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    return x


def _is_ours(config: Any) -> bool:
    return isinstance(config, dict) and (config.get("metric_opts") or {}).get("type") == ARCH_NAME


def register(name: str = DEFAULT_NAME, **default_options: Any) -> str:
    """Add the DR-IQA metric to pyiqa under ``name`` (idempotent); returns the name.

    ``default_options`` (``weights=...``, ``preprocess=...``) become the metric's
    defaults, so ``pyiqa.create_metric(name)`` needs no arguments (and pyiqa's own CLI
    can use it); arguments to ``create_metric`` still override them.

    Raises:
        ImportError: pyiqa is not installed.
        ConfigError: pyiqa already has a different metric called ``name`` (its own
            ``ckdn`` included), or an option is unknown.
    """
    check_keys(default_options, NET_KEYS, f"pyiqa metric {name!r} options", error=ConfigError)
    try:
        from pyiqa.default_model_configs import DEFAULT_CONFIGS
        from pyiqa.utils.registry import ARCH_REGISTRY
    except ImportError as exc:
        raise ImportError(
            "the pyiqa adapter needs pyiqa: pip install --no-deps pyiqa==0.1.16 (plus the few packages "
            f"its import needs; see integrations/README.md). Import failed: {exc}"
        ) from exc
    existing = DEFAULT_CONFIGS.get(name)
    if existing is not None and not _is_ours(existing):
        raise ConfigError(f"pyiqa already has a metric named {name!r}; register DR-IQA under another name")
    if ARCH_NAME in ARCH_REGISTRY:
        holder = ARCH_REGISTRY.get(ARCH_NAME)
        if holder is not DRIQANet and getattr(holder, "__qualname__", "") != DRIQANet.__qualname__:
            raise ConfigError(f"pyiqa's arch registry already holds {ARCH_NAME!r} from {holder.__module__}")
    else:
        ARCH_REGISTRY.register(DRIQANet, name=ARCH_NAME)
    DEFAULT_CONFIGS[name] = {
        "metric_opts": {"type": ARCH_NAME, **default_options},
        "metric_mode": "FR",
        "lower_better": False,
        "score_range": "0, 1",
    }
    return name
