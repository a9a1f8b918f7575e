"""DR-IQA for traiNNer-redux: loss, metric, LQ-aware models and a launcher.

traiNNer-redux is not on PyPI; name your clone with ``--trainner PATH`` or
``$TRAINNER_REDUX_DIR`` (or install it with ``pip install -e``). Importing this
package changes nothing; :func:`register` (idempotent) imports traiNNer-redux and
adds to its registries, and the launcher
(``python -m drqa_plugin.integrations.trainner.train``) calls it for you:

* ``driqaloss`` (LOSS_REGISTRY, any case): an entry of ``train.losses``; traiNNer
  applies ``loss_weight`` to the unweighted ``1 - score(output, lq)``;
* ``calculate_driqa`` (METRIC_REGISTRY): ``val.metrics``, scored against the LQ;
* :func:`.models.build_model`: traiNNer's own model choice with ``DRIQASRModel``,
  ``DRIQARealESRGANModel``, ``DRIQARealESRGANPairedModel`` standing in, which feed
  the LQ to the loss and the metric and validate LQ-only sets.
"""

from __future__ import annotations

import os
from typing import Any

_EXPORTS = {
    "DRIQALoss": "losses",
    "calculate_driqa": "metrics",
    "build_model": "models",
    "DRIQASRModel": "models",
    "DRIQARealESRGANModel": "models",
    "DRIQARealESRGANPairedModel": "models",
}


def register(trainner_dir: str | os.PathLike | None = None) -> None:
    """Import traiNNer-redux and register ``driqaloss`` and ``calculate_driqa`` (idempotent).

    Raises:
        MissingFileError: no traiNNer-redux checkout is named or importable.
        ImportError: one of traiNNer-redux's dependencies is missing (named).
    """
    from drqa_plugin.integrations.trainner._host import import_trainner

    import_trainner(trainner_dir)
    from drqa_plugin.integrations.trainner.losses import register_losses
    from drqa_plugin.integrations.trainner.metrics import register_metrics

    register_losses()
    register_metrics()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["register", *_EXPORTS]
