"""``driqaloss``: the DR-IQA term as traiNNer-redux's ``SRModel`` sees a loss.

traiNNer-redux builds every entry of ``train.losses`` by its ``type`` and calls it as
``loss(output, gt)``, multiplying the returned value by ``abs(loss.loss_weight)``
itself. So this loss returns the *unweighted* term ``1 - score`` (reduced over the
batch) and keeps ``loss_weight`` as an attribute.

DR-IQA compares the output with the network's own input, not with the GT: the
DR-IQA models (:mod:`.models`) bind each ``driqaloss`` to their ``lq`` tensor, and
the loss reads it at call time, i.e. the LQ batch the generator just received
(after traiNNer's batch augmentations and ECO mix-up, if enabled). The ``gt``
argument is ignored. An unbound loss refuses to run rather than compare with the GT.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from drqa_plugin.errors import ConfigError, ImageInputError
from drqa_plugin.loss import DRIQALoss as _BaseDRIQALoss
from drqa_plugin.loss import WeightsSpec

__all__ = ["DRIQALoss", "register_losses"]


class DRIQALoss(_BaseDRIQALoss):
    """DR-IQA loss for traiNNer-redux: ``forward(output, gt)`` returns ``1 - score(output, lq)``.

    Options are those of :class:`drqa_plugin.loss.DRIQALoss` (``weights`` required,
    ``loss_weight``, ``reduction`` ``mean``/``sum``, ``preprocess``, ``precision``, ...).
    traiNNer-redux applies ``loss_weight``; a negative weight is refused (traiNNer-redux
    reads it as "compare with the upscaled LQ", which this loss always does, properly).
    The term runs in its own ``precision`` even inside traiNNer-redux's AMP autocast.
    """

    def __init__(self, weights: WeightsSpec = None, loss_weight: float = 1.0, **options: Any) -> None:
        if float(loss_weight) < 0:
            raise ConfigError(
                f"driqaloss: loss_weight must be >= 0, got {loss_weight} (DR-IQA always compares the output "
                "with the LQ input; traiNNer-redux's negative-weight convention is not needed)"
            )
        super().__init__(weights, loss_weight=loss_weight, **options)
        if self.cfg.reduction == "none":
            raise ConfigError("driqaloss: reduction must be 'mean' or 'sum' (traiNNer-redux adds scalar losses)")
        self._model: weakref.ReferenceType | None = None

    def bind_reference(self, model: Any) -> None:
        """Read the degraded reference from ``model.lq`` at every call (a weak reference)."""
        self._model = weakref.ref(model)

    @property
    def is_bound(self) -> bool:
        return self._model is not None and self._model() is not None

    def reference(self) -> Tensor:
        """The LQ batch of the bound model."""
        model = self._model() if self._model is not None else None
        if model is None:
            raise ImageInputError(
                "driqaloss is not bound to a model's LQ input: traiNNer-redux passes the GT to losses, and DR-IQA "
                "compares with the LQ. Train with `python -m drqa_plugin.integrations.trainner.train`, or call "
                "loss.bind_reference(model) in your own script"
            )
        lq = getattr(model, "lq", None)
        if lq is None:
            raise ImageInputError("driqaloss: the bound model has no LQ batch (feed_data was not called)")
        return lq

    def forward(self, output: Tensor, target: Tensor | None = None) -> Tensor:  # type: ignore[override]
        del target  # the GT: DR-IQA does not use it
        lq = self.reference()
        if lq.shape[0] != output.shape[0]:
            raise ImageInputError(
                f"driqaloss: {output.shape[0]} outputs but the model's LQ batch has {lq.shape[0]} images"
            )
        # Our own precision, not the host's autocast (``precision: bf16`` is the fast setting).
        with torch.autocast(device_type=output.device.type, enabled=False):
            penalty = 1.0 - self.score(output, lq)
        return penalty.mean() if self.cfg.reduction == "mean" else penalty.sum()


def register_losses() -> None:
    from traiNNer.utils.registry import LOSS_REGISTRY

    from drqa_plugin.integrations.trainner._host import register_in

    register_in(LOSS_REGISTRY, DRIQALoss)
