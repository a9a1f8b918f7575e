"""The paper's optimiser, the learning-rate schedule and the per-stage branch mask.

Stage 1 trains only the no-reference ranking branch, stage 2 only the
reference branch (both share the restored-image encoder; ``loss.ranking_stage2``
keeps the ranking branch training in stage 2). DDP leaves the
gradients of unused parameters ``None`` (SGD skips them); DeepSpeed ZeRO fills
them with zeros, which SGD would turn into weight decay and stale momentum. So
every backend gets one parameter group per branch, the branches a stage does
not train get ``lr = 0``, and a branch that starts training gets fresh momentum.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from drqa_plugin.errors import TrainingError
from drqa_plugin.train.config import LossConfig, TrainConfig
from drqa_plugin.train.losses import stage_paths

# Which top-level modules each stage trains; a module in no stage set would never move.
BRANCHES: dict[str, tuple[str, ...]] = {
    "shared": ("restored_encoder",),
    "ranking": ("nr_comparator", "nr_head"),
    "reference": ("reference_encoder", "comparator", "head", "detail"),
}
# The branches each model path runs through (``gap`` compares two reference-encoder outputs).
PATH_BRANCHES: dict[str, frozenset[str]] = {
    "nr": frozenset({"shared", "ranking"}),
    "dr": frozenset({"shared", "reference"}),
    "fr": frozenset({"shared", "reference"}),
    "dr2": frozenset({"shared", "reference"}),
    "drx": frozenset({"shared", "reference"}),
    "gap": frozenset({"reference"}),
}


def branch_of(name: str) -> str:
    top = name.split(".", 1)[0]
    for branch, modules in BRANCHES.items():
        if top in modules:
            return branch
    raise TrainingError(f"parameter {name!r} belongs to no training branch; update BRANCHES in drqa_plugin/train/optim.py")


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


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The innermost torch optimizer (under Accelerate's and DeepSpeed's wrappers)."""
    seen = 0
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer") and seen < 5:
        optimizer, seen = optimizer.optimizer, seen + 1
    return optimizer


def stage_branches(stage: int, cfg: LossConfig) -> frozenset[str]:
    """The branches ``stage`` trains under ``cfg``: those its model paths run through (so the ranking
    branch trains in stage 2 too when ``loss.ranking_stage2`` keeps d3 on)."""
    return frozenset().union(*(PATH_BRANCHES[path] for path in stage_paths(stage, cfg)))


def set_lr(optimizer: Any, lr: float, branches: frozenset[str]) -> None:
    """``lr`` for the groups of ``branches``, 0 for the others."""
    for group in torch_optimizer(optimizer).param_groups:
        group["lr"] = lr if group["branch"] in branches else 0.0


def clear_momentum(optimizer: Any, branches: frozenset[str]) -> None:
    """Zero momentum of groups that start training: same as a fresh buffer (SGD then seeds it with the grad)."""
    opt = torch_optimizer(optimizer)
    for group in opt.param_groups:
        if group["branch"] in branches:
            for p in group["params"]:
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buf.zero_()
