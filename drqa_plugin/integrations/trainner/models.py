"""traiNNer-redux's SR models with the LQ wired into DR-IQA, and a ``build_model`` that uses them.

traiNNer-redux has no model registry: ``traiNNer.models.build_model`` picks
``SRModel``, ``RealESRGANModel``, ``RealESRGANPairedModel`` or ``AEModel`` from the
options. :func:`build_model` calls that very function with our subclasses standing in
for the first three during the call, so the choice stays traiNNer-redux's own. The
subclasses (:class:`DRIQAModelMixin` over traiNNer's classes) change nothing in the
training step; they

* bind every ``driqaloss`` to the model's ``lq`` (the generator's input batch);
* publish each validation image's LQ for ``calculate_driqa`` (traiNNer-redux drops
  the LQ before its metric loop);
* validate LQ-only sets (``singleimagedataset``/``singlelqdataset``): the metrics that
  need no GT run, the ones that need ``img2`` (PSNR, SSIM, ...) are skipped with one
  warning per set, and a GT left over from training is never mistaken for one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from traiNNer.data.single_image_dataset import SingleImageDataset
from traiNNer.models.realesrgan_model import RealESRGANModel
from traiNNer.models.realesrgan_paired_model import RealESRGANPairedModel
from traiNNer.models.sr_model import SRModel
from traiNNer.utils import get_root_logger, tensor2img
from traiNNer.utils.registry import METRIC_REGISTRY

from drqa_plugin.errors import OptionError
from drqa_plugin.integrations.trainner.losses import DRIQALoss
from drqa_plugin.integrations.trainner.metrics import publish_reference

__all__ = [
    "DRIQAModelMixin",
    "DRIQARealESRGANModel",
    "DRIQARealESRGANPairedModel",
    "DRIQASRModel",
    "build_model",
    "is_lq_only",
    "metric_needs_gt",
]


def metric_needs_gt(metric_opt: Mapping[str, Any]) -> bool:
    """Whether a ``val.metrics`` entry's function needs ``img2`` (from its signature)."""
    fn: Callable[..., Any] = METRIC_REGISTRY.get(str(metric_opt["type"]))
    param = inspect.signature(fn).parameters.get("img2")
    return param is not None and param.default is inspect.Parameter.empty


def is_lq_only(dataset: Any) -> bool:
    """A validation set without GT images (traiNNer's single-image datasets, or no ``dataroot_gt``)."""
    return isinstance(dataset, SingleImageDataset) or getattr(getattr(dataset, "opt", None), "dataroot_gt", 1) is None


class DRIQAModelMixin:
    """LQ-aware DR-IQA loss binding and validation for traiNNer-redux SR models (first in the bases)."""

    #: checked by :func:`build_model` (by attribute: the class may come from a second import)
    drqa_lq_aware = True

    # ----------------------------------------------------------------- training
    def init_training_settings(self) -> None:
        super().init_training_settings()  # type: ignore[misc]  # builds self.losses
        for loss in self.losses.values():  # type: ignore[attr-defined]
            if isinstance(loss, DRIQALoss) or hasattr(loss, "bind_reference"):
                loss.bind_reference(self)

    def feed_data(self, data: Mapping[str, Any]) -> None:
        if not self.is_train and "gt" not in data:  # type: ignore[attr-defined]
            # SRModel keeps self.gt when a batch has none: the last training GT would
            # otherwise pose as this LQ-only image's GT.
            self.gt = None
        super().feed_data(data)  # type: ignore[misc]

    # --------------------------------------------------------------- validation
    def get_current_visuals(self) -> dict[str, Any]:
        visuals = super().get_current_visuals()  # type: ignore[misc]
        if not self.is_train:  # type: ignore[attr-defined]
            # Converted exactly as SRModel converts the output for its metrics.
            publish_reference(tensor2img(visuals["lq"], to_bgr=False), tuple(visuals["result"].shape[-2:]))
        return visuals

    def nondist_validation(self, dataloader: Any, current_iter: int, tb_logger: Any, save_img: bool,
                           multi_val_datasets: bool = False) -> None:
        with self._metrics_for(dataloader.dataset):
            try:
                super().nondist_validation(  # type: ignore[misc]
                    dataloader, current_iter, tb_logger, save_img, multi_val_datasets
                )
            finally:
                publish_reference(None)

    @contextmanager
    def _metrics_for(self, dataset: Any) -> Iterator[None]:
        """Run the metrics this set can feed; ``metric_results`` then holds this set's values.

        SRModel keys ``metric_results`` by the first validated set's metrics; starting
        each set from an empty dict keys it by the metrics that set runs.
        """
        val_opt = self.opt.val  # type: ignore[attr-defined]
        metrics = val_opt.metrics if val_opt is not None else None
        with_metrics = self.with_metrics  # type: ignore[has-type]
        if not with_metrics or not metrics:
            yield
            return
        kept = dict(metrics)
        if is_lq_only(dataset):
            kept = {name: opt for name, opt in metrics.items() if not metric_needs_gt(opt)}
            self._warn_skipped(dataset.opt.name, sorted(set(metrics) - set(kept)))
        self.metric_results: dict[str, Any] = {}
        val_opt.metrics, self.with_metrics = kept, bool(kept)
        try:
            yield
        finally:
            val_opt.metrics, self.with_metrics = metrics, with_metrics

    def _warn_skipped(self, dataset_name: str, skipped: list[str]) -> None:
        warned: set[str] = self.__dict__.setdefault("_drqa_warned_sets", set())
        if skipped and dataset_name not in warned:
            warned.add(dataset_name)
            get_root_logger().warning(
                "Validation set %s has no GT: skipped %s (they need img2); the other metrics ran",
                dataset_name,
                ", ".join(skipped),
            )


class DRIQASRModel(DRIQAModelMixin, SRModel):
    """traiNNer-redux ``SRModel`` (SR and GAN training) + LQ-bound ``driqaloss`` + LQ-aware validation."""


class DRIQARealESRGANModel(DRIQAModelMixin, RealESRGANModel):
    """``RealESRGANModel`` (on-the-fly degradations, CUDA only) + DR-IQA against the synthesised LQ."""


class DRIQARealESRGANPairedModel(DRIQAModelMixin, RealESRGANPairedModel):
    """``RealESRGANPairedModel`` (CUDA only) + DR-IQA against the LQ it trains on."""


_STAND_INS = {
    "SRModel": DRIQASRModel,
    "RealESRGANModel": DRIQARealESRGANModel,
    "RealESRGANPairedModel": DRIQARealESRGANPairedModel,
}


def build_model(opt: Any) -> Any:
    """``traiNNer.models.build_model(opt)`` with the DR-IQA classes standing in for traiNNer's.

    Raises:
        OptionError: the options select a model without DR-IQA support (``AEModel``)
            while ``train.losses`` uses ``driqaloss``.
    """
    import traiNNer.models as host

    originals = {name: getattr(host, name) for name in _STAND_INS if hasattr(host, name)}
    try:
        for name in originals:
            setattr(host, name, _STAND_INS[name])
        model = host.build_model(opt)
    finally:
        for name, cls in originals.items():
            setattr(host, name, cls)
    if not getattr(model, "drqa_lq_aware", False):
        losses = getattr(model, "losses", None) or {}
        if any(isinstance(loss, DRIQALoss) for loss in losses.values()):
            raise OptionError(
                f"traiNNer-redux chose {type(model).__name__}, which has no DR-IQA support; driqaloss needs an SR "
                "model (network_g)"
            )
    return model
