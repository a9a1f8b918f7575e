"""``DRIQAScore`` (torchmetrics) against ``dq.DRIQA``, under DDP (gloo, 2 CPU processes) and in Lightning."""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import downscale, photo
from torch import nn
from torch.nn import functional as F

import drqa_plugin as dq

torchmetrics = pytest.importorskip("torchmetrics")
from drqa_plugin.integrations.torchmetrics import DRIQAScore  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255)


def pairs(size: int = 64, scale: int = 4, n: int = len(PHOTOS)) -> tuple[torch.Tensor, torch.Tensor]:
    """(restored, degraded): photos at ``size`` and their x``scale`` downscaled inputs."""
    restored = torch.stack([_tensor(photo(name, size)) for name in PHOTOS[:n]])
    degraded = torch.stack([_tensor(downscale(photo(name, size), scale)) for name in PHOTOS[:n]])
    return restored, degraded


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return pairs()


@pytest.fixture(scope="module")
def reference(weights_file: Path, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return dq.DRIQA(weights_file)(*data)


def test_class_contract() -> None:
    assert DRIQAScore.higher_is_better is True and DRIQAScore.is_differentiable is True
    assert DRIQAScore.full_state_update is False
    assert (DRIQAScore.plot_lower_bound, DRIQAScore.plot_upper_bound) == (0.0, 1.0)


def test_values_equal_driqa(weights_file: Path, data: tuple[torch.Tensor, torch.Tensor],
                            reference: torch.Tensor) -> None:
    restored, degraded = data
    mean, per_image = DRIQAScore(weights_file), DRIQAScore(weights_file, reduction="none")
    for metric in (mean, per_image):
        metric.update(restored[:3], degraded[:3])          # LQ 1/4 of the output: resized first
        metric.update(preds=restored[3:], target=degraded[3:])
    torch.testing.assert_close(per_image.compute(), reference, rtol=0, atol=1e-6)
    assert float(mean.compute()) == pytest.approx(float(reference.mean()), abs=1e-6)
    assert 0 < float(mean.compute()) < 1
    batch = mean(restored[:2], degraded[:2])               # forward: this batch's value
    assert float(batch) == pytest.approx(float(reference[:2].mean()), abs=1e-6)


@pytest.mark.parametrize("preprocess", ["ckdn", "none"])
def test_forward_is_differentiable(weights_file: Path, data: tuple[torch.Tensor, torch.Tensor],
                                   preprocess: str) -> None:
    restored, degraded = data
    metric = DRIQAScore(weights_file, preprocess=preprocess)
    x = restored[:2].clone().requires_grad_(True)
    value = metric(x, degraded[:2])
    (1 - value).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    expected = dq.DRIQA(weights_file, preprocess=preprocess)(restored[:2], degraded[:2]).mean()
    assert float(value.detach()) == pytest.approx(float(expected), abs=1e-4)


def test_network_frozen_and_in_eval_mode_forever(weights_file: Path,
                                                 data: tuple[torch.Tensor, torch.Tensor]) -> None:
    parent = nn.ModuleDict({"driqa": DRIQAScore(weights_file, preprocess="none"), "head": nn.Linear(2, 2)})
    metric = parent["driqa"]
    parent.train()
    metric.update(*(t[:1] for t in data))
    x = data[0][:1].clone().requires_grad_(True)
    metric(x, data[1][:1]).backward()
    parent.train()
    nets = [metric.net.scorer().model, metric.net.differentiable().net, metric.net._source]
    assert all(not m.training for net in nets for m in net.modules())
    assert all(not p.requires_grad for net in nets for p in net.parameters())
    assert list(metric.parameters()) == [], "the CKDN network is no parameter of the metric"
    assert not any("net" in key for key in parent.state_dict()), "nor part of a checkpoint"


def test_plot(weights_file: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    metric = DRIQAScore(weights_file, preprocess="none")
    values = [metric(*(t[i : i + 1] for t in data)) for i in range(2)]
    fig, ax = metric.plot()
    assert fig is not None and ax is not None
    fig, ax = metric.plot(values)
    assert ax.get_ylim()[0] <= 0.0 and ax.get_ylim()[1] >= 1.0  # the plot bounds


def test_bad_reduction_is_refused(weights_file: Path) -> None:
    with pytest.raises(dq.ConfigError, match="reduction must be one of"):
        DRIQAScore(weights_file, reduction="sum")


# ------------------------------------------------------------------ DDP (gloo)
def _gloo_worker(rank: int, world: int, init_file: str, weights: str, data_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    restored, degraded = torch.load(data_file)
    # preprocess "none" scores the 64 px images as they are: cheap on one thread per process.
    mean = DRIQAScore(weights, preprocess="none")
    per_image = DRIQAScore(weights, reduction="none", preprocess="none")
    for i in range(rank, restored.shape[0], world):        # uneven shards: 3 and 2 images
        for metric in (mean, per_image):
            metric.update(restored[i : i + 1], degraded[i : i + 1])
    torch.save({"mean": mean.compute(), "none": per_image.compute()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path: Path, weights_file: Path,
                                              data: tuple[torch.Tensor, torch.Tensor]) -> None:
    import torch.multiprocessing as mp

    data_file = tmp_path / "data.pt"
    torch.save(data, data_file)
    context = mp.start_processes(
        _gloo_worker,
        args=(2, str(tmp_path / "store"), str(weights_file), str(data_file), str(tmp_path)),
        nprocs=2, join=False, start_method="spawn",
    )
    deadline = 240.0
    start = time.monotonic()
    while not context.join(timeout=5):
        if time.monotonic() - start > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the gloo workers did not finish in time")
    single, single_none = DRIQAScore(weights_file, preprocess="none"), dq.DRIQA(weights_file, preprocess="none")
    single.update(*data)
    order = [0, 2, 4, 1, 3]                               # rank 0's images, then rank 1's
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert float(result["mean"]) == pytest.approx(float(single.compute()), abs=1e-6)
        torch.testing.assert_close(result["none"], single_none(*data)[order], rtol=0, atol=1e-6)


# -------------------------------------------------------------------- Lightning
@pytest.mark.slow
def test_lightning_logs_val_driqa_and_trains_with_the_loss(tmp_path: Path, weights_file: Path) -> None:
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from drqa_plugin.loss import DRIQALoss

    class TinySR(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
            nn.init.zeros_(self.body[0].weight)  # start as bilinear upscaling: outputs stay in range
            self.driqa_loss = DRIQALoss(weights_file, loss_weight=0.1)
            self.driqa = DRIQAScore(weights_file)

        def forward(self, lq: torch.Tensor) -> torch.Tensor:
            return F.interpolate(lq, scale_factor=2, mode="bilinear", align_corners=False) + self.body(lq)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            lq, gt = batch
            sr = self(lq)
            driqa = self.driqa_loss(sr, lq)
            self.log("train/driqa_loss", driqa)
            return F.l1_loss(sr, gt) + driqa

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
            lq, _gt = batch
            self.driqa.update(self(lq).clamp(0, 1), lq)
            self.log("val/driqa", self.driqa)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    gt, lq = pairs(size=32, scale=2, n=4)
    val_gt, val_lq = pairs(size=48, scale=2, n=2)
    model = TinySR()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
    )
    trainer.fit(model, DataLoader(TensorDataset(lq, gt), batch_size=2),
                DataLoader(TensorDataset(val_lq, val_gt), batch_size=1))

    assert not model.driqa_loss.net.training, "DRIQALoss stays in eval mode inside Lightning"
    with torch.no_grad():
        expected = dq.DRIQA(weights_file)(model(val_lq).clamp(0, 1), val_lq).mean()
    assert float(trainer.callback_metrics["val/driqa"]) == pytest.approx(float(expected), abs=1e-5)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val_rows = [r for r in rows if r.get("val/driqa")]
    assert len(val_rows) == 2 and all(0 < float(r["val/driqa"]) < 1 for r in val_rows)
    losses = [float(r["train/driqa_loss"]) for r in rows if r.get("train/driqa_loss")]
    assert len(losses) == 4 and all(math.isfinite(v) and 0 < v < 0.1 for v in losses)
