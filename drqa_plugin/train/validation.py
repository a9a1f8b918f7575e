"""Validation during training: the student (dr) scores of the val split, gathered without duplicates,
and the baselines a model must beat on the very same crops (method prior, PSNR vs input, sharpness)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from drqa_plugin.baselines import (
    METHOD_PRIOR,
    PSNR_CAP,
    PSNR_VS_INPUT,
    SHARPNESS,
    gradient_energy,
    method_prior,
    score_rows,
)
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
    psnr_input: list[float]  # PSNR of each restored crop against its degraded reference crop
    sharpness: list[float]  # gradient energy of each restored crop (no reference)
    methods: list[str] | None = None  # restoration method per sample, where the data names it
    photos: list[str] | None = None  # what the method prior leaves out (the photo, else the scene)
    # The same samples scored against another input's degraded crop (log.reference_check), or None.
    other_reference: Correlations | None = None

    def baselines(self) -> dict[str, Correlations]:
        """The baseline rows on the same samples: method prior (where methods are known), PSNR vs input,
        sharpness."""
        preds: dict[str, list[float]] = {PSNR_VS_INPUT: self.psnr_input, SHARPNESS: self.sharpness}
        if self.methods is not None and self.photos is not None and self.targets:
            preds = {METHOD_PRIOR: method_prior(self.methods, self.targets, self.photos).tolist(), **preds}
        return dict(score_rows(self.targets, self.groups, preds))

    @property
    def metrics(self) -> dict[str, float]:
        """The correlations as a flat row (what the metrics log and the summary hold)."""
        return self.correlations.row()


@torch.no_grad()
def predict_val(accelerator: Accelerator, model: nn.Module, loader: DataLoader, norm: Normalizer, desc: str,
                progress: bool = True, other_ref_loader: DataLoader | None = None) -> ValPredictions:
    """Student (dr) scores of the val split on every rank, gathered without duplicates, with their correlations.

    With ``other_ref_loader`` (the same samples in the same order, each against another input's
    degraded crop), also the correlations of those scores with the same targets and groups.
    """
    sync_buffers(accelerator, model)
    model.eval()
    scores: list[float] = []
    targets: list[float] = []
    groups: list[int] = []
    names: list[str] = []
    psnrs: list[float] = []
    sharpness: list[float] = []
    methods: list[str] | None = None
    photos: list[str] | None = None
    bar = tqdm(rng_neutral(loader, accelerator.device), total=len(loader), desc=desc, leave=False,
               disable=not (accelerator.is_main_process and progress))
    for batch in bar:
        with accelerator.autocast():
            s = model(norm(batch["restored"]), norm(batch["degraded"]))
        p = psnr_batch(batch["restored"], batch["degraded"])
        e = gradient_energy(batch["restored"])
        s, t, g, p, e = accelerator.gather_for_metrics((s.float(), batch["target"].float(), batch["group"], p, e))
        scores += s.cpu().tolist()
        targets += t.cpu().tolist()
        groups += g.cpu().tolist()
        psnrs += p.cpu().tolist()
        sharpness += e.cpu().tolist()
        names += list(accelerator.gather_for_metrics(list(batch["name"]), use_gather_object=True))
        if "method" in batch:
            methods = (methods or []) + list(accelerator.gather_for_metrics(list(batch["method"]),
                                                                            use_gather_object=True))
            photos = (photos or []) + list(accelerator.gather_for_metrics(list(batch["photo"]),
                                                                          use_gather_object=True))
    other_scores: list[float] | None = None
    if other_ref_loader is not None:
        other_scores = []
        for batch in tqdm(rng_neutral(other_ref_loader, accelerator.device), total=len(other_ref_loader),
                          desc=f"{desc} (other input's reference)", leave=False,
                          disable=not (accelerator.is_main_process and progress)):
            with accelerator.autocast():
                s = model(norm(batch["restored"]), norm(batch["degraded"]))
            other_scores += accelerator.gather_for_metrics(s.float()).cpu().tolist()
        if len(other_scores) != len(scores):  # pragma: no cover - same dataset length and sampler
            raise RuntimeError(f"reference check scored {len(other_scores)} val samples, the model {len(scores)}")
    model.train()
    # A sample without a usable label (a labeller's NaN) says nothing about the model: leave it out
    # of the correlations, and say so. A non-finite *prediction* is the model's fault and still fails.
    kept = [i for i, t in enumerate(targets) if math.isfinite(t)]
    if len(kept) < len(targets) and accelerator.is_main_process:
        tqdm.write(f"[drqa eval] {len(targets) - len(kept)} of {len(targets)} val samples have a non-finite "
                   "label and are left out of the correlations")
    kept_scores, kept_targets = [scores[i] for i in kept], [targets[i] for i in kept]
    kept_groups, kept_names = [groups[i] for i in kept], [names[i] for i in kept]
    other = None if other_scores is None else correlate([other_scores[i] for i in kept], kept_targets, kept_groups)
    return ValPredictions(correlate(kept_scores, kept_targets, kept_groups), kept_scores, kept_targets, kept_groups,
                          kept_names, [psnrs[i] for i in kept], [sharpness[i] for i in kept],
                          None if methods is None else [methods[i] for i in kept],
                          None if photos is None else [photos[i] for i in kept], other)


def psnr_batch(restored: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (dB) of two (N,3,H,W) batches in [0, 1], capped like :func:`drqa_plugin.baselines.psnr`."""
    mse = (restored.float() - degraded.float()).pow(2).flatten(1).mean(dim=1)  # float32: MPS has no float64
    return (-10.0 * torch.log10(mse.clamp_min(10 ** (-PSNR_CAP / 10)))).float()


def write_predictions(path: Path, result: ValPredictions) -> None:
    lines = ["name,group,target,score"]
    lines += [f"{n},{g},{t:.8f},{s:.8f}" for n, g, t, s in zip(result.names, result.groups, result.targets, result.scores)]
    path.write_text("\n".join(lines) + "\n")
