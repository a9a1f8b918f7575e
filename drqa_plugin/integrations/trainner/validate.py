"""Checks of a traiNNer-redux option file, run before traiNNer-redux writes anything.

First traiNNer-redux's own strict decoding (msgspec, unknown keys rejected), turned
into one line; then the DR-IQA entries, which traiNNer-redux passes through as free
dicts: keys (with a did-you-mean), values, weights, and whether the validation sets
can feed the metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drqa_plugin.config import read_yaml_mapping
from drqa_plugin.errors import ConfigError, DRQAError, OptionError
from drqa_plugin.integrations.common import check_keys
from drqa_plugin.integrations.trainner.metrics import check_metric_options
from drqa_plugin.loss import RANDOM_WEIGHTS, DRIQALossConfig, config_keys
from drqa_plugin.weights import load_model

LOSS_TYPE = "driqaloss"
METRIC_TYPE = "calculate_driqa"
PAIRED_TYPES = ("pairedimagedataset", "pairedvideodataset")
LQ_ONLY_TYPES = ("singleimagedataset", "singlelqdataset")


def decode_with_trainner(path: Path) -> Any:
    """traiNNer-redux's own strict decoding of the option file; its complaint as one line."""
    import msgspec
    from traiNNer.utils.options import yaml_load

    try:
        return yaml_load(str(path))[0]
    except msgspec.ValidationError as exc:
        raise ConfigError(f"traiNNer-redux rejects the options: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"not valid YAML for traiNNer-redux: {exc}") from exc


def load_options(path: Path) -> dict[str, Any]:
    """The option file as plain data, after traiNNer-redux's own decoding accepted it."""
    options = read_yaml_mapping(path)
    decode_with_trainner(path)
    return options


def loss_entries(train: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, entry) for ``train.losses[i]`` and the old ``train.<name>_opt`` slots."""
    for i, entry in enumerate(train.get("losses") or []):
        yield f"train.losses[{i}]", entry
    for key, entry in train.items():
        if key.endswith("_opt") and key not in ("optim_g", "optim_d", "optim_ae") and isinstance(entry, Mapping):
            yield f"train.{key}", entry


def check_weights(weights: Any, where: str, *, allow_random: bool = False) -> None:
    """Load the weights once to prove they exist and fit, naming the option on failure."""
    if weights is None:
        raise OptionError(f"{where}: 'weights' is required (a drqa-plugin .safetensors file)")
    if allow_random and weights == RANDOM_WEIGHTS:
        return
    try:
        load_model(weights)
    except DRQAError as exc:
        raise OptionError(f"{where}: {exc}") from exc


def check_loss_entry(entry: Mapping[str, Any], where: str) -> None:
    where = f"{where} ({LOSS_TYPE})"
    check_keys(entry, ("type", *config_keys()), where)
    if "loss_weight" not in entry:
        raise OptionError(f"{where}: 'loss_weight' is required (traiNNer-redux applies it to the unweighted term)")
    values = {k: v for k, v in entry.items() if k not in ("type", "weights")}
    try:
        values["loss_weight"] = float(values["loss_weight"])
        config = DRIQALossConfig(**values)
    except (ConfigError, TypeError, ValueError) as exc:
        raise OptionError(f"{where}: {exc}") from exc
    if config.loss_weight < 0:
        raise OptionError(f"{where}: loss_weight must be >= 0 (DR-IQA always compares with the LQ input)")
    if config.reduction == "none":
        raise OptionError(f"{where}: reduction must be 'mean' or 'sum' (traiNNer-redux adds scalar losses)")
    if config.loss_weight != 0:  # traiNNer-redux does not build a loss of weight 0
        check_weights(entry.get("weights"), where, allow_random=True)


def _known(registry: Any, name: str) -> bool:
    try:
        registry.get(name)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class DRIQAUse:
    """Where an option file uses DR-IQA (found without importing traiNNer-redux)."""

    loss: bool
    metric: bool


def check_driqa_entries(options: Mapping[str, Any]) -> DRIQAUse:
    """Check every ``driqaloss`` and ``calculate_driqa`` entry: keys, values, weights.

    Needs no traiNNer-redux import, so a typo is reported in a second.
    """
    train = options.get("train") or {}
    uses_loss = False
    for where, entry in loss_entries(train):
        if str(entry.get("type", "")).lower() == LOSS_TYPE:
            if uses_loss:
                raise OptionError(f"{where}: a second {LOSS_TYPE}; traiNNer-redux keeps one loss per type")
            check_loss_entry(entry, where)
            uses_loss = True
    uses_metric = False
    for name, entry in ((options.get("val") or {}).get("metrics") or {}).items():
        if isinstance(entry, Mapping) and str(entry.get("type", "")).lower() == METRIC_TYPE:
            where = f"val.metrics.{name} ({METRIC_TYPE})"
            check_metric_options(dict(entry), where)
            check_weights(entry.get("weights"), where)
            uses_metric = True
    if (uses_loss or uses_metric) and options.get("network_ae") and not options.get("network_g"):
        raise OptionError("DR-IQA needs an SR model (network_g); the autoencoder model (network_ae only) is not supported")
    return DRIQAUse(uses_loss, uses_metric)


def check_with_trainner(options: Mapping[str, Any], use: DRIQAUse) -> bool:
    """Checks that need traiNNer-redux's registries: unknown loss/metric types, and GT for the metrics.

    Returns True when ``calculate_driqa`` runs and some validation set has no GT (the
    launcher then lets traiNNer-redux accept such sets).
    """
    from traiNNer.utils.registry import LOSS_REGISTRY, METRIC_REGISTRY

    from drqa_plugin.integrations.trainner.models import metric_needs_gt

    for where, entry in loss_entries(options.get("train") or {}):
        kind = str(entry.get("type", ""))
        if not _known(LOSS_REGISTRY, kind):
            raise OptionError(f"{where}.type: {kind!r} is not in traiNNer-redux's loss registry")
    val = options.get("val") or {}
    metrics = val.get("metrics") or {}
    for name, entry in metrics.items():
        kind = str((entry or {}).get("type", ""))
        if not _known(METRIC_REGISTRY, kind):
            raise OptionError(f"val.metrics.{name}.type: {kind!r} is not in traiNNer-redux's metric registry")
    if not (use.metric and val.get("val_enabled") and val.get("metrics_enabled")):
        return False
    val_sets = {phase: ds for phase, ds in (options.get("datasets") or {}).items() if phase.split("_")[0] == "val"}
    kinds = {phase: str((ds or {}).get("type", "")).lower() for phase, ds in val_sets.items()}
    if not any(kind in PAIRED_TYPES for kind in kinds.values()):
        needing_gt = [name for name, entry in metrics.items() if metric_needs_gt(entry)]
        if needing_gt:
            raise OptionError(
                f"val.metrics.{needing_gt[0]} needs GT images, but no validation set has them "
                f"(sets: {', '.join(sorted(val_sets)) or 'none'}); remove it or add a pairedimagedataset"
            )
    return any(kind in LQ_ONLY_TYPES for kind in kinds.values())


def check_options(options: Mapping[str, Any]) -> bool:
    """Both checks (traiNNer-redux must be imported); see :func:`check_with_trainner` for the result."""
    return check_with_trainner(options, check_driqa_entries(options))
