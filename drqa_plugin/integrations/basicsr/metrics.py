"""``calculate_driqa``: the DR-IQA score as a BasicSR validation metric.

BasicSR calls metrics as ``fn(img=..., img2=..., **options)`` with uint8 HWC BGR
images. The DR-IQA models (:mod:`.models`) also pass ``lq=`` (the network input),
which is the degraded reference; ``img2`` (GT) is not needed and is ignored.
The scorer is built once per process per configuration and reused across calls
and validation rounds (:mod:`drqa_plugin.integrations.common`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drqa_plugin.integrations.common import OptionError, cached_scorer, check_keys, scorer_spec

METRIC_KEYS = (
    "weights",
    "better",
    "preprocess",
    "reference_interpolation",
    "tile_size",
    "device",
    "precision",
    "input_order",
)
WHERE = "val.metrics (calculate_driqa)"


def check_metric_options(options: dict[str, Any], where: str = WHERE) -> dict[str, Any]:
    """The scorer options of a ``calculate_driqa`` entry, every value checked (no network is built).

    Raises:
        OptionError: an unknown key or a bad value, naming ``where``.
        WeightsNotFoundError: the weights file does not exist.
    """
    options = {k: v for k, v in options.items() if k != "type"}
    check_keys(options, METRIC_KEYS, where)
    if options.pop("better", "higher") != "higher":
        raise OptionError("calculate_driqa scores are higher-is-better: set 'better: higher' or leave it out")
    if options.pop("input_order", "HWC") not in ("HWC", "CHW"):
        raise OptionError(f"{where}: input_order must be 'HWC' or 'CHW'")
    scorer_spec(**options, where=where, channel_order="BGR")
    return options


def calculate_driqa(img: np.ndarray, lq: np.ndarray | None = None, img2: Any = None, **options: Any) -> float:
    """DR-IQA score in (0, 1) of a restored image ``img`` against its degraded input ``lq``.

    Both are BasicSR images (uint8 HWC BGR; ``input_order: CHW`` for CHW). ``img2``
    (GT) is accepted and unused. Options: ``weights`` (required), ``better`` (must be
    ``higher``), ``preprocess`` (``ckdn`` default, ``none``, ``tiles``),
    ``reference_interpolation``, ``tile_size``, ``device`` (``auto`` default),
    ``precision`` (``fp32``, ``bf16``, ...), ``input_order``.
    """
    del img2  # DR-IQA needs no ground truth
    check_keys(options, METRIC_KEYS, WHERE)
    if options.pop("better", "higher") != "higher":
        raise OptionError("calculate_driqa scores are higher-is-better: set 'better: higher' or leave it out")
    if lq is None:
        raise OptionError(
            "calculate_driqa needs the LQ image, which BasicSR's own models do not pass to metrics: "
            "use model_type DRIQASRModel or DRIQASRGANModel (or DRIQARealESRGANModel)"
        )
    input_order = options.pop("input_order", "HWC")
    if input_order not in ("HWC", "CHW"):
        raise OptionError(f"calculate_driqa: input_order must be 'HWC' or 'CHW', got {input_order!r}")
    if input_order == "CHW":
        img, lq = img.transpose(1, 2, 0), lq.transpose(1, 2, 0)
    scorer = cached_scorer(scorer_spec(**options, where=WHERE, channel_order="BGR"))
    return float(scorer(img, lq)[0])


def register_metrics() -> None:
    from basicsr.utils.registry import METRIC_REGISTRY

    from drqa_plugin.integrations.basicsr._compat import register

    register(METRIC_REGISTRY, calculate_driqa)
