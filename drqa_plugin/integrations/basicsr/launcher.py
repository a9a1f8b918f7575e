"""Shared start-up of ``train.py`` and ``test.py``: check the options, import plug-ins, run BasicSR.

BasicSR parses ``sys.argv`` itself, so this module only removes its own flag
(``--import MODULE``, repeatable) and leaves every BasicSR flag (``-opt``,
``--launcher``, ``--auto_resume``, ``--debug``, ``--force_yml``) untouched.
Experiments and results go under the current directory, as with BasicSR's own
scripts run from a project root.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from drqa_plugin.errors import ConfigError, DRQAError, MissingFileError
from drqa_plugin.integrations.common import without_flag

# Projects built on BasicSR whose registries we fill by importing them when an
# option names something only they provide.
KNOWN_EXTENSIONS = ("realesrgan", "hat")
# train.* entries that are loss options (the rest are optimisers, schedulers, numbers).
_NOT_LOSSES = ("optim_g", "optim_d", "scheduler")


@dataclass(frozen=True)
class LaunchArgs:
    option_file: Path
    imports: tuple[str, ...]
    basicsr_argv: list[str]


def split_argv(argv: Sequence[str]) -> LaunchArgs:
    """Separate our ``--import`` flags from BasicSR's own arguments."""
    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--import", dest="imports", action="append", default=[])
    ours.add_argument("-opt", dest="opt")
    known, _ = ours.parse_known_args(list(argv))
    if not known.opt:
        raise SystemExit("usage: python -m drqa_plugin.integrations.basicsr.train -opt OPTIONS.yml [--import MODULE]")
    basicsr_argv = without_flag(list(argv), "--import")
    return LaunchArgs(Path(known.opt), tuple(known.imports), basicsr_argv)


def load_options(path: Path) -> dict[str, Any]:
    """The option file as plain data (``yaml.safe_load``: no Python tags)."""
    if not path.is_file():
        raise MissingFileError(f"option file not found: {path}")
    with path.open() as f:
        options = yaml.safe_load(f)
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level")
    return options


def requested_names(options: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(registry, name, where) for every registry entry an option file asks for."""
    if options.get("model_type"):
        yield "model", str(options["model_type"]), "model_type"
    for key, value in options.items():
        if key.startswith("network_") and isinstance(value, Mapping) and value.get("type"):
            yield "arch", str(value["type"]), f"{key}.type"
    for phase, dataset in (options.get("datasets") or {}).items():
        if isinstance(dataset, Mapping) and dataset.get("type"):
            yield "dataset", str(dataset["type"]), f"datasets.{phase}.type"
    for key, value in (options.get("train") or {}).items():
        if key.endswith("_opt") and key not in _NOT_LOSSES and isinstance(value, Mapping) and value.get("type"):
            yield "loss", str(value["type"]), f"train.{key}.type"
    for name, metric in ((options.get("val") or {}).get("metrics") or {}).items():
        if isinstance(metric, Mapping) and metric.get("type"):
            yield "metric", str(metric["type"]), f"val.metrics.{name}.type"


def _registries() -> dict[str, Any]:
    from basicsr.utils import registry

    return {
        "model": registry.MODEL_REGISTRY,
        "arch": registry.ARCH_REGISTRY,
        "dataset": registry.DATASET_REGISTRY,
        "loss": registry.LOSS_REGISTRY,
        "metric": registry.METRIC_REGISTRY,
    }


def _is_registered(registry: Any, name: str) -> bool:
    # BasicSR's Registry.get also tries the '_basicsr' suffix.
    return name in registry or f"{name}_basicsr" in registry


def missing_names(options: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    regs = _registries()
    return [(reg, name, where) for reg, name, where in requested_names(options) if not _is_registered(regs[reg], name)]


def _resolve(options: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Derive ``DRIQA<ProjectModel>`` if asked for and possible, then list what is still unknown."""
    from drqa_plugin.integrations.basicsr.models import register_derived_model

    register_derived_model(str(options.get("model_type", "")))
    return missing_names(options)


def import_plugins(options: Mapping[str, Any], explicit: Sequence[str]) -> list[str]:
    """Import the adapter, the modules named by ``--import``, and installed extensions the options need.

    Returns the extension modules imported. Raises naming what is still unknown.
    """
    from drqa_plugin.integrations.basicsr import register

    register()

    for module in explicit:
        importlib.import_module(module)
    imported: list[str] = []
    missing = _resolve(options)
    for module in KNOWN_EXTENSIONS:
        if not missing:
            break
        if importlib.util.find_spec(module) is None:
            continue
        try:
            importlib.import_module(module)
        except ImportError:  # e.g. an unrelated package of the same name
            continue
        imported.append(module)
        missing = _resolve(options)
    if missing:
        listed = "; ".join(f"{where}: {name!r} is not in BasicSR's {reg} registry" for reg, name, where in missing)
        raise ConfigError(
            f"{listed}. Install the project that provides it, or name its module with --import MODULE "
            f"(tried: {', '.join(KNOWN_EXTENSIONS)})"
        )
    return imported


def run(pipeline: Callable[[str], None], argv: Sequence[str] | None = None, *, is_train: bool) -> None:
    """Check the options, import plug-ins, then hand over to a BasicSR pipeline."""
    from drqa_plugin.integrations.basicsr.validate import check_options

    args = split_argv(sys.argv[1:] if argv is None else argv)
    try:
        options = load_options(args.option_file)
        import_plugins(options, args.imports)
        check_options(options, is_train=is_train)
    except (DRQAError, ValueError, OSError, yaml.YAMLError) as exc:  # ours, and BasicSR's own option errors
        # A one-line reason instead of a traceback: nothing has started yet.
        raise SystemExit(f"drqa-plugin: {args.option_file}: {exc}") from exc
    sys.argv = [sys.argv[0], *args.basicsr_argv]
    pipeline(os.getcwd())
