"""Training configuration: one dataclass per concern, loaded from YAML.

``load_config(path, overrides)`` reads a YAML file and applies dotted
``key=value`` overrides (``max_steps=20``, ``data.root=/data/PIPAL``,
``optim.lr=0.01``) through the package's one config mechanism
(:mod:`drqa_plugin.config`): unknown keys and values of the wrong type are
errors that name the key, so a typo in a recipe fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from drqa_plugin.config import dump_yaml_config, load_yaml_config, to_dict
from drqa_plugin.constants import DEFAULT_ARCH
from drqa_plugin.data import DataConfig
from drqa_plugin.errors import ConfigError

#: Accelerate's mixed-precision modes (what autocast runs in), not the scorer's compute dtypes.
MIXED_PRECISION_MODES = ("no", "bf16", "fp16")

__all__ = ["ConfigError", "TrainConfig", "dump_config", "load_config", "to_dict"]


@dataclass
class ModelConfig:
    """Which network to train and how to initialise it."""

    arch: str = DEFAULT_ARCH
    # imagenet_resnet50 (the paper's init; fetched once), a torchvision ResNet-50 .pth, a weights
    # name such as ckdn_pipal or one of our .safetensors files, stlpips_alex (arch ckdn_alex: from the
    # stlpips-pytorch wheel, nothing downloaded); None = random init (nothing downloaded).
    init: str | None = None
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and tensor cores


@dataclass
class LoaderConfig:
    """Per-process batch sizes and data-loading workers."""

    batch_size: int = 8  # per process; global batch = batch_size * processes * grad_accum
    eval_batch_size: int = 8
    num_workers: int = 0
    # How workers start. "forkserver": forked from a clean single-threaded server, never from the
    # trainer, where a gloo thread may hold CPython's thread-list lock at the instant of a fork and
    # the worker then waits for it forever (Python 3.11; seen in 1 of 23 two-rank launches with
    # "fork"). Where forkserver does not exist (Windows) the platform's default is used.
    start_method: str = "forkserver"  # forkserver | spawn | fork
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
    skip_nonfinite: int = 0  # optimiser steps with a non-finite loss to skip (counted) before the run stops


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
    # d5 (not in the paper; 0 = off): ((dr - dr_2) - (t1 - t2))^2 in stage 2, the student's order of
    # two restorations of the same input. Costs one more restored-encoder + comparator pass per sample.
    pair: float = 0.0
    # d3 weight in stage 2 (not in the paper, 0 = off): the no-reference ranking of two restorations of
    # one input keeps training the shared restored-image encoder while the reference branch learns.
    # Costs one more restored-encoder pass and the ranking branch per sample in stage 2.
    ranking_stage2: float = 0.0
    # d6 (not in the paper; 0 = off): dr_x^2 in stage 2, where dr_x scores each restoration against
    # another sample's degraded input (the batch rolled by one): the worst possible restoration of
    # that input. A comparator that scores it high ignores its reference.
    mismatch: float = 0.0
    # d7 (not in the paper; 0 = off): in stage 2, for every two restorations of one input in the batch
    # (data.group_size), the cross-entropy of the student's Elo probability that one beats the other,
    # sigmoid((dr_i - dr_j) * rank_scale * ln 10), against the labels' (minus its entropy, so 0 at best).
    # Zero where dr_i - dr_j = t_i - t_j, so it agrees with d1 at d1's optimum; it weighs the order of the
    # restorations of an input, which is what a loss or a validation metric uses.
    listwise: float = 0.0
    # Optimiser steps after stage 2 begins over which d7's weight rises linearly from 0 to
    # ``listwise`` (0 = full weight at once). The score head starts stage 2 untrained; at weights of
    # 0.5 and more d7's pair gradients (rank_scale * ln 10 times the probability error) blew its
    # logits up within 40 steps and every score stuck at 0 or 1 (docs/quality.md).
    listwise_warmup: int = 0


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


@dataclass
class LogConfig:
    """What is written while training."""

    log_every: int = 10
    progress: bool = True
    # Every evaluation also scores each val pair against another input's degraded crop (the row
    # "model, another input's reference"): a model that keeps its per-input order there does not
    # use its reference. Costs a second pass over the val set; needs val crops of one size.
    reference_check: bool = True
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
    resume_force: bool = False  # resume although batch size, processes, crop, ... changed (not bit-identical)
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


WORKER_START_METHODS = ("forkserver", "spawn", "fork")


def validate(cfg: TrainConfig) -> None:
    """Semantic checks that types alone cannot express."""
    checks = [
        (cfg.max_steps >= 0, f"max_steps must be >= 0, got {cfg.max_steps}"),
        (cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}"),
        (cfg.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}"),
        (cfg.loader.batch_size >= 1, f"loader.batch_size must be >= 1, got {cfg.loader.batch_size}"),
        (cfg.loader.eval_batch_size >= 1, "loader.eval_batch_size must be >= 1"),
        (cfg.loader.num_workers >= 0, f"loader.num_workers must be >= 0, got {cfg.loader.num_workers}"),
        (cfg.loader.start_method in WORKER_START_METHODS,
         f"loader.start_method must be {'|'.join(WORKER_START_METHODS)}, got {cfg.loader.start_method!r}"),
        (cfg.runtime.grad_accum >= 1, f"runtime.grad_accum must be >= 1, got {cfg.runtime.grad_accum}"),
        (cfg.optim.schedule in ("constant", "cosine"), f"optim.schedule must be constant|cosine, got {cfg.optim.schedule!r}"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}"),
        (cfg.schedule.unit in ("epoch", "step"), f"schedule.unit must be epoch|step, got {cfg.schedule.unit!r}"),
        (cfg.schedule.stage2_start >= 0, "schedule.stage2_start must be >= 0"),
        (cfg.schedule.epochs >= 1, "schedule.epochs must be >= 1"),
        (
            cfg.runtime.mixed_precision is None or cfg.runtime.mixed_precision in MIXED_PRECISION_MODES,
            f"runtime.mixed_precision must be one of {MIXED_PRECISION_MODES} or null, "
            f"got {cfg.runtime.mixed_precision!r}",
        ),
        (cfg.log.log_every >= 1, "log.log_every must be >= 1"),
        (cfg.loss.pair >= 0, f"loss.pair must be >= 0, got {cfg.loss.pair}"),
        (cfg.loss.ranking_stage2 >= 0, f"loss.ranking_stage2 must be >= 0, got {cfg.loss.ranking_stage2}"),
        (cfg.loss.mismatch >= 0, f"loss.mismatch must be >= 0, got {cfg.loss.mismatch}"),
        (cfg.loss.listwise >= 0, f"loss.listwise must be >= 0, got {cfg.loss.listwise}"),
        (cfg.loss.listwise_warmup >= 0, f"loss.listwise_warmup must be >= 0, got {cfg.loss.listwise_warmup}"),
        (cfg.loss.listwise == 0 or cfg.data.group_size >= 2,
         "loss.listwise ranks restorations of one input in a batch: set data.group_size >= 2 as well"),
        (cfg.loader.batch_size % max(cfg.data.group_size, 1) == 0,
         f"loader.batch_size ({cfg.loader.batch_size}) counts restorations and must be a multiple of "
         f"data.group_size ({cfg.data.group_size})"),
        (cfg.optim.skip_nonfinite >= 0, f"optim.skip_nonfinite must be >= 0, got {cfg.optim.skip_nonfinite}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# Recipes shipped inside the package, so the demo and ``--config demo`` work from an installed wheel.
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def packaged_config(name: str) -> Path:
    """The path of a recipe shipped inside the package (``"demo"`` -> ``drqa_plugin/configs/demo.yaml``)."""
    return PACKAGED_CONFIGS / f"{name}.yaml"


def packaged_config_names() -> list[str]:
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read a YAML recipe (a file, or the name of a packaged one such as ``demo``), apply ``key=value`` overrides.

    Without ``path`` the defaults are used.

    Raises:
        ConfigError: naming the unknown key, the mistyped value or the missing file.
    """
    if path is not None and not Path(path).exists() and packaged_config(str(path)).is_file():
        path = packaged_config(str(path))
    return load_yaml_config(TrainConfig, path, overrides)


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    dump_yaml_config(cfg, path)
