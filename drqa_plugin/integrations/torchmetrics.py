"""DR-IQA as a ``torchmetrics.Metric`` (and so as a Lightning validation metric).

    from drqa_plugin.integrations.torchmetrics import DRIQAScore

    self.driqa = DRIQAScore(weights="ckdn.safetensors")      # in LightningModule.__init__
    self.driqa.update(sr, lq)                                # validation_step: preds=restored, target=degraded
    self.log("val/driqa", self.driqa)

``update(preds, target)`` takes the restored images and their degraded inputs
(float in [0, 1] or uint8, NCHW/CHW; an LQ of another size, e.g. 1/4 of the output,
is resized to the output size first, as everywhere in drqa-plugin). ``compute()`` is
the mean score in (0, 1) over everything seen (``reduction="mean"``), or every
score (``reduction="none"``). States are a sum and a count reduced with ``"sum"``
(a list reduced with ``"cat"`` for ``"none"``), so DDP gives the same value as one
process over all the data.

Scores come from the fast scorer of :class:`drqa_plugin.DRIQA` (equal values), or,
inside ``metric(preds, target)`` with ``preds`` requiring grad, from the frozen
differentiable network (``is_differentiable=True``). The CKDN network is not a
parameter: it is never trained, never in a checkpoint, and stays in eval mode
whatever ``.train()`` a parent calls (see :class:`drqa_plugin.integrations.pyiqa.DRIQANet`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from drqa_plugin.errors import ConfigError
from drqa_plugin.integrations.pyiqa import DRIQANet
from drqa_plugin.loss import WeightsSpec

__all__ = ["DRIQAScore"]

REDUCTIONS = ("mean", "none")


class DRIQAScore(Metric):
    """Degraded-reference quality (CKDN) of restored images against their degraded inputs.

    Args:
        weights: a drqa-plugin ``.safetensors`` file (or registered weights name), a CKDN
            module, or ``"random"`` (tests only). Required.
        reduction: ``"mean"`` (a scalar) or ``"none"`` (one score per image).
        preprocess: ``"ckdn"`` (default: the published 288 px protocol), ``"none"``, ``"tiles"``.
        reference_interpolation, tile_size, precision, chunk_size: as :class:`drqa_plugin.DRIQA`.
        metric_kwargs: torchmetrics' own options (``sync_on_compute``, ``dist_sync_fn``, ...).
    """

    is_differentiable = True
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    score_sum: Tensor
    total: Tensor
    scores: list[Tensor]

    def __init__(
        self,
        weights: WeightsSpec = None,
        reduction: str = "mean",
        *,
        preprocess: str = "ckdn",
        reference_interpolation: str = "bicubic",
        tile_size: int | None = None,
        precision: str | torch.dtype = "fp32",
        chunk_size: int | None = None,
        **metric_kwargs: Any,
    ) -> None:
        super().__init__(**metric_kwargs)
        if reduction not in REDUCTIONS:
            raise ConfigError(f"DRIQAScore: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.net = DRIQANet(
            weights,
            preprocess=preprocess,
            reference_interpolation=reference_interpolation,
            tile_size=tile_size,
            precision=precision,
            chunk_size=chunk_size,
        )
        if reduction == "mean":
            self.add_state("score_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
            self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")
        else:
            self.add_state("scores", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Score restored images ``preds`` against their degraded inputs ``target``."""
        scores = self.net(preds, target)
        if self.reduction == "mean":
            self.score_sum = self.score_sum + scores.sum()
            self.total = self.total + scores.numel()
        else:
            self.scores.append(scores)

    def compute(self) -> Tensor:
        if self.reduction == "mean":
            return self.score_sum / self.total
        return dim_zero_cat(self.scores)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: Any = None) -> Any:
        """Plot one value (``compute()`` when ``val`` is None) or a sequence of values; needs matplotlib."""
        return self._plot(val, ax)
