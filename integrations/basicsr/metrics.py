"""``calculate_driqa``: the DR-IQA score as a BasicSR validation metric.

BasicSR calls metrics as ``fn(img=..., img2=..., **options)`` with uint8 HWC BGR
images. The DR-IQA models (:mod:`.models`) also pass ``lq=`` (the network input),
which is the degraded reference; ``img2`` (GT) is not needed and is ignored.
The scorer is built once per process per configuration and reused across calls
and validation rounds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drqa_plugin.integrations.basicsr.options_check import OptionError, check_keys
from drqa_plugin.registry import PRECISIONS
from drqa_plugin.scorer import DRIQA

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
_DTYPES = {name: PRECISIONS[name] for name in ("fp32", "bf16")}


@dataclass(frozen=True)
class MetricConfig:
    """What identifies one scorer; equal configs share one network in the process."""

    weights: str
    weights_stamp: tuple[int, int]  # (size, mtime_ns): a rewritten file is reloaded
    preprocess: str
    reference_interpolation: str
    tile_size: int | None
    device: str
    precision: str


_SCORERS: dict[MetricConfig, DRIQA] = {}


def resolve_device(device: str) -> str:
    """``"auto"``: the current CUDA device when there is one, else the CPU."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return "cpu"


def metric_config(
    weights: str | os.PathLike | None,
    preprocess: str = "ckdn",
    reference_interpolation: str = "bicubic",
    tile_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> MetricConfig:
    if weights is None:
        raise OptionError(
            "calculate_driqa needs 'weights: path/to/ckdn.safetensors' in its val.metrics entry "
            "(convert published CKDN weights with `drqa convert`)"
        )
    if precision not in _DTYPES:
        raise OptionError(f"calculate_driqa: precision must be one of {tuple(_DTYPES)}, got {precision!r}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"calculate_driqa: weights file not found: {path}")
    stat = path.stat()
    return MetricConfig(
        weights=str(path.resolve()),
        weights_stamp=(stat.st_size, stat.st_mtime_ns),
        preprocess=preprocess,
        reference_interpolation=reference_interpolation,
        tile_size=tile_size,
        device=resolve_device(device),
        precision=precision,
    )


def get_scorer(cfg: MetricConfig) -> DRIQA:
    """The process-wide scorer for ``cfg`` (built on first use)."""
    scorer = _SCORERS.get(cfg)
    if scorer is None:
        scorer = DRIQA(
            cfg.weights,
            preprocess=cfg.preprocess,  # type: ignore[arg-type]
            device=cfg.device,
            dtype=_DTYPES[cfg.precision],
            tile_size=cfg.tile_size,
            reference_interpolation=cfg.reference_interpolation,
            channel_order="BGR",
        )
        _SCORERS[cfg] = scorer
    return scorer


def calculate_driqa(img: np.ndarray, lq: np.ndarray | None = None, img2: Any = None, **options: Any) -> float:
    """DR-IQA score in (0, 1) of a restored image ``img`` against its degraded input ``lq``.

    Both are BasicSR images (uint8 HWC BGR; ``input_order: CHW`` for CHW). ``img2``
    (GT) is accepted and unused. Options: ``weights`` (required), ``better`` (must be
    ``higher``), ``preprocess`` (``ckdn`` default, ``none``, ``tiles``),
    ``reference_interpolation``, ``tile_size``, ``device`` (``auto`` default),
    ``precision`` (``fp32``/``bf16``), ``input_order``.
    """
    del img2  # DR-IQA needs no ground truth
    check_keys(options, METRIC_KEYS, "val.metrics (calculate_driqa)")
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
    scorer = get_scorer(metric_config(**options))
    return float(scorer(img, lq)[0])


def register_metrics() -> None:
    from basicsr.utils.registry import METRIC_REGISTRY

    from drqa_plugin.integrations.basicsr._compat import register

    register(METRIC_REGISTRY, calculate_driqa)
