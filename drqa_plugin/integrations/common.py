"""What every adapter shares, without any host package installed: option checks and a scorer cache.

Hosts call metrics once per image, so the network behind a metric must be built
once per process and configuration, and rebuilt when its weights file changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drqa_plugin.config import check_keys
from drqa_plugin.constants import INTERPOLATIONS, PREPROCESS_MODES, precision_name, resolve_device, resolve_dtype
from drqa_plugin.errors import OptionError, WeightsNotFoundError
from drqa_plugin.hub import resolve_weights
from drqa_plugin.scorer import DRIQA

__all__ = ["OptionError", "ScorerSpec", "cached_scorer", "check_keys", "clear_scorer_cache", "scorer_spec",
           "without_flag", "register_once", "MARKER"]

# Set on every object we register, so a second registration (or a second import of our modules
# under another path) recognises its own entries instead of failing.
MARKER = "_drqa_plugin_component"


def register_once(registry: Any, obj: Any, key: str, host: str = "") -> Any:
    """Register ``obj`` under ``key`` in a host's registry; our own object again is a no-op.

    Hosts' registries raise on duplicate names. A name held by somebody else's object is
    still an error, and says who holds it (``host`` prefixes the registry's name).
    """
    setattr(obj, MARKER, True)
    if key in registry:
        existing = registry.get(key)
        if existing is obj or getattr(existing, MARKER, False):
            return existing
        raise RuntimeError(
            f"{host}{registry._name} registry already holds {key!r} from {getattr(existing, '__module__', '?')}; "
            "drqa-plugin cannot register its own under the same name"
        )
    registry.register(obj)
    return obj


def without_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` less our launcher's own ``flag VALUE`` / ``flag=VALUE`` pairs, so the host parses the rest."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            out.append(arg)
    return out


@dataclass(frozen=True)
class ScorerSpec:
    """What identifies one scorer; equal specs share one network in the process."""

    weights: str
    weights_stamp: tuple[int, int]  # (size, mtime_ns): a rewritten file is reloaded
    preprocess: str
    reference_interpolation: str
    tile_size: int | None
    device: str
    precision: str
    channel_order: str


_SCORERS: dict[ScorerSpec, DRIQA] = {}


def scorer_spec(
    weights: str | os.PathLike | None,
    *,
    where: str,
    preprocess: str = "ckdn",
    reference_interpolation: str = "bicubic",
    tile_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    channel_order: str = "RGB",
) -> ScorerSpec:
    """Check metric options (naming ``where`` in every error) and describe the scorer they ask for.

    Raises:
        OptionError: a missing ``weights`` or a value outside the choices.
        WeightsNotFoundError: the weights file does not exist.
    """
    if weights is None:
        raise OptionError(f"{where} needs 'weights: ckdn_pipal' (a weights name) or a path to a "
                          "drqa-plugin .safetensors file")
    if preprocess not in PREPROCESS_MODES:
        raise OptionError(f"{where}: preprocess must be one of {PREPROCESS_MODES}, got {preprocess!r}")
    if reference_interpolation not in INTERPOLATIONS:
        raise OptionError(f"{where}: reference_interpolation must be one of {INTERPOLATIONS}, "
                          f"got {reference_interpolation!r}")
    if tile_size is not None and (not isinstance(tile_size, int) or tile_size < 8):
        raise OptionError(f"{where}: tile_size must be an integer >= 8, got {tile_size!r}")
    try:
        canonical = precision_name(resolve_dtype(precision))
        resolved_device = str(resolve_device(device))
    except ValueError as exc:
        raise OptionError(f"{where}: {exc}") from exc
    path = Path(weights).expanduser()
    if not path.is_file():
        try:  # a registered name (ckdn_pipal): fetched and cached once, then a file like any other
            path = resolve_weights(str(weights))
        except WeightsNotFoundError as exc:
            raise WeightsNotFoundError(f"{where}: {exc}") from exc
    stat = path.stat()
    return ScorerSpec(
        weights=str(path.resolve()),
        weights_stamp=(stat.st_size, stat.st_mtime_ns),
        preprocess=preprocess,
        reference_interpolation=reference_interpolation,
        tile_size=tile_size,
        device=resolved_device,
        precision=canonical,
        channel_order=channel_order,
    )


def cached_scorer(spec: ScorerSpec) -> DRIQA:
    """The process-wide scorer for ``spec`` (built on first use)."""
    scorer = _SCORERS.get(spec)
    if scorer is None:
        scorer = DRIQA(
            spec.weights,
            preprocess=spec.preprocess,  # type: ignore[arg-type]
            device=spec.device,
            dtype=spec.precision,
            tile_size=spec.tile_size,
            reference_interpolation=spec.reference_interpolation,
            channel_order=spec.channel_order,  # type: ignore[arg-type]
        )
        _SCORERS[spec] = scorer
    return scorer


def scorer_cache_size() -> int:
    return len(_SCORERS)


def clear_scorer_cache() -> None:
    """Drop every cached network (tests; or to free memory between validation phases)."""
    _SCORERS.clear()
