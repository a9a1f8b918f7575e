"""Validation during training: the student (dr) scores of the val split, gathered without duplicates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from drqa_plugin.metrics import Correlations, correlate
from drqa_plugin.train.distributed import rng_neutral, sync_buffers
from drqa_plugin.train.loaders import Normalizer


@dataclass
class ValPredictions:
    """The student's scores on the validation split, with their targets and correlations."""

    correlations: Correlations
    scores: list[float]
    targets: list[float]
    groups: list[int]
    names: list[str]

    @property
    def metrics(self) -> dict[str, float]:
        """The correlations as a flat row (what the metrics log and the summary hold)."""
        return {k: getattr(self.correlations, k) for k in Correlations.FIELDS}


@torch.no_grad()
def predict_val(accelerator: Accelerator, model: nn.Module, loader: DataLoader, norm: Normalizer, desc: str,
                progress: bool = True) -> ValPredictions:
    """Student (dr) scores of the val split on every rank, gathered without duplicates, with their correlations."""
    sync_buffers(accelerator, model)
    model.eval()
    scores: list[float] = []
    targets: list[float] = []
    groups: list[int] = []
    names: list[str] = []
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
    # A sample without a usable label (a labeller's NaN) says nothing about the model: leave it out
    # of the correlations, and say so. A non-finite *prediction* is the model's fault and still fails.
    kept = [i for i, t in enumerate(targets) if math.isfinite(t)]
    if len(kept) < len(targets) and accelerator.is_main_process:
        tqdm.write(f"[drqa eval] {len(targets) - len(kept)} of {len(targets)} val samples have a non-finite "
                   "label and are left out of the correlations")
    kept_scores, kept_targets = [scores[i] for i in kept], [targets[i] for i in kept]
    kept_groups, kept_names = [groups[i] for i in kept], [names[i] for i in kept]
    return ValPredictions(correlate(kept_scores, kept_targets, kept_groups), kept_scores, kept_targets, kept_groups,
                          kept_names)


def write_predictions(path: Path, result: ValPredictions) -> None:
    lines = ["name,group,target,score"]
    lines += [f"{n},{g},{t:.8f},{s:.8f}" for n, g, t, s in zip(result.names, result.groups, result.targets, result.scores)]
    path.write_text("\n".join(lines) + "\n")
