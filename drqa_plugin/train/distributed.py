"""Launch-side helpers: the Accelerator (DDP or DeepSpeed, CPU or GPU), rank agreement, RNG-neutral loading.

* **BatchNorm.** Plain per-process BatchNorm by default, as the paper's 8-GPU run
  (no SyncBN). Running statistics follow rank 0: DDP broadcasts rank 0's buffers
  each forward; DeepSpeed does not, so :func:`sync_buffers` broadcasts them before
  evaluation, checkpoints and export.
* **DeepSpeed.** Its native bf16 casts parameters but keeps BatchNorm buffers fp32,
  which fails for this CNN; the recipes use its ``torch_autocast`` instead.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import (
    Accelerator,
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    InitProcessGroupKwargs,
)
from accelerate.utils import DeepSpeedPlugin, DistributedType
from torch import nn
from torch.utils.data import DataLoader

from drqa_plugin.errors import TrainingError
from drqa_plugin.train.config import TrainConfig


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator for DDP/DeepSpeed on CPU (gloo) or GPU, configured from the trainer config."""
    # Stage-dependent paths leave branches unused; see the module docstring.
    handlers: list[Any] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a process-group handler alone makes a 1-process run fail
        handlers.append(
            InitProcessGroupKwargs(
                backend=None if torch.cuda.is_available() else "gloo",  # DeepSpeed on CPU needs gloo named
                timeout=timedelta(seconds=cfg.runtime.dist_timeout_s),
            )
        )
    loader_cfg = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed)
    precision = cfg.runtime.mixed_precision
    plugin = None
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not deepspeed:
        # Without this a multi-process launch on a GPU-less machine runs N unsynchronised copies.
        os.environ["ACCELERATE_USE_CPU"] = "1"
    if deepspeed:
        plugin = _deepspeed_plugin(cfg)
        precision = "no"  # DeepSpeed's own torch_autocast handles bf16 (see _deepspeed_plugin)
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.runtime.grad_accum,
        dataloader_config=loader_cfg,
        kwargs_handlers=handlers,
        deepspeed_plugin=plugin,
        project_dir=cfg.output_dir,
    )


def _deepspeed_plugin(cfg: TrainConfig) -> DeepSpeedPlugin:
    """The launcher's DeepSpeed config with the trainer's values put into its "auto" fields.

    DeepSpeed's native bf16 casts parameters but keeps BatchNorm buffers fp32, which
    fails for this CNN; its ``torch_autocast`` keeps fp32 master weights and runs
    convolutions in bf16 instead. ``runtime.mixed_precision`` (when set) overrides the
    recipe: ``no`` turns autocast off, ``bf16`` turns it on.
    """
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and path != "none" and not Path(path).is_file():
        raise TrainingError(
            f"DeepSpeed config file {path!r} not found (relative paths are resolved against the "
            f"working directory {os.getcwd()}; launch from the repository root)"
        )
    clip = cfg.optim.clip_grad_norm
    plugin = DeepSpeedPlugin(
        gradient_accumulation_steps=cfg.runtime.grad_accum,
        gradient_clipping=float(clip) if clip else 0.0,  # fills "auto"; 0 = off in DeepSpeed
    )
    ds = plugin.deepspeed_config
    precision = cfg.runtime.mixed_precision
    if precision == "fp16":
        raise TrainingError("fp16 with DeepSpeed is not supported for this BatchNorm model; use bf16 (torch_autocast)")
    if str(ds.get("bf16", {}).get("enabled", False)).lower() == "true" or str(
        ds.get("fp16", {}).get("enabled", False)
    ).lower() == "true":
        raise TrainingError(
            "the DeepSpeed config enables native bf16/fp16, which breaks BatchNorm (fp32 buffers); "
            'use "torch_autocast": {"enabled": true, "dtype": "bfloat16"} as recipes/deepspeed/*.json do'
        )
    if precision is not None:
        ds["torch_autocast"] = {"enabled": precision == "bf16", "dtype": "bfloat16"}
    return plugin


def sync_buffers(accelerator: Accelerator, model: nn.Module) -> None:
    """Make every rank hold rank 0's BatchNorm statistics (DDP does this in forward, DeepSpeed does not)."""
    if accelerator.num_processes == 1:
        return
    for buf in accelerator.unwrap_model(model).buffers():
        torch.distributed.broadcast(buf.data, src=0)


def state_fingerprint(model: nn.Module) -> str:
    """SHA-256 of all parameters and buffers: equal on every rank iff the ranks agree bit for bit."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_launch(accelerator: Accelerator, train_loader: DataLoader, cfg: TrainConfig) -> None:
    if len(train_loader) == 0:
        group = cfg.data.group_size
        size = (f"inputs, {cfg.loader.batch_size // group} inputs of {group} restorations (data.group_size) per batch"
                if group else f"samples, batch_size {cfg.loader.batch_size}")
        raise TrainingError(
            f"no full training batch per process: {len(train_loader.dataset)} {size} "  # type: ignore[arg-type]
            f"x {accelerator.num_processes} processes (drop_last); use more data or a smaller batch"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != accelerator.num_processes or (world > 1 and accelerator.distributed_type == DistributedType.NO):
        raise TrainingError(
            f"launcher started {world} processes but Accelerate runs {accelerator.num_processes} "
            f"({accelerator.distributed_type}); on CPU launch with ACCELERATE_USE_CPU=1 --multi_gpu (see recipes/README.md)"
        )


def rng_neutral(loader: Any, device: torch.device) -> Iterator[Any]:
    """Iterate ``loader`` without touching the global RNG that dropout uses.

    A DataLoader draws a seed from the global RNG when an iterator starts. A resumed
    run starts its (skipping) iterator at another point of the RNG stream than the
    uninterrupted run did, which would shift every later dropout mask; forking the
    RNG around each fetch makes data loading invisible to the training RNG.
    """
    devices = [device] if device.type == "cuda" else []
    it = iter(loader)
    while True:
        with torch.random.fork_rng(devices=devices):
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch


def deepspeed_autocast(a: Accelerator) -> bool | None:
    if a.distributed_type != DistributedType.DEEPSPEED:
        return None
    return bool(a.state.deepspeed_plugin.deepspeed_config.get("torch_autocast", {}).get("enabled", False))


def all_ranks_finite(accelerator: Accelerator, value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every rank (a collective when there are several)."""
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if accelerator.num_processes > 1:
        flag = flag.to(accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())
