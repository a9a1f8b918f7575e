"""Adapters for the tools restoration people already train and validate with.

Each adapter is a room of its own and registers only when asked to (an explicit,
idempotent ``register()``; importing an adapter never changes a host's registries):

* :mod:`~drqa_plugin.integrations.basicsr`: BasicSR (and Real-ESRGAN/HAT through it):
  loss, metric, models and launchers that run BasicSR's own pipelines.

Pieces every adapter shares (option checks, the per-process scorer cache) live in
:mod:`~drqa_plugin.integrations.common` and need no host package installed. The
adapters' option templates and READMEs are in the repository's top-level
``integrations/`` folder.
"""
