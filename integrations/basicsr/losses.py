"""``DRIQALoss`` as BasicSR builds it: ``build_loss({'type': 'DRIQALoss', ...})``."""

from __future__ import annotations

from typing import Any

from drqa_plugin.integrations.basicsr.options_check import check_keys
from drqa_plugin.loss import DRIQALoss as _PlainDRIQALoss
from drqa_plugin.loss import config_keys

LOSS_WHERE = "train.driqa_opt (DRIQALoss)"


class DRIQALoss(_PlainDRIQALoss):
    """:class:`drqa_plugin.loss.DRIQALoss` with option-file errors that name the bad key.

    Called ``loss(output, lq)`` by the DR-IQA models; see the plain class for the options.
    """

    def __init__(self, **options: Any) -> None:
        check_keys(options, config_keys(), LOSS_WHERE)
        super().__init__(**options)


def register_losses() -> None:
    from basicsr.utils.registry import LOSS_REGISTRY

    from drqa_plugin.integrations.basicsr._compat import register

    register(LOSS_REGISTRY, DRIQALoss)
