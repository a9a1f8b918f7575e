"""Training configuration: one dataclass per concern, loaded from YAML.

``load_config(path, overrides)`` reads a YAML file with :func:`yaml.safe_load`
and applies dotted ``key=value`` overrides (``max_steps=20``,
``data.root=/data/PIPAL``, ``optim.lr=0.01``). Values of overrides are parsed
as YAML scalars (``null``, ``true``, ``1e-4``, ``[1, 2]``). Unknown keys and
values of the wrong type are errors that name the key, so a typo in a recipe
fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from drqa_plugin.data import DataConfig

PRECISIONS = ("no", "bf16", "fp16")


class ConfigError(ValueError):
    """A training config file or override is malformed."""


@dataclass
class ModelConfig:
    """Which network to train and how to initialise it."""

    arch: str = "ckdn_r50"
    # ImageNet ResNet-50 weights (torchvision layout, .pth/.safetensors) or one of our
    # .safetensors files; None = random init (the demo: nothing is downloaded).
    init: str | None = None
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and tensor cores


@dataclass
class LoaderConfig:
    """Per-process batch sizes and data-loading workers."""

    batch_size: int = 8  # per process; global batch = batch_size * processes * grad_accum
    eval_batch_size: int = 8
    num_workers: int = 0
    drop_last: bool = True  # as the official code: no ragged last batch in training


@dataclass
class OptimConfig:
    """SGD as in the paper's code; lr schedule by global optimiser step."""

    lr: float = 0.16
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4  # applied to tensors with >= 2 dims only
    schedule: str = "constant"  # "constant" (paper) | "cosine"
    warmup_steps: int = 0
    clip_grad_norm: float | None = None  # None: no clipping (paper); DeepSpeed "auto" takes this value


@dataclass
class LossConfig:
    """Weights of the four distillation terms and how the ranking target is made."""

    student: float = 1.0  # d1: (dr - t1)^2
    teacher: float = 1.0  # d2: (fr - t1)^2
    ranking: float = 0.5  # d3: (nr - t3)^2
    distill: float = 30.0  # d4: feature gap^2
    # t3 = 1 / (1 + 10 ** ((t1 - t2) * rank_scale)); the paper: (MOS/1000 units) * 1000 / 400.
    # Synthetic labels in [0, 1] are closer together than PIPAL's; a larger scale sharpens t3.
    rank_scale: float = 2.5


@dataclass
class ScheduleConfig:
    """Two-stage schedule: stage 1 trains the no-reference ranking (d3), stage 2 d1+d2+d4."""

    epochs: int = 30
    stage2_start: int = 10  # first epoch (or step, see unit) of stage 2
    unit: str = "epoch"  # "epoch" | "step"
    eval_every_epochs: int = 1
    eval_every_steps: int = 0  # 0: only at epoch ends (and at the end of training)


@dataclass
class RuntimeConfig:
    """Numerics and distributed behaviour."""

    mixed_precision: str | None = None  # None: what the launcher says; "no" | "bf16" | "fp16"
    grad_accum: int = 1
    sync_batchnorm: bool = False  # GPU only; default as the paper: per-process BN statistics
    cpu_threads: int = 0  # torch threads per process on CPU; 0 = leave as is
    dist_timeout_s: int = 600  # a dead rank makes the others fail after this, not hang forever
    compile: bool = False


@dataclass
class LogConfig:
    """What is written while training."""

    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True  # only when tensorboard is installed
    plots: bool = True


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    seed: int = 42
    output_dir: str = "runs/train"
    max_steps: int = 0  # optimiser steps; 0 = schedule.epochs
    checkpoint_every: int = 0  # optimiser steps; 0 = only at the end
    keep_checkpoints: int = 2
    resume: str | None = None  # None | "latest" | path to a checkpoint folder
    overwrite: bool = False  # a fresh run into an output_dir that has checkpoints deletes them (else: error)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        validate(self)


def validate(cfg: TrainConfig) -> None:
    """Semantic checks that types alone cannot express."""
    checks = [
        (cfg.max_steps >= 0, f"max_steps must be >= 0, got {cfg.max_steps}"),
        (cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}"),
        (cfg.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}"),
        (cfg.loader.batch_size >= 1, f"loader.batch_size must be >= 1, got {cfg.loader.batch_size}"),
        (cfg.loader.eval_batch_size >= 1, "loader.eval_batch_size must be >= 1"),
        (cfg.runtime.grad_accum >= 1, f"runtime.grad_accum must be >= 1, got {cfg.runtime.grad_accum}"),
        (cfg.optim.schedule in ("constant", "cosine"), f"optim.schedule must be constant|cosine, got {cfg.optim.schedule!r}"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}"),
        (cfg.schedule.unit in ("epoch", "step"), f"schedule.unit must be epoch|step, got {cfg.schedule.unit!r}"),
        (cfg.schedule.stage2_start >= 0, "schedule.stage2_start must be >= 0"),
        (cfg.schedule.epochs >= 1, "schedule.epochs must be >= 1"),
        (
            cfg.runtime.mixed_precision is None or cfg.runtime.mixed_precision in PRECISIONS,
            f"runtime.mixed_precision must be one of {PRECISIONS} or null, got {cfg.runtime.mixed_precision!r}",
        ),
        (cfg.log.log_every >= 1, "log.log_every must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        raw = loaded or {}
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return from_dict(TrainConfig, raw)


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as a YAML scalar/list."""
    key, sep, text = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. max_steps=20)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
    return key, value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and value types."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys here: {sorted(known)}")
    kwargs = {name: _coerce(hints[name], value, prefix + name) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from exc


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if hint is Any:
        return value
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        items = [_coerce(args[0], v, key) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # PyYAML reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
        return value
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config (for YAML dumps and logs)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
