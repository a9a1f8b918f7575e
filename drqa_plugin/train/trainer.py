"""CKDN distillation training with Accelerate (DDP or DeepSpeed ZeRO), CPU or GPU: the loop, top to bottom.

Launch with ``accelerate launch ... -m drqa_plugin.train --config RECIPE k=v``
(see ``recipes/README.md``). The pieces live beside this module, one concern each:
:mod:`.optim` (SGD, schedule, the per-stage branch mask that keeps DeepSpeed from
moving unused branches), :mod:`.distributed` (the Accelerator, DeepSpeed plugin,
BatchNorm buffer sync), :mod:`.loaders`, :mod:`.validation`, :mod:`.checkpoint`,
:mod:`.logs`. Correctness decisions that live here:

* **Data order and resume.** Seedable samplers (``data_seed``) give every rank the
  same permutation per epoch; the dataset's own epoch is set too; the epoch and
  the batch position inside it are stored in the checkpoint and
  ``skip_first_batches`` continues mid-epoch, so a resumed run reproduces the
  uninterrupted one. Dropout uses per-rank seeds (``seed + rank``, as the paper).
* **Inputs** come from the dataset as float RGB in [0, 1]; the trainer normalises
  them with the model's ImageNet mean/std (the same config the exported file carries).
* **Non-finite losses** stop the run with the step, stage, term and sample names,
  never train on NaN silently.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from drqa_plugin.baselines import OTHER_REFERENCE, format_table
from drqa_plugin.errors import ConfigError, TrainingError
from drqa_plugin.pretrained import PreprocessConfig
from drqa_plugin.registry import create_model
from drqa_plugin.train.checkpoint import (
    TrainerState,
    checkpoint_dir,
    list_checkpoints,
    read_run_facts,
    resolve_resume,
    save_checkpoint,
)
from drqa_plugin.train.config import TrainConfig, dump_config, to_dict
from drqa_plugin.train.distributed import (
    all_ranks_finite,
    check_launch,
    deepspeed_autocast,
    make_accelerator,
    rng_neutral,
    state_fingerprint,
    sync_buffers,
)
from drqa_plugin.train.loaders import Normalizer, build_loaders
from drqa_plugin.train.logs import MetricsLog, write_plots
from drqa_plugin.train.losses import (
    LOSS_TERMS,
    StageLoss,
    distillation_loss,
    stage2_first_step,
    stage_at,
    stage_paths,
    stage_terms,
)
from drqa_plugin.train.optim import (
    base_lr,
    clear_momentum,
    make_optimizer,
    set_lr,
    stage_branches,
    torch_optimizer,
)
from drqa_plugin.train.validation import ValPredictions, predict_val, write_predictions
from drqa_plugin.weights import save_weights

__all__ = ["TrainingError", "build_model", "train"]


def build_model(cfg: TrainConfig) -> nn.Module:
    """The network of ``cfg.model``, initialised from ``model.init`` when given, in train mode."""
    model = create_model(cfg.model.arch)
    if cfg.model.init:
        _initialise(model, cfg.model.init)
    return model.train()


def _initialise(model: nn.Module, init: str) -> None:
    """Our weights (a ``.safetensors`` file or a name such as ``ckdn_pipal``: all tensors) or ImageNet
    ResNet-50 weights (``imagenet_resnet50`` or a torchvision ``.pth``: encoders and comparators), or
    ``stlpips_alex`` (the ST-LPIPS AlexNet's conv1-2 into a ``ckdn_alex`` network's encoders).

    Raises:
        WeightsError: a missing, corrupt or mismatched file; it is never retried as another kind.
    """
    from drqa_plugin.convert import STLPIPS_ALEX, init_from_imagenet_resnet50, init_from_stlpips_alex
    from drqa_plugin.hub import get_weights, resolve_weights, weights_names
    from drqa_plugin.weights import check_state_dict, load_state_dict

    if init == STLPIPS_ALEX:  # inside the optional stlpips-pytorch wheel: nothing is downloaded
        from drqa_plugin.data.labellers import stlpips_weights_path

        try:
            init_from_stlpips_alex(model, stlpips_weights_path("alex"))
        except ImportError as exc:
            raise ConfigError(f"model.init {STLPIPS_ALEX}: {exc}") from None
        return
    path = resolve_weights(init)
    imagenet = init in weights_names() and get_weights(init).layout == "torchvision"
    if imagenet or path.suffix != ".safetensors":
        init_from_imagenet_resnet50(model, path)
        return
    tensors, _ = load_state_dict(path)
    check_state_dict(model, tensors, str(path))
    model.load_state_dict(tensors)


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
    other_ref_loader: DataLoader | None = None  # val pairs against another input's reference (log.reference_check)
    stage2_step: int = 0  # the optimiser step at which stage 2 begins (d7's warm-up counts from it)
    # Observed in the last optimiser step / forward, for metrics.csv and summary.json:
    grad_norms: tuple[float, float | None] | None = None  # gradient norm before, after clipping (None: not seen)
    compute_dtype: str | None = None  # dtype the first convolution computed in while training (autocast shows here)


@dataclass
class LoopProgress:
    """What the loop carries between batches (the resumable part lives in :class:`TrainerState`)."""

    stage: int  # stage of the last optimiser step (0: none yet)
    epoch: int  # epoch of the last optimiser step
    sums: dict[str, float] = field(default_factory=dict)  # loss terms since the last log row
    count: int = 0
    last_eval: ValPredictions | None = None
    evaluated_at: int = -1
    best_baseline: str = ""  # the baselines' line, computed once (the val crops do not change)

    def add(self, terms: Mapping[str, float]) -> None:
        if not terms:  # a skipped (non-finite) batch adds nothing to the averages
            return
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1


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
    preprocess: PreprocessConfig = getattr(model, "pretrained_cfg").preprocess  # noqa: B009
    if cfg.model.channels_last and accelerator.distributed_type != DistributedType.DEEPSPEED:
        # DeepSpeed broadcasts parameters through a flat byte view, which channels-last weights do not
        # allow; there the inputs alone are channels-last (Normalizer), which makes oneDNN and cuDNN
        # run the convolutions channels-last all the same.
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    train_set, val_set, train_loader, val_loader, other_ref_loader = build_loaders(cfg)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    if other_ref_loader is not None:
        other_ref_loader = accelerator.prepare(other_ref_loader)
    check_launch(accelerator, train_loader, cfg)
    set_seed(cfg.seed, device_specific=True)  # per-rank dropout streams (seed + rank), as the paper

    steps_per_epoch = math.ceil(len(train_loader) / cfg.runtime.grad_accum)
    total = cfg.max_steps or cfg.schedule.epochs * steps_per_epoch
    state = TrainerState(num_processes=accelerator.num_processes, distributed_type=str(accelerator.distributed_type.value))
    resume = resolve_resume(cfg.resume, out)
    if resume is not None:
        state = _load_checkpoint(accelerator, resume, cfg)
    else:
        _claim_output_dir(accelerator, cfg)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
    log = MetricsLog(out, tensorboard=cfg.log.tensorboard, keep_until_step=state.step) if accelerator.is_main_process else None
    run = Run(cfg, accelerator, model, optimizer, train_loader, val_loader, train_set,
              Normalizer(preprocess, cfg.model.channels_last), state, total, log, out, other_ref_loader,
              stage2_step=stage2_first_step(cfg.schedule, steps_per_epoch))
    _record_compute_dtype(run)
    _print_header(run, steps_per_epoch, resume)
    t0 = time.perf_counter()
    final_eval = _loop(run)
    return _finish(run, final_eval, time.perf_counter() - t0)


def _record_compute_dtype(run: Run) -> None:
    """Keep the dtype the first convolution outputs in training forwards (Accelerate's or DeepSpeed's autocast)."""
    conv = next(m for m in run.accelerator.unwrap_model(run.model).modules() if isinstance(m, nn.Conv2d))

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            run.compute_dtype = str(output.dtype)

    conv.register_forward_hook(hook)


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


def _load_checkpoint(accelerator: Accelerator, folder: Path, cfg: TrainConfig) -> TrainerState:
    state = TrainerState.read(folder)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and state.num_processes != accelerator.num_processes:
        raise TrainingError(
            f"{folder} was written by {state.num_processes} DeepSpeed processes; ZeRO checkpoints only resume on "
            f"the same world size (now {accelerator.num_processes})"
        )
    _check_equivalence(read_run_facts(folder), run_facts(cfg, accelerator), folder, cfg.resume_force,
                       accelerator.is_main_process)
    accelerator.load_state(str(folder))
    state.num_processes = accelerator.num_processes
    state.distributed_type = str(accelerator.distributed_type.value)
    return state


def run_facts(cfg: TrainConfig, accelerator: Accelerator) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the checkpoint to continue it exactly."""
    return {
        "num_processes": accelerator.num_processes,
        "loader.batch_size": cfg.loader.batch_size,
        "runtime.grad_accum": cfg.runtime.grad_accum,
        "data.kind": cfg.data.kind,
        "data.crop": cfg.data.crop,
        "data.group_size": cfg.data.group_size,
        "data.seed": cfg.data.seed,
        "data.num_samples": cfg.data.num_samples,
        "seed": cfg.seed,
    }


def _check_equivalence(then: dict[str, Any], now: dict[str, Any], folder: Path, force: bool, is_main: bool) -> None:
    changed = [f"{k}: {then[k]!r} -> {now[k]!r}" for k in sorted(now) if k in then and then[k] != now[k]]
    if not changed:
        return
    message = (f"{folder} was written under another setting ({'; '.join(changed)}); the resumed run would not "
               "continue the interrupted one")
    if not force:
        raise TrainingError(message + ". Restore the setting, or pass resume_force=true to continue anyway")
    if is_main:
        print(f"[drqa train] warning: {message} (resume_force=true)", flush=True)


def _print_header(run: Run, steps_per_epoch: int, resume: Path | None) -> None:
    a, cfg = run.accelerator, run.cfg
    if not a.is_main_process:
        return
    global_batch = cfg.loader.batch_size * a.num_processes * cfg.runtime.grad_accum
    print(
        f"[drqa train] {_launch_kind(a)} on {a.device} | mixed precision "
        f"{'off' if a.mixed_precision == 'no' else a.mixed_precision} | global batch {global_batch} | "
        f"{steps_per_epoch} steps/epoch | {run.total_steps} steps "
        f"| stage 2 from {cfg.schedule.unit} {cfg.schedule.stage2_start} | output {run.out}",
        flush=True,
    )
    if resume is not None:
        print(f"[drqa train] resumed from {resume} at step {run.state.step} (epoch {run.state.epoch}, "
              f"batch {run.state.batch_in_epoch})", flush=True)


def _launch_kind(a: Accelerator) -> str:
    if a.distributed_type == DistributedType.NO:
        return "single process"
    kind = {DistributedType.MULTI_CPU: "DDP (CPU, gloo)", DistributedType.MULTI_GPU: "DDP",
            DistributedType.DEEPSPEED: "DeepSpeed"}.get(a.distributed_type, str(a.distributed_type.value))
    return f"{kind} x {a.num_processes} processes"


def _epoch_batches(run: Run, epoch: int) -> Iterator[dict[str, Any]]:
    if hasattr(run.train_set, "set_epoch"):
        run.train_set.set_epoch(epoch)  # fresh synthetic samples each epoch, same on every rank
    run.train_loader.set_epoch(epoch)  # type: ignore[attr-defined]  # Accelerate's prepared loader
    loader = run.train_loader
    if run.state.batch_in_epoch:
        loader = run.accelerator.skip_first_batches(run.train_loader, run.state.batch_in_epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
    return rng_neutral(loader, run.accelerator.device)


def _loop(run: Run) -> ValPredictions | None:
    """Epochs of micro-batches until ``total_steps`` optimiser steps; returns the last validation."""
    state = run.state
    progress = LoopProgress(stage=state.stage, epoch=state.epoch)
    bar = tqdm(total=run.total_steps, initial=state.step, desc="train", dynamic_ncols=True,
               disable=not (run.accelerator.is_main_process and run.cfg.log.progress))
    while state.step < run.total_steps:
        epoch = state.epoch
        for batch in _epoch_batches(run, epoch):
            _micro_step(run, batch, epoch, progress, bar)
            if state.step >= run.total_steps:
                break
        if state.batch_in_epoch >= len(run.train_loader):  # the epoch is complete (also when max_steps ends it)
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            if (epoch + 1) % run.cfg.schedule.eval_every_epochs == 0 and progress.evaluated_at != state.step:
                _evaluate(run, progress)
    bar.close()
    if progress.evaluated_at != state.step:
        _evaluate(run, progress)
    _checkpoint(run)
    return progress.last_eval


def _micro_step(run: Run, batch: Mapping[str, Any], epoch: int, progress: LoopProgress, bar: tqdm) -> None:
    """One micro-batch; on the micro-batch that completes an optimiser step: log, evaluate, checkpoint."""
    cfg, state = run.cfg, run.state
    stage = stage_at(cfg.schedule, epoch, state.step)
    if stage != progress.stage:
        _enter_stage(run, progress.stage, stage)
        progress.stage = stage
    state.stage = stage
    set_lr(run.optimizer, base_lr(cfg, state.step, run.total_steps), stage_branches(stage, cfg.loss))
    progress.add(_train_batch(run, batch, stage))
    state.batch_in_epoch += 1
    if not run.accelerator.sync_gradients:
        return
    state.step += 1
    progress.epoch = epoch
    bar.update(1)
    if state.step % cfg.log.log_every == 0 or state.step == run.total_steps:
        _log_train(run, bar, progress)
    if cfg.schedule.eval_every_steps and state.step % cfg.schedule.eval_every_steps == 0:
        _evaluate(run, progress)
    if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < run.total_steps:
        _checkpoint(run)


def _enter_stage(run: Run, old: int, new: int) -> None:
    if old:  # branches that start training now begin with a fresh momentum buffer
        clear_momentum(run.optimizer, stage_branches(new, run.cfg.loss) - stage_branches(old, run.cfg.loss))
    if run.accelerator.is_main_process:
        paths = ",".join(stage_paths(new, run.cfg.loss))
        losses = "+".join(stage_terms(new, run.cfg.loss))
        tqdm.write(f"[drqa train] step {run.state.step}: stage {new} (paths {paths}; losses {losses})")


def _train_batch(run: Run, batch: Mapping[str, Any], stage: int) -> dict[str, float]:
    a, cfg, norm = run.accelerator, run.cfg, run.norm
    with a.accumulate(run.model):
        with a.autocast():
            out = run.model(norm(batch["restored"]), norm(batch["degraded"]), norm(batch["restored_2"]),
                            norm(batch["pristine"]), paths=stage_paths(stage, cfg.loss))
        loss = distillation_loss(out, batch["target"], batch["target_2"], stage, cfg.loss, group=batch.get("group"),
                                 steps_into_stage2=run.state.step - run.stage2_step)
        if not all_ranks_finite(a, loss.total):  # collective: every rank takes the same branch
            _skip_nonfinite(run, batch, stage, loss)
            return {}
        a.backward(loss.total)
        if a.sync_gradients and cfg.optim.clip_grad_norm and a.distributed_type != DistributedType.DEEPSPEED:
            before = a.clip_grad_norm_(run.model.parameters(), cfg.optim.clip_grad_norm)  # DeepSpeed clips by its config
            run.grad_norms = (float(before), _grad_norm(run.model))
        elif a.sync_gradients and a.distributed_type == DistributedType.DEEPSPEED:
            engine: Any = run.model
            before = engine.get_global_grad_norm()  # DeepSpeed stepped (and clipped) inside backward
            run.grad_norms = None if before is None else (float(before), None)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    terms = {k: float(v) for k, v in loss.terms.items()}
    terms["loss"] = float(loss.total.detach())
    return terms


def _grad_norm(model: nn.Module) -> float:
    """The global L2 norm of the current gradients (after clipping, when called after it)."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _skip_nonfinite(run: Run, batch: Mapping[str, Any], stage: int, loss: StageLoss) -> None:
    """Drop this optimiser step on every rank, or stop the run when the budget is spent."""
    a, state = run.accelerator, run.state
    if state.nonfinite_skipped >= run.cfg.optim.skip_nonfinite:
        raise TrainingError(_nonfinite_message(run, batch, stage, loss.terms))
    state.nonfinite_skipped += 1
    if a.is_main_process:
        tqdm.write(f"[drqa train] skipped a non-finite batch ({state.nonfinite_skipped} of at most "
                   f"{run.cfg.optim.skip_nonfinite}): " + _nonfinite_message(run, batch, stage, loss.terms))
    if a.distributed_type in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        # DDP expects a backward after every forward; a zero loss keeps its reducer in step.
        a.backward(torch.nan_to_num(loss.total, nan=0.0, posinf=0.0, neginf=0.0) * 0.0)
    run.optimizer.zero_grad(set_to_none=True)  # DeepSpeed steps inside backward, so it never got one


def _nonfinite_message(run: Run, batch: Mapping[str, Any], stage: int, terms: Mapping[str, torch.Tensor]) -> str:
    bad = [k for k, v in terms.items() if not torch.isfinite(v)]
    names = list(batch.get("name", []))
    shown = ", ".join(map(str, names[:8])) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")
    where = f"at step {run.state.step + 1} (stage {stage}, epoch {run.state.epoch})"
    if not bad:  # finite here: another process's batch was not
        return (f"non-finite loss on another process {where}; this process's batch was finite "
                f"({shown or 'unnamed'}); see that process's message for the term and samples")
    return (
        f"non-finite loss {where}: term(s) {', '.join(bad)} = {', '.join(str(float(terms[k])) for k in bad)}; "
        f"batch samples: {shown or 'unnamed'}. Check those inputs and labels, or lower optim.lr / set "
        "optim.clip_grad_norm (optim.skip_nonfinite=N skips up to N such batches)"
    )


def _log_train(run: Run, bar: tqdm, progress: LoopProgress) -> None:
    a = run.accelerator
    keys = ["loss", *LOSS_TERMS]
    count = max(progress.count, 1)
    local = torch.tensor([progress.sums.get(k, 0.0) / count for k in keys], device=a.device, dtype=torch.float64)
    mean = a.reduce(local, reduction="mean").cpu().tolist()  # collective: every rank calls it
    present = set(progress.sums)
    progress.sums, progress.count = {}, 0
    if not a.is_main_process:
        return
    assert run.log is not None  # the main process always has the log
    row = {k: v for k, v in zip(keys, mean) if k == "loss" or k in present}
    if run.grad_norms is not None:  # of the last optimiser step (the same on every rank after the all-reduce)
        row["grad_norm"] = run.grad_norms[0]
        if run.grad_norms[1] is not None:
            row["grad_norm_clipped"] = run.grad_norms[1]
    lr = max(g["lr"] for g in torch_optimizer(run.optimizer).param_groups)
    bar.set_postfix(stage=progress.stage, **{k: f"{v:.4f}" for k, v in row.items()})
    run.log.write({"split": "train", "step": run.state.step, "epoch": progress.epoch, "stage": progress.stage,
                   "lr": lr, "nonfinite_skipped": run.state.nonfinite_skipped, **row})


def _evaluate(run: Run, progress: LoopProgress) -> None:
    """Validate, keep the best model by SRCC + PLCC (the official criterion), log the row."""
    a = run.accelerator
    result = predict_val(a, run.model, run.val_loader, run.norm, desc=f"eval @ step {run.state.step}",
                         progress=run.cfg.log.progress, other_ref_loader=run.other_ref_loader)
    progress.last_eval, progress.evaluated_at = result, run.state.step
    score = result.correlations.selection_score
    improved = math.isfinite(score) and (run.state.best_score is None or score > run.state.best_score)
    if improved:  # every rank has the gathered metrics, so the decision is the same everywhere
        run.state.best_score, run.state.best_step = score, run.state.step
        _export(run, run.out / "model_best.safetensors", "best val SRCC+PLCC")
    if a.is_main_process:
        assert run.log is not None  # the main process always has the log
        m = result.metrics
        other = {} if result.other_reference is None else {"other_ref_grouped_srcc": result.other_reference.grouped_srcc}
        run.log.write({"split": "val", "step": run.state.step, "epoch": progress.epoch, "stage": progress.stage, **m,
                       **other})
        summary = " ".join(f"{k}={m[k]:.3f}" for k in ("srcc", "plcc", "krcc", "grouped_srcc", "grouped_plcc"))
        tqdm.write(f"[drqa eval] step {run.state.step}: {summary} ({len(result.scores)} pairs)")
        if result.other_reference is not None:
            tqdm.write(f"[drqa eval]   {OTHER_REFERENCE}: grouped_srcc={result.other_reference.grouped_srcc:.3f} "
                       "(a model that compares scores far lower here than with its own input)")
        if not progress.best_baseline:  # they do not change: the full table once, then one line
            baselines = result.baselines()
            rows = [("model", result.correlations), *baselines.items()]
            tqdm.write(format_table(rows, title="[drqa eval] the model next to the baselines on the same val crops:"))
            best = max(baselines.items(), key=lambda kv: _finite_or(kv[1].grouped_srcc, -2.0))
            progress.best_baseline = f"[drqa eval]   best baseline per input: {best[0]} grouped_srcc={best[1].grouped_srcc:.3f}"
        else:
            tqdm.write(progress.best_baseline)


def _finite_or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def _checkpoint(run: Run) -> Path:
    sync_buffers(run.accelerator, run.model)
    return save_checkpoint(run.accelerator, run.out, run.state, run.cfg.keep_checkpoints,
                           run_facts(run.cfg, run.accelerator))


def _export(run: Run, path: Path, what: str) -> None:
    a = run.accelerator
    state_dict = a.get_state_dict(run.model)  # collective under ZeRO-3
    if a.is_main_process:
        cfg = run.cfg
        provenance = (
            f"trained by drqa_plugin.train ({what}) at step {run.state.step}: data.kind={cfg.data.kind}, "
            f"crop {cfg.data.crop}, {a.num_processes}x{cfg.loader.batch_size} batch, seed {cfg.seed}; "
            f"labels: {_label_source(cfg)}"
        )
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}  # bf16-safe
        save_weights(tensors, path, arch=cfg.model.arch, provenance=provenance,
                     license="same as the training data and code (MIT code; check the data's licence)")


def _label_source(cfg: TrainConfig) -> str:
    """Which labels trained the model, for the weights' provenance (a bank names its labellers)."""
    if cfg.data.kind != "pipal":
        return f"synthetic, {cfg.data.labeller}"
    manifest = Path(cfg.data.root or "") / "manifest.json"
    try:
        bank = json.loads(manifest.read_text())
        labellers, combine, own_list = ", ".join(bank["labellers"]), bank["combine"], bank["lists"]["train_list"]
    except (OSError, ValueError, KeyError, TypeError):
        return "MOS of the PIPAL-layout list"
    if Path(cfg.data.list_file or "").name != own_list:  # a list the bank did not write may hold other labels
        return f"restoration bank, list {cfg.data.list_file} (the bank's own labels: {labellers}; {combine})"
    return f"restoration bank ({labellers}; combined by {combine})"


def _deepspeed_facts(run: Run) -> dict[str, Any] | None:
    """What the DeepSpeed engine runs with ("auto" fields resolved), or None without DeepSpeed."""
    if run.accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    engine: Any = run.model  # the DeepSpeed engine Accelerate prepared
    return {
        "zero_stage": engine.zero_optimization_stage(),
        "gradient_clipping": engine.gradient_clipping(),
        "gradient_accumulation_steps": engine.gradient_accumulation_steps(),
        "train_batch_size": engine.train_batch_size(),
        "train_micro_batch_size_per_gpu": engine.train_micro_batch_size_per_gpu(),
    }


def _finish(run: Run, final_eval: ValPredictions | None, seconds: float) -> dict[str, Any]:
    a, out = run.accelerator, run.out
    sync_buffers(a, run.model)
    _export(run, out / "model.safetensors", "final")
    fingerprints = gather_object([state_fingerprint(a.unwrap_model(run.model))])
    summary = {
        "distributed_type": str(a.distributed_type.value),
        "num_processes": a.num_processes,
        "mixed_precision": a.mixed_precision,
        "deepspeed_autocast": deepspeed_autocast(a),
        "deepspeed": _deepspeed_facts(run),
        "train_compute_dtype": run.compute_dtype,
        "steps": run.state.step,
        "epochs_completed": run.state.epoch,
        "nonfinite_skipped": run.state.nonfinite_skipped,
        "seconds": seconds,
        "rank_fingerprints": list(fingerprints),
        "ranks_identical": len(set(fingerprints)) == 1,
        "final_eval": final_eval.metrics if final_eval else None,
        "final_eval_baselines": ({name: c.row() for name, c in final_eval.baselines().items()}
                                 if final_eval else None),
        "final_eval_other_reference": (final_eval.other_reference.row()
                                       if final_eval and final_eval.other_reference else None),
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
        assert run.log is not None
        run.log.close()
    a.wait_for_everyone()
    run.model = run.optimizer = None  # type: ignore[assignment]  # drop references before Accelerate tears down
    return summary
