"""DR-IQA for BasicSR (and projects built on it): loss, metric and models, registered on import.

``import drqa_plugin.integrations.basicsr`` (before ``basicsr.train.train_pipeline``)
makes these names available to BasicSR option files:

* ``DRIQALoss`` (LOSS_REGISTRY): ``train.driqa_opt``, called on (output, lq);
* ``calculate_driqa`` (METRIC_REGISTRY): ``val.metrics``, needs the LQ image;
* ``DRIQASRModel``, ``DRIQASRGANModel`` (MODEL_REGISTRY), and ``DRIQARealESRGANModel``
  when Real-ESRGAN is installed.

Importing twice (or under two package paths) is fine. The torchvision shim that
BasicSR 1.4.2 needs is installed here, before BasicSR is imported.
"""

from __future__ import annotations

from drqa_plugin.integrations.basicsr._compat import import_basicsr, install_torchvision_shim

import_basicsr()

from drqa_plugin.integrations.basicsr.losses import DRIQALoss, register_losses  # noqa: E402
from drqa_plugin.integrations.basicsr.metrics import calculate_driqa, register_metrics  # noqa: E402
from drqa_plugin.integrations.basicsr.models import (  # noqa: E402
    DRIQARealESRGANModel,
    DRIQASRGANModel,
    DRIQASRModel,
    register_models,
)


def register_all() -> list[str]:
    """Register every component (idempotent); returns the model names available."""
    register_losses()
    register_metrics()
    return register_models()


register_all()

__all__ = [
    "DRIQALoss",
    "DRIQARealESRGANModel",
    "DRIQASRGANModel",
    "DRIQASRModel",
    "calculate_driqa",
    "install_torchvision_shim",
    "register_all",
]
