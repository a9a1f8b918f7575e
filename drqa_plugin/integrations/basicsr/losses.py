"""``DRIQALoss`` in BasicSR's loss registry: ``build_loss({'type': 'DRIQALoss', ...})``.

The registered class is :class:`drqa_plugin.loss.DRIQALoss` itself (it names a
mistyped option key on its own); the DR-IQA models call it as ``loss(output, lq)``.
"""

from __future__ import annotations

from drqa_plugin.loss import DRIQALoss

__all__ = ["DRIQALoss", "register_losses"]


def register_losses() -> None:
    from basicsr.utils.registry import LOSS_REGISTRY

    from drqa_plugin.integrations.basicsr._compat import register

    register(LOSS_REGISTRY, DRIQALoss)
