"""Adapters for the tools restoration people already train and validate with.

Each adapter is a room of its own and registers only when asked to (an explicit,
idempotent ``register()``; importing an adapter never changes a host's registries):

* :mod:`~drqa_plugin.integrations.basicsr`: BasicSR (and Real-ESRGAN/HAT through it):
  loss, metric, models and launchers that run BasicSR's own pipelines.
* :mod:`~drqa_plugin.integrations.trainner`: traiNNer-redux (a clone, not on PyPI):
  ``driqaloss``, ``calculate_driqa``, LQ-aware models and a launcher for its ``train.py``.
* :mod:`~drqa_plugin.integrations.torchmetrics`: ``DRIQAScore``, a torchmetrics ``Metric``
  (Lightning's ``self.log("val/driqa", metric)``).
* :mod:`~drqa_plugin.integrations.pyiqa`: ``register()`` adds ``"drqa_ckdn"`` to
  ``pyiqa.create_metric`` (pyiqa's own ``ckdn`` untouched).

Pieces every adapter shares (option checks, the per-process scorer cache) live in
:mod:`~drqa_plugin.integrations.common` and need no host package installed. The
adapters' option templates and READMEs are in the repository's top-level
``integrations/`` folder.
"""
