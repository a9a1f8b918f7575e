"""Checks of the DR-IQA parts of a BasicSR option file, run before BasicSR writes anything."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drqa_plugin.errors import ConfigError, WeightsError, WeightsNotFoundError
from drqa_plugin.integrations.basicsr.metrics import check_metric_options as check_metric_values
from drqa_plugin.integrations.common import OptionError, check_keys
from drqa_plugin.loss import RANDOM_WEIGHTS, DRIQALossConfig, config_keys
from drqa_plugin.weights import load_model

_TARGET_LOSSES = ("pixel_opt", "perceptual_opt", "gan_opt", "ldl_opt")


def check_weights(weights: Any, where: str, *, allow_random: bool = False) -> None:
    """Load the weights once to prove they exist and fit their architecture, naming the option."""
    if weights is None:
        raise OptionError(f"{where}: 'weights' is required (a weights name such as ckdn_pipal, or a "
                          "drqa-plugin .safetensors file)")
    if allow_random and weights == RANDOM_WEIGHTS:
        return
    path = Path(str(weights)).expanduser()
    try:
        load_model(path if path.is_file() else str(weights))  # a file, or a name such as ckdn_pipal
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(f"{where}: {exc}") from exc
    except WeightsError as exc:
        raise OptionError(f"{where}: {exc}") from exc


def _model_class(options: Mapping[str, Any]) -> type | None:
    from basicsr.utils.registry import MODEL_REGISTRY

    name = options.get("model_type")
    return MODEL_REGISTRY.get(name) if name and name in MODEL_REGISTRY else None


def _check_model_type(options: Mapping[str, Any], why: str) -> None:
    cls = _model_class(options)
    if cls is not None and not getattr(cls, "passes_lq_to_metrics", False):
        raise OptionError(
            f"model_type {options['model_type']} {why}; use DRIQASRModel, DRIQASRGANModel "
            "or DRIQARealESRGANModel (the same models with the LQ image wired in)"
        )


def check_train_options(train: Mapping[str, Any]) -> bool:
    """Check ``train.driqa_opt`` and the other loss slots; True if DR-IQA is trained with."""
    for key in _TARGET_LOSSES:
        opt = train.get(key)
        if isinstance(opt, Mapping) and opt.get("type") == "DRIQALoss":
            raise OptionError(
                f"train.{key} has type DRIQALoss, which would compare the output with the GT; "
                "DR-IQA compares it with the LQ input: put it in train.driqa_opt"
            )
    driqa_opt = train.get("driqa_opt")
    if not driqa_opt:
        return False
    if not isinstance(driqa_opt, Mapping):
        raise OptionError("train.driqa_opt must be a mapping of DRIQALoss options")
    if driqa_opt.get("type", "DRIQALoss") == "DRIQALoss":
        check_keys(driqa_opt, ("type", *config_keys()), "train.driqa_opt (DRIQALoss)")
        values = {k: v for k, v in driqa_opt.items() if k not in ("type", "weights")}
        try:
            DRIQALossConfig(**values)
        except ConfigError as exc:
            raise OptionError(f"train.driqa_opt (DRIQALoss): {exc}") from exc
        check_weights(driqa_opt.get("weights"), "train.driqa_opt", allow_random=True)
    return True


def check_metric_options(metrics: Mapping[str, Any]) -> bool:
    """Check every ``calculate_driqa`` entry; True if there is one."""
    found = False
    for name, opt in metrics.items():
        if isinstance(opt, Mapping) and opt.get("type") == "calculate_driqa":
            found = True
            where = f"val.metrics.{name} (calculate_driqa)"
            check_metric_values(dict(opt), where)
            check_weights(opt.get("weights"), where)
    return found


def check_options(options: Mapping[str, Any], *, is_train: bool) -> None:
    """Raise :class:`OptionError` (naming the key) for DR-IQA options BasicSR would misuse or ignore."""
    if is_train and check_train_options(options.get("train") or {}):
        _check_model_type(options, "ignores train.driqa_opt")
    metrics = (options.get("val") or {}).get("metrics") or {}
    if check_metric_options(metrics):
        _check_model_type(options, "does not pass the LQ image that calculate_driqa needs")
