"""``calculate_driqa``: the DR-IQA score as a traiNNer-redux validation metric.

traiNNer-redux calls metrics as ``fn(img=sr, [img2=gt], device=..., **options)`` with
uint8 HWC RGB images, and drops the LQ image before its metric loop. The DR-IQA
models (:mod:`.models`) publish each validation image's LQ (converted the way
traiNNer converts the output) right after inference; this metric scores ``img``
against it. ``img2`` (GT) is not needed, so LQ-only validation sets work.

The scorer is built once per process and configuration and reused across images
and validation rounds (:mod:`drqa_plugin.integrations.common`).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from drqa_plugin.integrations.common import OptionError, cached_scorer, check_keys, scorer_spec

__all__ = ["METRIC_KEYS", "calculate_driqa", "check_metric_options", "publish_reference", "register_metrics"]

# ``device`` is not an option: traiNNer-redux passes its own (the model's device).
METRIC_KEYS = ("weights", "better", "preprocess", "reference_interpolation", "tile_size", "precision")
WHERE = "val.metrics (calculate_driqa)"


@dataclass(frozen=True)
class ValidationReference:
    """The LQ image of the validation image being scored, and the output size it belongs to."""

    lq: np.ndarray  # uint8 HWC RGB
    output_hw: tuple[int, int]


_REFERENCE: ContextVar[ValidationReference | None] = ContextVar("drqa_trainner_reference", default=None)


def publish_reference(lq: np.ndarray | None, output_hw: tuple[int, int] | None = None) -> None:
    """Set (or, with ``None``, clear) the LQ image that ``calculate_driqa`` scores against."""
    _REFERENCE.set(None if lq is None else ValidationReference(lq, tuple(output_hw or ())))  # type: ignore[arg-type]


def current_reference() -> ValidationReference | None:
    return _REFERENCE.get()


def check_metric_options(options: dict[str, Any], where: str = WHERE) -> dict[str, Any]:
    """The scorer options of a ``calculate_driqa`` entry, every value checked (no network is built).

    Raises:
        OptionError: an unknown key or a bad value, naming ``where``.
        WeightsNotFoundError: the weights file does not exist.
    """
    options = {k: v for k, v in options.items() if k != "type"}
    if "device" in options:
        raise OptionError(f"{where}: remove 'device': traiNNer-redux runs metrics on the model's device")
    check_keys(options, METRIC_KEYS, where)
    if options.pop("better", "higher") != "higher":
        raise OptionError(f"{where}: DR-IQA scores are higher-is-better: set 'better: higher' or leave it out")
    scorer_spec(**options, where=where)
    return options


def calculate_driqa(img: np.ndarray, img2: Any = None, device: Any = None, **options: Any) -> float:
    """DR-IQA score in (0, 1) of the output ``img`` against its LQ input (published by the DR-IQA model).

    ``img`` is traiNNer-redux's uint8 HWC RGB output; ``img2`` (GT) is accepted and
    unused. Options: ``weights`` (required), ``better`` (must be ``higher``),
    ``preprocess`` (``ckdn`` default: the published protocol), ``reference_interpolation``,
    ``tile_size``, ``precision``.
    """
    del img2  # DR-IQA needs no ground truth
    check_keys(options, METRIC_KEYS, WHERE)
    if options.pop("better", "higher") != "higher":
        raise OptionError(f"{WHERE}: DR-IQA scores are higher-is-better: set 'better: higher' or leave it out")
    reference = current_reference()
    if reference is None:
        raise OptionError(
            "calculate_driqa needs the LQ image, which traiNNer-redux drops before its metrics run: "
            "train with `python -m drqa_plugin.integrations.trainner.train` (its models pass the LQ on)"
        )
    if tuple(img.shape[:2]) != reference.output_hw:
        raise OptionError(
            f"calculate_driqa: output of size {tuple(img.shape[:2])} but the published LQ belongs to an output of "
            f"size {reference.output_hw}"
        )
    spec = scorer_spec(**options, where=WHERE, device=str(device) if device is not None else "auto")
    return float(cached_scorer(spec)(img, reference.lq)[0])


def register_metrics() -> None:
    from traiNNer.utils.registry import METRIC_REGISTRY

    from drqa_plugin.integrations.trainner._host import register_in

    register_in(METRIC_REGISTRY, calculate_driqa)
