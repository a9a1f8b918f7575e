"""The four CKDN distillation losses (plus options of ours) and the two-stage schedule.

Stage 1 optimises only the no-reference ranking term d3; stage 2 optimises the
student (d1), teacher (d2) and feature-distillation (d4) terms. Each stage asks
the model only for the paths its losses need, so the other branches do no work.

Options not in the paper (each 0 = off = the paper; docs/quality.md measures them):

* ``loss.ranking_stage2`` keeps d3 in stage 2 with that weight.
* d5 (``loss.pair``): in stage 2 the student also scores the second restoration of
  the same input, and the difference of its two scores regresses the difference of
  the two labels: the order of restorations *of one input*, which is what a
  validation metric or a loss needs.
* d6 (``loss.mismatch``): in stage 2 the student also scores each restoration against
  another sample's degraded input, and that score is pulled to 0. A model that orders
  the restorations of one input as well with a wrong reference as with the right one
  has not learnt to compare; d6 makes the reference matter.
* d7 (``loss.listwise``, with ``data.group_size``): in stage 2, every two restorations of one
  input in the batch (same crop) are compared through the student's Elo probability that one beats
  the other; the cross-entropy against the labels' Elo probability (the d3 target) pulls the order
  of an input's restorations, all pairs of it at once. At d1's optimum (dr = label) it is 0.
  ``loss.listwise_warmup`` ramps its weight in over the first steps of stage 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from drqa_plugin.models.ckdn import TrainOutputs
from drqa_plugin.train.config import LossConfig, ScheduleConfig

STAGE_PATHS: dict[int, tuple[str, ...]] = {1: ("nr",), 2: ("dr", "fr", "gap")}
LOSS_TERMS = ("d1", "d2", "d3", "d4", "d5", "d6", "d7")
# Stage-2 options: (LossConfig weight, the extra model path it needs or None, the loss term it adds),
# on when weight > 0. d7 ranks the student's own scores (the "dr" path stage 2 always runs).
STAGE2_OPTIONS: tuple[tuple[str, str | None, str], ...] = (
    ("ranking_stage2", "nr", "d3"),
    ("pair", "dr2", "d5"),
    ("mismatch", "drx", "d6"),
    ("listwise", None, "d7"),
)


def _stage2_options_on(cfg: LossConfig) -> list[tuple[str, str | None, str]]:
    return [option for option in STAGE2_OPTIONS if getattr(cfg, option[0]) > 0]


def stage_paths(stage: int, cfg: LossConfig) -> tuple[str, ...]:
    """The model paths ``stage`` needs under ``cfg`` (stage 2 adds ``nr`` / ``dr2`` / ``drx`` for d3 / d5 / d6)."""
    if stage != 2:
        return STAGE_PATHS[stage]
    return STAGE_PATHS[2] + tuple(path for _, path, _ in _stage2_options_on(cfg) if path is not None)


def stage_terms(stage: int, cfg: LossConfig) -> tuple[str, ...]:
    """The loss terms optimised in ``stage`` under ``cfg``."""
    if stage == 1:
        return ("d3",)
    return ("d1", "d2", "d4") + tuple(term for _, _, term in _stage2_options_on(cfg))


def stage_at(schedule: ScheduleConfig, epoch: int, step: int) -> int:
    """1 before the stage boundary, 2 from it on (boundary in epochs or optimiser steps)."""
    position = epoch if schedule.unit == "epoch" else step
    return 1 if position < schedule.stage2_start else 2


def stage2_first_step(schedule: ScheduleConfig, steps_per_epoch: int) -> int:
    """The optimiser step at which stage 2 begins (epochs hold ``steps_per_epoch`` steps each)."""
    return schedule.stage2_start * (steps_per_epoch if schedule.unit == "epoch" else 1)


def listwise_weight(cfg: LossConfig, steps_into_stage2: int | None) -> float:
    """d7's weight after ``steps_into_stage2`` optimiser steps of stage 2 (None: full weight)."""
    if cfg.listwise_warmup <= 0 or steps_into_stage2 is None:
        return cfg.listwise
    return cfg.listwise * min(1.0, (max(steps_into_stage2, 0) + 1) / cfg.listwise_warmup)


def elo_logit(gap: Tensor, rank_scale: float) -> Tensor:
    """The logit of the Elo probability of winning by a quality ``gap``: 10^(gap * scale) as odds."""
    return gap * (rank_scale * math.log(10.0))


def ranking_target(t1: Tensor, t2: Tensor, rank_scale: float) -> Tensor:
    """Elo probability that restored_2 beats restored_1: 1 / (1 + 10^((t1 - t2) * scale))."""
    return torch.sigmoid(elo_logit(t2 - t1, rank_scale))


def listwise_loss(scores: Tensor, targets: Tensor, groups: Tensor, rank_scale: float) -> Tensor:
    """Mean over every pair (i < j) of one group of KL(Elo(t_i - t_j) || Elo(s_i - s_j)), with
    Elo(x) = sigmoid(x * rank_scale * ln 10) the probability that i beats j; 0 where no group has two."""
    i, j = torch.triu(groups[:, None] == groups[None, :], diagonal=1).nonzero(as_tuple=True)
    if i.numel() == 0:
        return scores.sum() * 0.0  # keeps the graph (and DDP's reducer) whole
    logits = elo_logit(scores[i] - scores[j], rank_scale)
    target = ranking_target(targets[j], targets[i], rank_scale)
    entropy = F.binary_cross_entropy(target, target)  # the floor of the cross-entropy: the loss is a KL
    return F.binary_cross_entropy_with_logits(logits, target) - entropy


@dataclass
class StageLoss:
    total: Tensor
    terms: dict[str, Tensor]  # weighted terms that make up ``total`` (detached)


def distillation_loss(
    out: TrainOutputs, target: Tensor, target_2: Tensor, stage: int, cfg: LossConfig,
    group: Tensor | None = None, steps_into_stage2: int | None = None,
) -> StageLoss:
    """Weighted loss of ``stage`` from the model outputs (scores in float32 for stable squares);
    ``group`` (each sample's input) is what d7 pairs by, ``steps_into_stage2`` where its warm-up stands."""
    t1 = target.float()
    terms: dict[str, Tensor] = {}

    def ranking_term(weight: float) -> Tensor:
        if out.nr is None:
            raise ValueError(f"d3 in stage {stage} needs the 'nr' path of the model")
        t3 = ranking_target(t1, target_2.float(), cfg.rank_scale)
        return weight * (out.nr.float() - t3).pow(2).mean()

    if stage == 1:
        terms["d3"] = ranking_term(cfg.ranking)
    elif stage == 2:
        if out.dr is None or out.fr is None or out.feature_gap is None:
            raise ValueError("stage 2 needs the 'dr', 'fr' and 'gap' paths of the model")
        terms["d1"] = cfg.student * (out.dr.float() - t1).pow(2).mean()
        terms["d2"] = cfg.teacher * (out.fr.float() - t1).pow(2).mean()
        terms["d4"] = cfg.distill * out.feature_gap.float().pow(2).mean()
        if cfg.ranking_stage2 > 0:
            terms["d3"] = ranking_term(cfg.ranking_stage2)
        if cfg.pair > 0:
            if out.dr_2 is None:
                raise ValueError("loss.pair > 0 needs the 'dr2' path of the model")
            gap_pred = out.dr.float() - out.dr_2.float()
            terms["d5"] = cfg.pair * (gap_pred - (t1 - target_2.float())).pow(2).mean()
        if cfg.mismatch > 0:
            if out.dr_x is None:
                raise ValueError("loss.mismatch > 0 needs the 'drx' path of the model")
            terms["d6"] = cfg.mismatch * out.dr_x.float().pow(2).mean()
        if cfg.listwise > 0:
            if group is None:
                raise ValueError("loss.listwise > 0 needs each sample's group")
            ranked = listwise_loss(out.dr.float(), t1, group.to(t1.device), cfg.rank_scale)
            terms["d7"] = listwise_weight(cfg, steps_into_stage2) * ranked
    else:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    total = torch.stack(list(terms.values())).sum()
    return StageLoss(total, {k: v.detach() for k, v in terms.items()})
