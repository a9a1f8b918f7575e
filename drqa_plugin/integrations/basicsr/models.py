"""BasicSR models that train with DR-IQA and give the LQ image to validation metrics.

``DRIQASRModel`` and ``DRIQASRGANModel`` are BasicSR's ``SRModel``/``SRGANModel``
plus :class:`DRIQAModelMixin`, which

* builds ``train.driqa_opt`` (default type ``DRIQALoss``) and adds
  ``loss(output, lq)`` to the generator loss, logged as ``l_driqa``; DR-IQA may be
  the only loss (then a GT is not even needed for SRModel training);
* validates with the LQ image passed to every metric that takes it, and on sets
  without GT (``SingleImageDataset``) runs the metrics that need no GT and skips,
  with one warning per set, those that need ``img2``.

:func:`make_driqa_model` builds the same for a project's own model class
(``DRIQAHATModel`` from HAT's ``HATModel``, for example).

Distributed validation keeps BasicSR's behaviour (``dist_validation`` runs this
validation on rank 0).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Mapping
from os import path as osp
from typing import Any

import torch

from drqa_plugin.integrations.basicsr._compat import import_basicsr, register

import_basicsr()  # BasicSR 1.4.2 cannot be imported on current torchvision without its shim

from basicsr.losses import build_loss  # noqa: E402
from basicsr.metrics import calculate_metric  # noqa: E402
from basicsr.models.sr_model import SRModel  # noqa: E402
from basicsr.models.srgan_model import SRGANModel  # noqa: E402
from basicsr.utils import get_root_logger, imwrite, tensor2img  # noqa: E402
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY  # noqa: E402
from torch import Tensor  # noqa: E402
from tqdm import tqdm  # noqa: E402

from drqa_plugin.errors import OptionError  # noqa: E402


class MissingInputError(KeyError):
    """A batch lacks an image the DR-IQA model needs."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


def metric_needs(fn: Callable[..., Any]) -> tuple[bool, bool]:
    """(needs GT ``img2``, accepts ``lq``) from a metric function's signature."""
    params = inspect.signature(fn).parameters
    needs_gt = "img2" in params and params["img2"].default is inspect.Parameter.empty
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return needs_gt, "lq" in params or takes_var_kw


class DRIQAModelMixin:
    """DR-IQA training term and LQ-aware, GT-optional validation for BasicSR SR models.

    Put it first in the bases: ``class M(DRIQAModelMixin, SRModel)``.
    """

    cri_driqa: torch.nn.Module | None = None
    #: checked by the launcher (by attribute: the class may have been imported twice)
    passes_lq_to_metrics = True
    #: whether feed_data must find 'lq' in training batches (Real-ESRGAN makes its own)
    lq_from_batch_in_training = True

    # ----------------------------------------------------------------- training
    def init_training_settings(self) -> None:
        driqa_opt = self.opt["train"].get("driqa_opt")
        self.cri_driqa = build_loss({"type": "DRIQALoss", **driqa_opt}).to(self.device) if driqa_opt else None
        try:
            super().init_training_settings()
        except ValueError as exc:
            # SRModel insists on a pixel or perceptual loss; DR-IQA alone is a valid
            # choice, so finish the set-up it skipped (it raises right before it).
            if "pixel and perceptual losses are None" not in str(exc):
                raise
            if self.cri_driqa is None:
                raise OptionError(
                    "no generator loss: set at least one of train.pixel_opt, train.perceptual_opt, train.driqa_opt"
                ) from exc
            self.setup_optimizers()
            self.setup_schedulers()

    def feed_data(self, data: Mapping[str, Any]) -> None:
        if "lq" not in data and (self.lq_from_batch_in_training or not self.is_train):
            raise MissingInputError(
                f"batch has no 'lq' image (keys: {sorted(data)}); the DR-IQA models score the output "
                "against the LQ input: use a dataset that returns 'lq' (PairedImageDataset, SingleImageDataset)"
            )
        for stale in ("gt", "gt_usm"):
            # A GT left over from the previous batch must not be mistaken for this one's.
            if "gt" not in data and hasattr(self, stale):
                delattr(self, stale)
        super().feed_data(data)

    def _require(self, name: str, purpose: str) -> Tensor:
        value = getattr(self, name, None)
        if value is None:
            raise MissingInputError(f"{purpose} needs '{name}' in every training batch, but this batch has none")
        return value

    def _generator_losses(
        self, prefix: str, pixel_target: str = "gt", perceptual_target: str = "gt"
    ) -> tuple[Tensor, OrderedDict[str, Tensor]]:
        """Pixel, perceptual and DR-IQA terms on ``self.output`` (keys as BasicSR names them)."""
        total = self.output.new_zeros(())
        losses: OrderedDict[str, Tensor] = OrderedDict()
        if self.cri_pix:
            target = self._require(pixel_target, "train.pixel_opt")
            losses[f"{prefix}pix"] = self.cri_pix(self.output, target)
        if self.cri_perceptual:
            target = self._require(perceptual_target, "train.perceptual_opt")
            percep, style = self.cri_perceptual(self.output, target)
            if percep is not None:
                losses[f"{prefix}percep"] = percep
            if style is not None:
                losses[f"{prefix}style"] = style
        if self.cri_driqa is not None:
            losses["l_driqa"] = self.cri_driqa(self.output, self._require("lq", "train.driqa_opt"))
        for value in losses.values():
            total = total + value
        return total, losses

    # --------------------------------------------------------------- validation
    def nondist_validation(self, dataloader: Any, current_iter: Any, tb_logger: Any, save_img: bool) -> None:
        dataset_name = dataloader.dataset.opt["name"]
        metric_opts: dict[str, dict] = dict(self.opt["val"].get("metrics") or {})
        if metric_opts:
            self._initialize_best_metric_results(dataset_name)
        sums = {name: 0.0 for name in metric_opts}
        counts = {name: 0 for name in metric_opts}
        skipped: set[str] = set()
        pbar = tqdm(total=len(dataloader), unit="image") if self.opt["val"].get("pbar", False) else None
        for val_data in dataloader:
            img_name = osp.splitext(osp.basename(val_data["lq_path"][0]))[0]
            metric_data = self._restore_for_validation(val_data)
            if save_img:
                imwrite(metric_data["img"], self._visualization_path(dataset_name, img_name, current_iter))
            for name, opt_ in metric_opts.items():
                value = self._run_metric(opt_, metric_data)
                if value is None:
                    skipped.add(name)
                    continue
                sums[name] += value
                counts[name] += 1
            if pbar is not None:
                pbar.update(1)
                pbar.set_description(f"Test {img_name}")
        if pbar is not None:
            pbar.close()
        self._warn_skipped(dataset_name, skipped)
        if metric_opts:
            self.metric_results = {name: sums[name] / counts[name] for name in metric_opts if counts[name]}
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    def _restore_for_validation(self, val_data: Mapping[str, Any]) -> dict[str, Any]:
        self.feed_data(val_data)
        self._validation_inference()
        visuals = self.get_current_visuals()
        data = {"img": tensor2img([visuals["result"]]), "lq": tensor2img([visuals["lq"]])}
        if "gt" in visuals:
            data["img2"] = tensor2img([visuals["gt"]])
        for name in ("lq", "output", "gt", "gt_usm"):
            if hasattr(self, name):
                delattr(self, name)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return data

    def _validation_inference(self) -> None:
        """``self.output`` for ``self.lq``: BasicSR's ``test()``, or the pre_process /
        process (tile_process) / post_process hooks of models that validate through
        them instead (HAT pads to its window size there)."""
        if all(callable(getattr(self, hook, None)) for hook in ("pre_process", "process", "post_process")):
            self.pre_process()
            if "tile" in self.opt and callable(getattr(self, "tile_process", None)):
                self.tile_process()
            else:
                self.process()
            self.post_process()
            if self.is_train:
                self.net_g.train()  # those hooks leave net_g in eval mode; training goes on
        else:
            self.test()

    @staticmethod
    def _run_metric(opt_: Mapping[str, Any], data: Mapping[str, Any]) -> float | None:
        """The metric's value, or None when it needs a GT this set does not have."""
        needs_gt, takes_lq = metric_needs(METRIC_REGISTRY.get(opt_["type"]))
        if needs_gt and "img2" not in data:
            return None
        args = {k: v for k, v in data.items() if k != "lq" or takes_lq}
        return float(calculate_metric(args, opt_))

    def _warn_skipped(self, dataset_name: str, skipped: set[str]) -> None:
        warned: set[str] = self.__dict__.setdefault("_driqa_warned_sets", set())
        if skipped and dataset_name not in warned:
            warned.add(dataset_name)
            get_root_logger().warning(
                f"Validation set {dataset_name} has no GT: skipped {', '.join(sorted(skipped))} "
                "(they need img2); the other metrics ran"
            )

    def _visualization_path(self, dataset_name: str, img_name: str, current_iter: Any) -> str:
        # Same layout as BasicSR's SRModel, so existing tooling finds the images.
        root = self.opt["path"]["visualization"]
        if self.opt["is_train"]:
            return osp.join(root, img_name, f"{img_name}_{current_iter}.png")
        suffix = self.opt["val"].get("suffix") or self.opt["name"]
        return osp.join(root, dataset_name, f"{img_name}_{suffix}.png")


class DRIQASRStepMixin:
    """SRModel's generator step with the DR-IQA term."""

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        self.output = self.net_g(self.lq)
        total, losses = self._generator_losses(prefix="l_")
        total.backward()
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(losses)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)


class DRIQASRModel(DRIQAModelMixin, DRIQASRStepMixin, SRModel):
    """BasicSR ``SRModel`` + DR-IQA loss (``train.driqa_opt``) + LQ-aware validation."""


class DRIQAGANStepMixin:
    """The SRGAN generator/discriminator step with the DR-IQA term in the generator loss."""

    def _gan_step(self, current_iter: int, pixel_target: str, perceptual_target: str, gan_target: str) -> None:
        for p in self.net_d.parameters():
            p.requires_grad = False
        self.optimizer_g.zero_grad()
        self.output = self.net_g(self.lq)
        losses: OrderedDict[str, Tensor] = OrderedDict()
        if current_iter % self.net_d_iters == 0 and current_iter > self.net_d_init_iters:
            total, losses = self._generator_losses("l_g_", pixel_target, perceptual_target)
            losses["l_g_gan"] = self.cri_gan(self.net_d(self.output), True, is_disc=False)
            (total + losses["l_g_gan"]).backward()
            self.optimizer_g.step()

        for p in self.net_d.parameters():
            p.requires_grad = True
        self.optimizer_d.zero_grad()
        real_pred = self.net_d(self._require(gan_target, "the discriminator"))
        losses["l_d_real"] = self.cri_gan(real_pred, True, is_disc=True)
        losses["out_d_real"] = real_pred.detach().mean()
        losses["l_d_real"].backward()
        fake_pred = self.net_d(self.output.detach().clone())
        losses["l_d_fake"] = self.cri_gan(fake_pred, False, is_disc=True)
        losses["out_d_fake"] = fake_pred.detach().mean()
        losses["l_d_fake"].backward()
        self.optimizer_d.step()

        self.log_dict = self.reduce_loss_dict(losses)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)


class DRIQASRGANModel(DRIQAModelMixin, DRIQAGANStepMixin, SRGANModel):
    """BasicSR ``SRGANModel`` + DR-IQA loss in the generator step + LQ-aware validation."""

    def optimize_parameters(self, current_iter: int) -> None:
        self._gan_step(current_iter, "gt", "gt", "gt")


try:
    from realesrgan.models.realesrgan_model import RealESRGANModel
except ImportError as exc:  # Real-ESRGAN is optional
    RealESRGANModel = None
    REALESRGAN_IMPORT_ERROR: ImportError | None = exc
else:
    REALESRGAN_IMPORT_ERROR = None


if RealESRGANModel is not None:

    class DRIQARealESRGANModel(DRIQAModelMixin, DRIQAGANStepMixin, RealESRGANModel):
        """Real-ESRGAN's ``RealESRGANModel`` + DR-IQA loss + LQ-aware validation.

        Real-ESRGAN synthesises the LQ batch from the GT on the GPU (its model calls
        ``.cuda()`` unconditionally), so this model needs CUDA. The synthetic LQ is the
        degraded reference the DR-IQA term compares the output with.
        """

        lq_from_batch_in_training = False

        def feed_data(self, data: Mapping[str, Any]) -> None:
            if self.is_train and self.opt.get("high_order_degradation", True):
                RealESRGANModel.feed_data(self, data)  # makes self.lq from the GT
            else:
                DRIQAModelMixin.feed_data(self, data)

        def nondist_validation(self, dataloader: Any, current_iter: Any, tb_logger: Any, save_img: bool) -> None:
            # As Real-ESRGAN does: no degradation synthesis on validation data.
            self.is_train = False
            try:
                DRIQAModelMixin.nondist_validation(self, dataloader, current_iter, tb_logger, save_img)
            finally:
                self.is_train = True

        def optimize_parameters(self, current_iter: int) -> None:
            def target(flag: str) -> str:
                return "gt" if self.opt.get(flag, True) is False else "gt_usm"

            self._gan_step(current_iter, target("l1_gt_usm"), target("percep_gt_usm"), target("gan_gt_usm"))

else:
    DRIQARealESRGANModel = None


def make_driqa_model(base: type) -> type:
    """``DRIQA<Base>``: the DR-IQA version of a project's model derived from SRModel or SRGANModel.

    Works for models that keep BasicSR's generator step (``optimize_parameters``) and
    change inference, data feeding or validation (HAT's ``HATModel``, for example). A
    base with its own training step (Real-ESRGAN's) needs a hand-written class such as
    :class:`DRIQARealESRGANModel`: combining it blindly would drop its logic.
    """
    if not issubclass(base, SRModel):
        raise OptionError(f"DRIQA{base.__name__}: {base.__name__} is not derived from BasicSR's SRModel")
    gan = issubclass(base, SRGANModel)
    stock_step = SRGANModel.optimize_parameters if gan else SRModel.optimize_parameters
    if base.optimize_parameters is not stock_step:
        raise OptionError(
            f"DRIQA{base.__name__}: {base.__name__} has its own optimize_parameters, so adding the DR-IQA "
            "term needs a hand-written model (as DRIQARealESRGANModel does for Real-ESRGAN)"
        )
    step = DRIQAGANStepMixin if gan else DRIQASRStepMixin
    attrs: dict[str, Any] = {
        "__doc__": f"{base.__name__} + DR-IQA loss (train.driqa_opt) + LQ-aware validation.",
        "__module__": __name__,
        # A base that feeds data its own way (e.g. synthesises the LQ) is trusted to set self.lq.
        "lq_from_batch_in_training": base.feed_data is SRModel.feed_data,
    }
    return type(f"DRIQA{base.__name__}", (DRIQAModelMixin, step, base), attrs)


def register_derived_model(name: str) -> bool:
    """Register ``DRIQA<Base>`` on demand when ``name`` is that and ``Base`` is registered."""
    if name in MODEL_REGISTRY or not name.startswith("DRIQA") or name[5:] not in MODEL_REGISTRY:
        return False
    register(MODEL_REGISTRY, make_driqa_model(MODEL_REGISTRY.get(name[5:])))
    return True


def register_models() -> list[str]:
    """Register the DR-IQA models; returns the names registered (or already there)."""
    names = []
    for cls in (DRIQASRModel, DRIQASRGANModel, DRIQARealESRGANModel):
        if cls is not None:
            names.append(register(MODEL_REGISTRY, cls).__name__)
    return names
