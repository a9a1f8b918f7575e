"""DR-IQA for BasicSR (and projects built on it): loss, metric and models.

Importing this package changes nothing in BasicSR; :func:`register` (idempotent)
adds these names to BasicSR's registries, and the launchers
(``python -m drqa_plugin.integrations.basicsr.train|test``) call it for you:

* ``DRIQALoss`` (LOSS_REGISTRY): ``train.driqa_opt``, called on (output, lq);
* ``calculate_driqa`` (METRIC_REGISTRY): ``val.metrics``, needs the LQ image;
* ``DRIQASRModel``, ``DRIQASRGANModel`` (MODEL_REGISTRY), and ``DRIQARealESRGANModel``
  when Real-ESRGAN is installed; ``DRIQA<Model>`` for HAT-style models on demand.

BasicSR 1.4.2 needs a torchvision shim before its first import; :func:`register`
(and importing :mod:`.models`) installs it.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DRIQALoss": "losses",
    "calculate_driqa": "metrics",
    "DRIQASRModel": "models",
    "DRIQASRGANModel": "models",
    "DRIQARealESRGANModel": "models",
}


def register() -> list[str]:
    """Register the loss, the metric and the models in BasicSR's registries (idempotent).

    Returns the model names available. Raises ImportError naming the install command
    when BasicSR is missing.
    """
    from drqa_plugin.integrations.basicsr._compat import import_basicsr

    import_basicsr()
    from drqa_plugin.integrations.basicsr.losses import register_losses
    from drqa_plugin.integrations.basicsr.metrics import register_metrics
    from drqa_plugin.integrations.basicsr.models import register_models

    register_losses()
    register_metrics()
    return register_models()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["register", *_EXPORTS]
