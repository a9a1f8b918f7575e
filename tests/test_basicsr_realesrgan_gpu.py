"""DRIQARealESRGANModel: Real-ESRGAN's real training loop (GPU degradation synthesis) with DR-IQA.

Real-ESRGAN's model calls ``.cuda()`` unconditionally, so this runs only where CUDA
and Real-ESRGAN are available; the CPU parts (registration, option template) are
tested in test_basicsr_units.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import photo
from test_basicsr_pipeline import _save, launch, loss_values, read_log, validation_blocks

import drqa_plugin.integrations.basicsr as adapter
from drqa_plugin.integrations.basicsr import models

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="Real-ESRGAN training needs CUDA"),
    pytest.mark.skipif(models.DRIQARealESRGANModel is None, reason="Real-ESRGAN is not installed"),
]

TEMPLATE = Path(__file__).resolve().parents[1] / "integrations" / "basicsr" / "options" / "train_realesrgan_driqa.yml"


def tiny_realesrgan_options(root: Path, weights: Path) -> dict:
    """The shipped template with tiny networks, data and schedule."""
    opt = yaml.safe_load(TEMPLATE.read_text())
    gt_dir, lq_dir = root / "gt", root / "real_lq"
    names = ("astronaut", "coffee", "chelsea", "rocket")
    for name in names:
        _save(photo(name, 160), gt_dir / f"{name}.png")
    for name in names[:2]:
        _save(photo(name, 56), lq_dir / f"{name}.png")
    (root / "meta_info.txt").write_text("".join(f"{name}.png\n" for name in names))

    opt["name"] = "tiny_realesrgan_driqa"
    opt["num_gpu"] = 1
    opt["gt_size"] = 64
    opt["queue_size"] = 4
    train = opt["datasets"]["train"]
    train.update(dataroot_gt=str(gt_dir), meta_info=str(root / "meta_info.txt"), gt_size=64,
                 num_worker_per_gpu=0, batch_size_per_gpu=2)
    opt["datasets"]["val_1"]["dataroot_lq"] = str(lq_dir)
    opt["network_g"].update(num_feat=16, num_block=1, num_grow_ch=8)
    opt["network_d"]["num_feat"] = 16
    opt["path"] = {"pretrain_network_g": None, "pretrain_network_d": None, "resume_state": None}
    opt["train"].pop("perceptual_opt")  # BasicSR would download VGG19 weights
    opt["train"]["total_iter"] = 6
    opt["train"]["driqa_opt"]["weights"] = str(weights)
    opt["val"].update(val_freq=3, save_img=False)
    opt["val"]["metrics"]["driqa"]["weights"] = str(weights)
    opt["logger"].update(print_freq=1, save_checkpoint_freq=6, use_tb_logger=False)
    return opt


def test_realesrgan_training_with_driqa(tmp_path: Path, weights_file: Path) -> None:
    result = launch("train", tiny_realesrgan_options(tmp_path / "data", weights_file), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "experiments" / "tiny_realesrgan_driqa"
    log = read_log(run, "train_tiny_realesrgan_driqa_*.log")
    driqa = loss_values(log, "l_driqa")
    assert len(driqa) == 6 and all(math.isfinite(v) and 0 < v < 0.05 for v in driqa)
    assert len(loss_values(log, "l_g_gan")) == 6
    blocks = validation_blocks(log)
    assert list(blocks) == ["RealLQ"] and len(blocks["RealLQ"]) == 3
    assert all(set(v) == {"driqa", "niqe"} and 0 < v["driqa"] < 1 for v in blocks["RealLQ"])
    assert (run / "models" / "net_g_6.pth").is_file() and (run / "models" / "net_d_6.pth").is_file()
