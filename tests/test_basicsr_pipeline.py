"""BasicSR's real train/test pipelines through our launcher, on CPU, with tiny real-photo datasets.

Each run is a fresh ``python -m drqa_plugin.integrations.basicsr.{train,test}`` process
(BasicSR's logger is process-global), in a temporary directory.
"""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import downscale, photo
from PIL import Image

pytestmark = pytest.mark.slow

SCALE = 2
TRAIN_NAME, GAN_NAME, TEST_NAME = "tiny_sr_driqa", "tiny_srgan_driqa", "tiny_test_no_gt"


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def build_datasets(root: Path) -> dict[str, Path]:
    """Paired train set, paired val set and LQ-only val set (x2) from skimage photos."""
    dirs = {k: root / k for k in ("train_gt", "train_lq", "val_gt", "val_lq", "real_lq")}
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        gt = photo(name, 64)
        _save(gt, dirs["train_gt"] / f"{i:03d}.png")
        _save(downscale(gt, SCALE), dirs["train_lq"] / f"{i:03d}.png")
    for i, name in enumerate(("astronaut", "rocket")):
        gt = photo(name, 48)
        _save(gt, dirs["val_gt"] / f"{i:03d}.png")
        _save(downscale(gt, SCALE), dirs["val_lq"] / f"{i:03d}.png")
    for i, name in enumerate(("coffee", "chelsea")):  # "real" LQ images: no GT exists
        _save(photo(name, 100), dirs["real_lq"] / f"real_{i}.png")
    return dirs


def datasets_options(dirs: dict[str, Path]) -> dict:
    disk = {"type": "disk"}
    return {
        "train": {
            "name": "tiny_train",
            "type": "PairedImageDataset",
            "dataroot_gt": str(dirs["train_gt"]),
            "dataroot_lq": str(dirs["train_lq"]),
            "io_backend": disk,
            "gt_size": 32,
            "use_hflip": True,
            "use_rot": False,
            "num_worker_per_gpu": 0,
            "batch_size_per_gpu": 2,
            "dataset_enlarge_ratio": 1,
            "prefetch_mode": None,
        },
        "val_1": {
            "name": "val_paired",
            "type": "PairedImageDataset",
            "dataroot_gt": str(dirs["val_gt"]),
            "dataroot_lq": str(dirs["val_lq"]),
            "io_backend": disk,
        },
        "val_2": {
            "name": "val_lq_only",
            "type": "SingleImageDataset",
            "dataroot_lq": str(dirs["real_lq"]),
            "io_backend": disk,
        },
    }


def generator_options() -> dict:
    return {"type": "MSRResNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1, "upscale": SCALE}


def metrics_options(weights: Path) -> dict:
    return {
        "psnr": {"type": "calculate_psnr", "crop_border": SCALE, "test_y_channel": False},
        "driqa": {"type": "calculate_driqa", "weights": str(weights), "better": "higher", "device": "cpu"},
    }


def common_options(name: str, model_type: str, dirs: dict[str, Path], weights: Path) -> dict:
    return {
        "name": name,
        "model_type": model_type,
        "scale": SCALE,
        "num_gpu": 0,
        "manual_seed": 0,
        "datasets": datasets_options(dirs),
        "network_g": generator_options(),
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
        "val": {"val_freq": 2, "save_img": True, "metrics": metrics_options(weights)},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 4, "use_tb_logger": False, "wandb": {"project": None}},
    }


def sr_options(dirs: dict[str, Path], weights: Path) -> dict:
    opt = common_options(TRAIN_NAME, "DRIQASRModel", dirs, weights)
    opt["train"] = {
        "ema_decay": 0.9,
        "optim_g": {"type": "Adam", "lr": 1e-3, "weight_decay": 0, "betas": [0.9, 0.99]},
        "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5},
        "total_iter": 4,
        "warmup_iter": -1,
        "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
        "driqa_opt": {"type": "DRIQALoss", "weights": str(weights), "loss_weight": 0.1},
    }
    return opt


def gan_options(dirs: dict[str, Path], weights: Path) -> dict:
    opt = common_options(GAN_NAME, "DRIQASRGANModel", dirs, weights)
    opt["network_d"] = {"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 8, "skip_connection": True}
    opt["train"] = {
        "ema_decay": 0,
        "optim_g": {"type": "Adam", "lr": 1e-4, "weight_decay": 0, "betas": [0.9, 0.99]},
        "optim_d": {"type": "Adam", "lr": 1e-4, "weight_decay": 0, "betas": [0.9, 0.99]},
        "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5},
        "total_iter": 4,
        "warmup_iter": -1,
        "pixel_opt": {"type": "L1Loss", "loss_weight": 0.01, "reduction": "mean"},
        "gan_opt": {"type": "GANLoss", "gan_type": "vanilla", "real_label_val": 1.0, "fake_label_val": 0.0,
                    "loss_weight": 0.1},
        "driqa_opt": {"type": "DRIQALoss", "weights": str(weights), "loss_weight": 0.05, "precision": "bf16"},
        "net_d_iters": 1,
        "net_d_init_iters": 0,
    }
    return opt


def launch(module: str, options: dict, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    option_file = cwd / f"{options['name']}.yml"
    option_file.write_text(yaml.safe_dump(options, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", f"drqa_plugin.integrations.basicsr.{module}", "-opt", str(option_file), *extra],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def read_log(folder: Path, pattern: str) -> str:
    logs = sorted(folder.glob(pattern))
    assert logs, f"no log matching {pattern} in {folder}"
    return logs[-1].read_text()


def validation_blocks(log: str) -> dict[str, list[dict[str, float]]]:
    """dataset name -> one {metric: value} dict per validation round, parsed from the BasicSR log."""
    blocks: dict[str, list[dict[str, float]]] = {}
    for match in re.finditer(r"Validation (\S+)\n((?:\s+# .*\n)+)", log):
        values = {m.group(1): float(m.group(2)) for m in re.finditer(r"# (\w+): (\S+)", match.group(2))}
        blocks.setdefault(match.group(1), []).append(values)
    return blocks


def loss_values(log: str, key: str) -> list[float]:
    return [float(v) for v in re.findall(rf"{key}: (\S+)", log)]


# BasicSR logs metrics with 4 decimals; the recomputation runs the same network in another process.
LOGGED_ATOL = 5e-5 + 2e-6


@functools.cache
def _scorer(weights: Path):
    import drqa_plugin as dq

    return dq.DRIQA(weights)


def driqa_of_saved_images(weights: Path, outputs: list[Path], lq_inputs: list[Path]) -> float:
    """The mean DR-IQA score of saved validation outputs against the LQ images they were made from."""
    return float(_scorer(weights)(outputs, lq_inputs).mean())


def check_validation(log: str, run: Path, dirs: dict[str, Path], weights: Path) -> None:
    """Every validation round logged both sets, PSNR only where there is a GT, and each logged DR-IQA
    value is what the scorer gives the saved output images against their LQ inputs (not the GT)."""
    blocks = validation_blocks(log)
    assert set(blocks) == {"val_paired", "val_lq_only"}, blocks
    # Iterations 2 and 4 plus the final validation after training (BasicSR names it iteration 5).
    assert len(blocks["val_paired"]) == 3 and len(blocks["val_lq_only"]) == 3
    for values in blocks["val_paired"]:
        assert set(values) == {"psnr", "driqa"} and values["psnr"] > 5.0
    for values in blocks["val_lq_only"]:
        assert set(values) == {"driqa"}, "PSNR must be skipped on the set without GT"
    assert log.count("Validation set val_lq_only has no GT: skipped psnr") == 1
    images = run / "visualization"
    sets = {"val_paired": (["000", "001"], dirs["val_lq"], dirs["val_gt"]),
            "val_lq_only": (["real_0", "real_1"], dirs["real_lq"], None)}
    for name, (stems, lq_dir, gt_dir) in sets.items():
        for iteration, values in zip((2, 4, 5), blocks[name]):
            outputs = [images / stem / f"{stem}_{iteration}.png" for stem in stems]
            want = driqa_of_saved_images(weights, outputs, [lq_dir / f"{stem}.png" for stem in stems])
            assert values["driqa"] == pytest.approx(want, abs=LOGGED_ATOL), (name, iteration)
            if gt_dir is not None:  # the GT as reference would give a visibly different number
                with_gt = driqa_of_saved_images(weights, outputs, [gt_dir / f"{stem}.png" for stem in stems])
                assert abs(with_gt - want) > 10 * LOGGED_ATOL, (name, iteration, with_gt, want)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("basicsr_runs")


@pytest.fixture(scope="module")
def dirs(workdir: Path) -> dict[str, Path]:
    return build_datasets(workdir / "data")


@pytest.fixture(scope="module")
def sr_run(workdir: Path, dirs: dict[str, Path], weights_file: Path) -> Path:
    result = launch("train", sr_options(dirs, weights_file), workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir / "experiments" / TRAIN_NAME


def test_sr_training_pipeline(sr_run: Path, dirs: dict[str, Path], weights_file: Path) -> None:
    log = read_log(sr_run, f"train_{TRAIN_NAME}_*.log")
    driqa = loss_values(log, "l_driqa")
    assert len(driqa) == 4 and all(math.isfinite(v) and 0 < v < 0.1 for v in driqa)
    assert len(loss_values(log, "l_pix")) == 4
    check_validation(log, sr_run, dirs, weights_file)
    assert (sr_run / "models" / "net_g_4.pth").is_file()
    assert (sr_run / "models" / "net_g_latest.pth").is_file()
    assert (sr_run / "training_states" / "4.state").is_file()
    assert list((sr_run / "visualization").rglob("real_0_4.png")), "validation images of the LQ-only set"


def test_srgan_training_pipeline(workdir: Path, dirs: dict[str, Path], weights_file: Path) -> None:
    result = launch("train", gan_options(dirs, weights_file), workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    run = workdir / "experiments" / GAN_NAME
    log = read_log(run, f"train_{GAN_NAME}_*.log")
    driqa = loss_values(log, "l_driqa")
    assert len(driqa) == 4 and all(math.isfinite(v) and 0 < v < 0.05 for v in driqa)
    for key in ("l_g_pix", "l_g_gan", "l_d_real", "l_d_fake"):
        assert len(loss_values(log, key)) == 4, key
    check_validation(log, run, dirs, weights_file)
    assert (run / "models" / "net_g_4.pth").is_file() and (run / "models" / "net_d_4.pth").is_file()


def test_gt_less_test_pipeline(workdir: Path, dirs: dict[str, Path], weights_file: Path, sr_run: Path) -> None:
    options = {
        "name": TEST_NAME,
        "model_type": "DRIQASRModel",
        "scale": SCALE,
        "num_gpu": 0,
        "manual_seed": 0,
        "datasets": {"test_1": datasets_options(dirs)["val_2"]},
        "network_g": generator_options(),
        "path": {"pretrain_network_g": str(sr_run / "models" / "net_g_latest.pth"), "param_key_g": "params_ema",
                 "strict_load_g": True},
        "val": {"save_img": True, "suffix": None, "metrics": metrics_options(weights_file)},
    }
    options["val"]["metrics"]["niqe"] = {"type": "calculate_niqe", "crop_border": 0, "better": "lower"}
    result = launch("test", options, workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    log = read_log(workdir / "results" / TEST_NAME, f"test_{TEST_NAME}_*.log")
    blocks = validation_blocks(log)
    assert list(blocks) == ["val_lq_only"]
    (values,) = blocks["val_lq_only"]
    assert set(values) == {"driqa", "niqe"}
    folder = workdir / "results" / TEST_NAME / "visualization" / "val_lq_only"
    images = sorted(p.name for p in folder.iterdir())
    assert images == [f"real_0_{TEST_NAME}.png", f"real_1_{TEST_NAME}.png"]
    want = driqa_of_saved_images(weights_file, [folder / name for name in images],
                                 [dirs["real_lq"] / f"real_{i}.png" for i in (0, 1)])
    assert values["driqa"] == pytest.approx(want, abs=LOGGED_ATOL)


def test_unknown_driqa_key_stops_before_basicsr_starts(workdir: Path, dirs: dict[str, Path],
                                                       weights_file: Path) -> None:
    options = sr_options(dirs, weights_file)
    options["name"] = "bad_key"
    options["train"]["driqa_opt"]["loss_wieght"] = 0.1
    result = launch("train", options, workdir)
    assert result.returncode != 0
    assert "unknown option key 'loss_wieght' (did you mean 'loss_weight'?) in train.driqa_opt" in result.stderr
    assert not (workdir / "experiments" / "bad_key").exists()
