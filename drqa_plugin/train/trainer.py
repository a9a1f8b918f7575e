"""CKDN distillation training with Accelerate (DDP or DeepSpeed ZeRO), CPU or GPU.

Launch with ``accelerate launch ... -m drqa_plugin.train --config RECIPE k=v``
(see ``recipes/README.md``). Design decisions that matter for correctness:

* **Unused parameters.** Stage 1 runs only the ``nr`` path (restored encoder +
  ``nr_comparator``/``nr_head``); stage 2 runs ``dr``/``fr``/``gap`` (both
  encoders + ``comparator``/``head``). DDP is built with
  ``find_unused_parameters=True``: it then leaves the gradients of parameters no
  rank used as ``None``, so SGD skips them -- exactly the official behaviour
  ("parameters that get no gradient in a stage do not move"). DeepSpeed ZeRO
  instead fills unused gradients with zeros, which SGD would turn into weight
  decay and stale momentum (silent drift). So, on every backend, the parameter
  groups of branches a stage does not train get ``lr = 0`` and their momentum
  is cleared when they start training (identical to a fresh buffer, which is
  what the official run has at that point).
* **BatchNorm.** Plain per-process BatchNorm by default, as the paper's 8-GPU
  run (no SyncBN). Running statistics follow rank 0 (DDP broadcasts rank 0's
  buffers each forward; DeepSpeed does not, so the trainer broadcasts them
  explicitly before evaluation, checkpoints and export). ``runtime.sync_batchnorm``
  converts to SyncBatchNorm on GPU runs.
* **Data order and resume.** Seedable samplers (``data_seed``) give every rank the
  same permutation per epoch; the dataset's own epoch is set too; the epoch and
  the batch position inside it are stored in the checkpoint and
  ``skip_first_batches`` continues mid-epoch, so a resumed run reproduces the
  uninterrupted one. Dropout uses per-rank seeds (``seed + rank``, as the paper).
* **Inputs** come from the dataset as float RGB in [0, 1]; the trainer normalises
  them with the model's ImageNet mean/std (the same config the exported file carries).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs
from accelerate.utils import DeepSpeedPlugin, DistributedType, gather_object, set_seed
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from drqa_plugin.data import build_dataset
from drqa_plugin.metrics import evaluate as iqa_metrics
from drqa_plugin.preprocess import normalize
from drqa_plugin.registry import PreprocessConfig, create_model
from drqa_plugin.train.checkpoint import (
    TrainerState,
    checkpoint_dir,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from drqa_plugin.train.config import TrainConfig, dump_config, to_dict
from drqa_plugin.train.logs import MetricsLog, write_plots
from drqa_plugin.train.losses import LOSS_TERMS, STAGE_PATHS, distillation_loss, stage_at
from drqa_plugin.weights import save_weights


# Which top-level modules each stage trains; a module in no stage set would never move.
BRANCHES: dict[str, tuple[str, ...]] = {
    "shared": ("restored_encoder",),
    "ranking": ("nr_comparator", "nr_head"),
    "reference": ("reference_encoder", "comparator", "head"),
}
STAGE_BRANCHES: dict[int, frozenset[str]] = {1: frozenset({"shared", "ranking"}), 2: frozenset({"shared", "reference"})}


class TrainingError(RuntimeError):
    """A run cannot start or continue (empty data, bad resume, misconfigured launch)."""


# ----------------------------------------------------------------------------- setup


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


def build_model(cfg: TrainConfig) -> nn.Module:
    model = create_model(cfg.model.arch)
    if cfg.model.init:
        _initialise(model, cfg.model.init)
    return model.train()


def _initialise(model: nn.Module, path: str) -> None:
    from drqa_plugin.convert import init_from_imagenet_resnet50
    from drqa_plugin.weights import load_state_dict

    if str(path).endswith(".safetensors"):
        try:
            tensors, _ = load_state_dict(path)
        except Exception:
            tensors = None
        if tensors is not None:
            model.load_state_dict(tensors)
            return
    init_from_imagenet_resnet50(model, path)


def branch_of(name: str) -> str:
    top = name.split(".", 1)[0]
    for branch, modules in BRANCHES.items():
        if top in modules:
            return branch
    raise TrainingError(f"parameter {name!r} belongs to no training branch; update BRANCHES in trainer.py")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """One group per (branch, decay): weight decay only on tensors with >= 2 dims (convs, linears)."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((branch_of(name), p.ndim >= 2), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "branch": branch}
        for (branch, decay), params in sorted(groups.items())
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    return torch.optim.SGD(
        param_groups(model, o.weight_decay), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=0.0
    )


def base_lr(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) without the stage mask."""
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "cosine":
        span = max(1, total - o.warmup_steps)
        return 0.5 * o.lr * (1 + math.cos(math.pi * min(1.0, (step - o.warmup_steps) / span)))
    return o.lr


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The innermost torch optimizer (under Accelerate's and DeepSpeed's wrappers)."""
    seen = 0
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer") and seen < 5:
        optimizer, seen = optimizer.optimizer, seen + 1
    return optimizer


def set_lr(optimizer: Any, lr: float, stage: int) -> None:
    for group in _torch_optimizer(optimizer).param_groups:
        group["lr"] = lr if group["branch"] in STAGE_BRANCHES[stage] else 0.0


def clear_momentum(optimizer: Any, branches: frozenset[str]) -> None:
    """Zero momentum of groups that start training: same as a fresh buffer (SGD then seeds it with the grad)."""
    opt = _torch_optimizer(optimizer)
    for group in opt.param_groups:
        if group["branch"] in branches:
            for p in group["params"]:
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buf.zero_()


# ----------------------------------------------------------------------------- data


class FixedSamples(Dataset):
    """Hides a dataset's ``set_epoch`` so the validation samples stay the same at every evaluation.

    (Accelerate calls ``dataset.set_epoch(iteration)`` on every pass over a prepared
    loader whose sampler has no ``set_epoch``, which would redraw synthetic val pairs.)
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]


def build_loaders(cfg: TrainConfig) -> tuple[Dataset, Dataset, DataLoader, DataLoader]:
    train_set = build_dataset(cfg.data, split="train")
    val_set = FixedSamples(build_dataset(cfg.data, split="val"))
    if len(train_set) == 0:
        raise TrainingError(f"the training data is empty (data.kind={cfg.data.kind!r}, data.root={cfg.data.root!r})")
    if len(val_set) == 0:
        raise TrainingError(f"the validation data is empty (data.kind={cfg.data.kind!r}, data.root={cfg.data.root!r})")
    lc = cfg.loader
    common = dict(num_workers=lc.num_workers, persistent_workers=False, pin_memory=torch.cuda.is_available())
    train = DataLoader(train_set, batch_size=lc.batch_size, shuffle=True, drop_last=lc.drop_last, **common)
    val = DataLoader(val_set, batch_size=lc.eval_batch_size, shuffle=False, drop_last=False, **common)
    return train_set, val_set, train, val


class Normalizer:
    """ImageNet normalisation (+ memory format) of float [0, 1] batches on the training device."""

    def __init__(self, cfg: PreprocessConfig, channels_last: bool) -> None:
        self.cfg = cfg
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: Tensor) -> Tensor:
        return normalize(x, self.cfg).contiguous(memory_format=self.fmt)


# ----------------------------------------------------------------------------- distributed helpers


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


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    metrics: dict[str, float]
    scores: list[float]
    targets: list[float]
    groups: list[int]
    names: list[str]


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: nn.Module, loader: DataLoader, norm: Normalizer, desc: str,
             progress: bool = True) -> EvalResult:
    """Student (dr) scores of the val split, gathered without duplicates, with global + grouped metrics."""
    sync_buffers(accelerator, model)
    model.eval()
    scores, targets, groups, names = [], [], [], []
    bar = tqdm(rng_neutral(loader, accelerator.device), total=len(loader), desc=desc, leave=False,
               disable=not (accelerator.is_main_process and progress))
    for batch in bar:
        with accelerator.autocast():
            s = model(norm(batch["restored"]), norm(batch["degraded"]))
        s, t, g = accelerator.gather_for_metrics((s.float(), batch["target"].float(), batch["group"]))
        scores += s.cpu().tolist()
        targets += t.cpu().tolist()
        groups += g.cpu().tolist()
        names += list(accelerator.gather_for_metrics(list(batch["name"]), use_gather_object=True))
    model.train()
    m = iqa_metrics(scores, targets, groups)
    metrics = {k: getattr(m, k) for k in ("srcc", "plcc", "krcc", "grouped_srcc", "grouped_plcc", "grouped_krcc", "n")}
    return EvalResult(metrics, scores, targets, groups, names)


def write_predictions(path: Path, result: EvalResult) -> None:
    lines = ["name,group,target,score"]
    lines += [f"{n},{g},{t:.8f},{s:.8f}" for n, g, t, s in zip(result.names, result.groups, result.targets, result.scores)]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything the loop touches, so helpers stay short."""

    cfg: TrainConfig
    accelerator: Accelerator
    model: nn.Module
    optimizer: Any
    train_loader: DataLoader
    val_loader: DataLoader
    train_set: Dataset
    norm: Normalizer
    state: TrainerState
    total_steps: int
    log: MetricsLog | None
    out: Path


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, checkpoint, evaluate and export; returns the run summary (also in output_dir/summary.json)."""
    if cfg.runtime.cpu_threads:
        torch.set_num_threads(cfg.runtime.cpu_threads)
    accelerator = make_accelerator(cfg)
    try:
        return _train(cfg, accelerator)
    finally:
        # Dropping references before end_training avoids gloo's random SIGABRT at exit.
        accelerator.free_memory()
        gc.collect()
        accelerator.end_training()


def _train(cfg: TrainConfig, accelerator: Accelerator) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    set_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg)
    if cfg.runtime.sync_batchnorm:
        if accelerator.device.type != "cuda":
            raise TrainingError("runtime.sync_batchnorm needs CUDA (torch's SyncBatchNorm does not run on CPU)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    preprocess = model.pretrained_cfg.preprocess
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    train_set, val_set, train_loader, val_loader = build_loaders(cfg)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    _check_launch(accelerator, train_loader, cfg)
    set_seed(cfg.seed, device_specific=True)  # per-rank dropout streams (seed + rank), as the paper

    steps_per_epoch = math.ceil(len(train_loader) / cfg.runtime.grad_accum)
    total = cfg.max_steps or cfg.schedule.epochs * steps_per_epoch
    state = TrainerState(num_processes=accelerator.num_processes, distributed_type=str(accelerator.distributed_type.value))
    resume = resolve_resume(cfg.resume, out)
    if resume is not None:
        state = _load_checkpoint(accelerator, resume)
    else:
        _claim_output_dir(accelerator, cfg)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
    log = MetricsLog(out, tensorboard=cfg.log.tensorboard, keep_until_step=state.step) if accelerator.is_main_process else None
    run = Run(cfg, accelerator, model, optimizer, train_loader, val_loader, train_set,
              Normalizer(preprocess, cfg.model.channels_last), state, total, log, out)
    _print_header(run, steps_per_epoch, resume)
    t0 = time.perf_counter()
    final_eval = _loop(run)
    return _finish(run, final_eval, time.perf_counter() - t0)


def _claim_output_dir(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """A fresh run must not mix its checkpoints with an older run's (keep-last-K would delete the new ones)."""
    old = checkpoint_dir(cfg.output_dir)
    if not list_checkpoints(cfg.output_dir):
        return
    if not cfg.overwrite:
        raise TrainingError(
            f"{old} holds checkpoints of an earlier run: continue it with resume=latest, or start over with "
            "overwrite=true (deletes them), or choose another output_dir"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _check_launch(accelerator: Accelerator, train_loader: DataLoader, cfg: TrainConfig) -> None:
    if len(train_loader) == 0:
        raise TrainingError(
            f"no full training batch per process: {len(train_loader.dataset)} samples, batch_size "
            f"{cfg.loader.batch_size} x {accelerator.num_processes} processes (drop_last); use more data or a smaller batch"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != accelerator.num_processes or (world > 1 and accelerator.distributed_type == DistributedType.NO):
        raise TrainingError(
            f"launcher started {world} processes but Accelerate runs {accelerator.num_processes} "
            f"({accelerator.distributed_type}); on CPU launch with ACCELERATE_USE_CPU=1 --multi_gpu (see recipes/README.md)"
        )


def _load_checkpoint(accelerator: Accelerator, folder: Path) -> TrainerState:
    state = TrainerState.read(folder)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and state.num_processes != accelerator.num_processes:
        raise TrainingError(
            f"{folder} was written by {state.num_processes} DeepSpeed processes; ZeRO checkpoints only resume on "
            f"the same world size (now {accelerator.num_processes})"
        )
    accelerator.load_state(str(folder))
    state.num_processes = accelerator.num_processes
    state.distributed_type = str(accelerator.distributed_type.value)
    return state


def _print_header(run: Run, steps_per_epoch: int, resume: Path | None) -> None:
    a, cfg = run.accelerator, run.cfg
    if not a.is_main_process:
        return
    global_batch = cfg.loader.batch_size * a.num_processes * cfg.runtime.grad_accum
    print(
        f"[drqa train] {a.distributed_type.value} x{a.num_processes} on {a.device} | mixed precision "
        f"{a.mixed_precision} | global batch {global_batch} | {steps_per_epoch} steps/epoch | {run.total_steps} steps "
        f"| stage 2 from {cfg.schedule.unit} {cfg.schedule.stage2_start} | output {run.out}",
        flush=True,
    )
    if resume is not None:
        print(f"[drqa train] resumed from {resume} at step {run.state.step} (epoch {run.state.epoch}, "
              f"batch {run.state.batch_in_epoch})", flush=True)


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


def _epoch_batches(run: Run, epoch: int) -> Iterator[dict[str, Any]]:
    if hasattr(run.train_set, "set_epoch"):
        run.train_set.set_epoch(epoch)  # fresh synthetic samples each epoch, same on every rank
    run.train_loader.set_epoch(epoch)
    loader = run.train_loader
    if run.state.batch_in_epoch:
        loader = run.accelerator.skip_first_batches(run.train_loader, run.state.batch_in_epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
    return rng_neutral(loader, run.accelerator.device)


def _loop(run: Run) -> EvalResult | None:
    a, cfg, state = run.accelerator, run.cfg, run.state
    bar = tqdm(total=run.total_steps, initial=state.step, desc="train", dynamic_ncols=True,
               disable=not (a.is_main_process and cfg.log.progress))
    stage = state.stage  # known across resumes, so a boundary right after a resume still clears momentum
    sums: dict[str, float] = {}
    count = 0
    last_eval: EvalResult | None = None
    evaluated_at = -1
    while state.step < run.total_steps:
        epoch = state.epoch
        for batch in _epoch_batches(run, epoch):
            new_stage = stage_at(cfg.schedule, epoch, state.step)
            if new_stage != stage:
                _enter_stage(run, stage, new_stage)
                stage = new_stage
            state.stage = stage
            set_lr(run.optimizer, base_lr(cfg, state.step, run.total_steps), stage)
            terms = _train_batch(run, batch, stage)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            state.batch_in_epoch += 1
            if not a.sync_gradients:
                continue
            state.step += 1
            bar.update(1)
            if state.step % cfg.log.log_every == 0 or state.step == run.total_steps:
                _log_train(run, bar, stage, epoch, sums, count)
                sums, count = {}, 0
            if cfg.schedule.eval_every_steps and state.step % cfg.schedule.eval_every_steps == 0:
                last_eval, evaluated_at = _eval_and_keep_best(run, stage, epoch), state.step
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < run.total_steps:
                _checkpoint(run)
            if state.step >= run.total_steps:
                break
        else:
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            if (epoch + 1) % cfg.schedule.eval_every_epochs == 0 and evaluated_at != state.step:
                last_eval, evaluated_at = _eval_and_keep_best(run, stage, epoch), state.step
            continue
        if state.batch_in_epoch >= len(run.train_loader):  # max_steps landed exactly on an epoch end
            state.epoch, state.batch_in_epoch = epoch + 1, 0
    bar.close()
    if evaluated_at != state.step:
        last_eval = _eval_and_keep_best(run, stage, state.epoch)
    _checkpoint(run)
    return last_eval


def _enter_stage(run: Run, old: int, new: int) -> None:
    if old:  # branches that start training now begin with a fresh momentum buffer
        clear_momentum(run.optimizer, STAGE_BRANCHES[new] - STAGE_BRANCHES[old])
    if run.accelerator.is_main_process:
        paths = ",".join(STAGE_PATHS[new])
        losses = "d3" if new == 1 else "d1+d2+d4"
        tqdm.write(f"[drqa train] step {run.state.step}: stage {new} (paths {paths}; losses {losses})")


def _train_batch(run: Run, batch: Mapping[str, Any], stage: int) -> dict[str, float]:
    a, cfg, norm = run.accelerator, run.cfg, run.norm
    with a.accumulate(run.model):
        with a.autocast():
            out = run.model(norm(batch["restored"]), norm(batch["degraded"]), norm(batch["restored_2"]),
                            norm(batch["pristine"]), paths=STAGE_PATHS[stage])
        loss = distillation_loss(out, batch["target"], batch["target_2"], stage, cfg.loss)
        if not torch.isfinite(loss.total):
            raise TrainingError(f"non-finite loss {loss.total.item()} at step {run.state.step}: lower optim.lr")
        a.backward(loss.total)
        if a.sync_gradients and cfg.optim.clip_grad_norm and a.distributed_type != DistributedType.DEEPSPEED:
            a.clip_grad_norm_(run.model.parameters(), cfg.optim.clip_grad_norm)  # DeepSpeed clips by its config
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    terms = {k: float(v) for k, v in loss.terms.items()}
    terms["loss"] = float(loss.total.detach())
    return terms


def _log_train(run: Run, bar: tqdm, stage: int, epoch: int, sums: dict[str, float], count: int) -> None:
    a = run.accelerator
    keys = ["loss", *LOSS_TERMS]
    local = torch.tensor([sums.get(k, 0.0) / max(count, 1) for k in keys], device=a.device, dtype=torch.float64)
    mean = a.reduce(local, reduction="mean").cpu().tolist()  # collective: every rank calls it
    if not a.is_main_process:
        return
    row = {k: v for k, v in zip(keys, mean) if k == "loss" or k in sums}
    lr = max(g["lr"] for g in _torch_optimizer(run.optimizer).param_groups)
    bar.set_postfix(stage=stage, **{k: f"{v:.4f}" for k, v in row.items()})
    run.log.write({"split": "train", "step": run.state.step, "epoch": epoch, "stage": stage, "lr": lr, **row})


def _eval_and_keep_best(run: Run, stage: int, epoch: int) -> EvalResult:
    a = run.accelerator
    result = evaluate(a, run.model, run.val_loader, run.norm, desc=f"eval @ step {run.state.step}",
                      progress=run.cfg.log.progress)
    m = result.metrics
    score = m["srcc"] + m["plcc"]
    improved = math.isfinite(score) and (run.state.best_score is None or score > run.state.best_score)
    if improved:  # every rank has the gathered metrics, so the decision is the same everywhere
        run.state.best_score, run.state.best_step = score, run.state.step
        _export(run, run.out / "model_best.safetensors", "best val SRCC+PLCC")
    if a.is_main_process:
        run.log.write({"split": "val", "step": run.state.step, "epoch": epoch, "stage": stage, **m})
        summary = " ".join(f"{k}={v:.3f}" for k, v in m.items() if k in ("srcc", "plcc", "krcc", "grouped_srcc", "grouped_plcc"))
        tqdm.write(f"[drqa eval] step {run.state.step}: {summary} ({len(result.scores)} pairs)")
    return result


def _checkpoint(run: Run) -> Path:
    sync_buffers(run.accelerator, run.model)
    return save_checkpoint(run.accelerator, run.out, run.state, run.cfg.keep_checkpoints)


def _export(run: Run, path: Path, what: str) -> None:
    a = run.accelerator
    state_dict = a.get_state_dict(run.model)  # collective under ZeRO-3
    if a.is_main_process:
        cfg = run.cfg
        provenance = (
            f"trained by drqa_plugin.train ({what}) at step {run.state.step}: data.kind={cfg.data.kind}, "
            f"crop {cfg.data.crop}, {a.num_processes}x{cfg.loader.batch_size} batch, seed {cfg.seed}; "
            f"labels: {'PIPAL MOS' if cfg.data.kind == 'pipal' else 'synthetic, ' + cfg.data.labeller}"
        )
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}  # bf16-safe
        save_weights(tensors, path, arch=cfg.model.arch, provenance=provenance,
                     license="same as the training data and code (MIT code; check the data's licence)")


def _finish(run: Run, final_eval: EvalResult | None, seconds: float) -> dict[str, Any]:
    a, out = run.accelerator, run.out
    sync_buffers(a, run.model)
    _export(run, out / "model.safetensors", "final")
    fingerprints = gather_object([state_fingerprint(a.unwrap_model(run.model))])
    summary = {
        "distributed_type": str(a.distributed_type.value),
        "num_processes": a.num_processes,
        "mixed_precision": a.mixed_precision,
        "deepspeed_autocast": _ds_autocast(a),
        "steps": run.state.step,
        "epochs_started": run.state.epoch,
        "seconds": seconds,
        "rank_fingerprints": list(fingerprints),
        "ranks_identical": len(set(fingerprints)) == 1,
        "final_eval": final_eval.metrics if final_eval else None,
        "best_score": run.state.best_score,
        "best_step": run.state.best_step,
        "model": str(out / "model.safetensors"),
        "model_best": str(out / "model_best.safetensors"),
        "config": to_dict(run.cfg),
    }
    if a.is_main_process:
        if final_eval is not None:
            write_predictions(out / "predictions.csv", final_eval)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        if run.cfg.log.plots:
            write_plots(out, final_eval)
        run.log.close()
    a.wait_for_everyone()
    run.model = run.optimizer = None  # drop references before Accelerate tears down (see train())
    return summary


def _ds_autocast(a: Accelerator) -> bool | None:
    if a.distributed_type != DistributedType.DEEPSPEED:
        return None
    return bool(a.state.deepspeed_plugin.deepspeed_config.get("torch_autocast", {}).get("enabled", False))
