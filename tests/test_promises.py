"""Behaviour the READMEs promise that no other test covered: the demo, DRIQALoss's tiles /
reference_interpolation / fp16 options, calculate_driqa's reload of a rewritten weights file, and
register_labeller. (Trainer promises live in test_train_distributed.py beside the runs they reuse;
`drqa eval --min-group-size` in test_evaluate_cli.py; BasicSR's dist_validation in test_basicsr_units.py.)
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import downscale, photo, randomise_batchnorm

import drqa_plugin as dq
from drqa_plugin.loss import DRIQALoss
from drqa_plugin.preprocess import match_reference_size

REPO = Path(__file__).resolve().parents[1]


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0)


# ----------------------------------------------------------------------------- make demo


@pytest.mark.slow
def test_demo_trains_prints_the_table_and_lists_its_outputs(tmp_path: Path) -> None:
    """`make demo` runs `python -m drqa_plugin.demo`; here with 4 steps instead of 160 (it launches accelerate itself)."""
    from drqa_plugin.demo import held_out_photos, restorations

    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "drqa_plugin.demo", "--output-dir", str(out), "max_steps=4", "checkpoint_every=2",
           "data.val_samples=8", "log.progress=false"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "It is NOT the paper's CKDN model" in text and re.search(r"training took \d+ s", text)

    # The table: one row per restoration method, a score per held-out photo, their mean, and SSIM.
    lines = text.split("x4 super-resolution by different methods:\n\n", 1)[1].splitlines()
    header, rule = lines[0], lines[1]
    assert header.startswith("method") and header.endswith("mean DR  SSIM (FR)") and set(rule) == {"-"}
    photos = [name for name, _ in held_out_photos(4)]  # the demo's validation photos, never trained on
    assert photos and header.split()[1:1 + len(photos)] == [name[:11] for name in photos]
    methods = list(restorations(4))
    rows = {}
    for line in lines[2:2 + len(methods)]:
        name = next(m for m in methods if line.startswith(m))
        rows[name] = [float(v) for v in line[len(name):].split()]
    assert sorted(rows) == sorted(methods)
    means = [values[-2] for values in rows.values()]
    assert means == sorted(means, reverse=True)  # best mean DR first
    for name, values in rows.items():
        scores, mean_dr, ssim_fr = values[:-2], values[-2], values[-1]
        assert len(scores) == len(photos) and all(0.0 < v < 1.0 for v in scores), (name, values)
        assert mean_dr == pytest.approx(np.mean(scores), abs=1e-4)  # printed with 4 decimals
        assert 0.0 < ssim_fr <= 1.0
    assert rows["pristine (perfect)"][-1] == 1.0  # SSIM of the pristine crop against itself
    assert "Rank agreement of the two method means (Spearman):" in text
    # Per photo, next to the baseline that needs no model; and where the quality model would be.
    assert re.search(r"Per photo \(SRCC over the methods, mean over photos\): model [+-]\d\.\d\d; "
                     r"baseline PSNR of the output vs its input [+-]\d\.\d\d", text)
    assert "(No " in text and "quality_cpu.yaml" in text  # no quality model in this folder

    # Where everything is: nothing missing, and the model loads.
    outputs = text.split("\nOutputs:\n", 1)[1].split("\n\n", 1)[0]
    assert "(missing)" not in outputs and len(outputs.splitlines()) == 8
    for name in ("model.safetensors", "model_best.safetensors", "metrics.csv", "predictions.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "plots" / "losses.png").is_file() and (out / "plots" / "scatter.png").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert f"drqa score --weights {out / 'model.safetensors'}" in text
    dq.load_model(out / "model.safetensors")


def test_demo_quality_table_names_its_photos_and_labeller(weights_file: Path, tmp_path: Path) -> None:
    """The second table of the demo: a quality_cpu model next to its own labeller, on photos its bank held out."""
    from drqa_plugin.data.bank import BankConfig, build_bank
    from drqa_plugin.demo import DemoConfig, quality_table

    cfg = DemoConfig(tmp_path, 2, crop=64, scale=4, photos=2, quality_model=weights_file)
    text = quality_table(cfg, weights_file, tmp_path / "no_bank")
    assert "may have been in this model's training data" in text
    # A finished bank: its held-out photos are used, and the demo says so.
    bank = tmp_path / "bank"
    build_bank(BankConfig(include_photos=("astronaut", "coffee", "camera"), val_photos=("coffee",), crop=64,
                          tasks=("denoise",), restorers=("none", "median"), labellers=("ssim",), progress=False),
               bank)
    text = quality_table(cfg, weights_file, bank)
    assert text.startswith(f"Photos: photos held out of the bank {bank}.")
    assert "coffee" in text.splitlines()[1] and "astronaut" not in text
    title = "ST-LPIPS (FR)" if importlib.util.find_spec("stlpips_pytorch") else "SSIM (FR)"
    assert title in text.splitlines()[1] and "Per photo (SRCC over the methods" in text


# ----------------------------------------------------------------------------- DRIQALoss options


@pytest.fixture(scope="module")
def sr_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A 64 px output-like image and its x4 LQ."""
    hr = photo("coffee", 64)
    return as_tensor(hr), as_tensor(downscale(hr, 4))


def test_loss_tiles_is_the_mean_over_tiles(random_model, sr_pair) -> None:
    restored, lq = sr_pair
    tiles = DRIQALoss(random_model, preprocess="tiles", tile_size=32)
    whole = DRIQALoss(random_model)  # preprocess "none": the patch as it is
    with torch.no_grad():
        score = tiles.score(restored, lq)
        up = match_reference_size(lq, (64, 64), "bicubic")
        per_tile = [whole.score(restored[..., y:y + 32, x:x + 32], up[..., y:y + 32, x:x + 32])
                    for y in (0, 32) for x in (0, 32)]
        assert torch.allclose(score, torch.stack(per_tile).mean(0), atol=1e-5)
        assert torch.allclose(score, dq.DRIQA(random_model, preprocess="tiles", tile_size=32)(restored, lq), atol=1e-5)
        assert float((score - whole.score(restored, lq)).abs()) > 1e-4  # tiles are not the whole patch
    restored = restored.clone().requires_grad_(True)
    tiles(restored, lq).backward()
    assert torch.isfinite(restored.grad).all() and restored.grad.abs().sum() > 0


def test_loss_reference_interpolation_resizes_the_lq(random_model, sr_pair) -> None:
    restored, lq = sr_pair
    with torch.no_grad():
        nearest = DRIQALoss(random_model, reference_interpolation="nearest").score(restored, lq)
        by_hand = DRIQALoss(random_model).score(restored, match_reference_size(lq, (64, 64), "nearest"))
        bicubic = DRIQALoss(random_model).score(restored, lq)
    assert torch.allclose(nearest, by_hand, atol=1e-6)
    assert float((nearest - bicubic).abs().max()) > 1e-4


# fp16 vs fp32 on CPU, measured: 8.9e-5 and 1.6e-4 (2 and 4 photo pairs).
FP16_LOSS_ATOL = 1e-3


def test_loss_fp16(random_model, sr_pair) -> None:
    restored, lq = sr_pair
    fp16 = DRIQALoss(random_model, precision="fp16")
    assert fp16.cfg.precision == "fp16" and fp16.net.restored_encoder.stem.weight.dtype == torch.float16
    with torch.no_grad():
        diff = float((fp16.score(restored, lq) - DRIQALoss(random_model).score(restored, lq)).abs().max())
    assert 0.0 < diff < FP16_LOSS_ATOL, diff
    restored = restored.clone().requires_grad_(True)
    value = fp16(restored, lq)
    value.backward()
    assert value.dtype == torch.float32 and restored.grad.dtype == torch.float32
    assert torch.isfinite(restored.grad).all() and restored.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- calculate_driqa's cache


def test_calculate_driqa_reloads_a_rewritten_weights_file(tmp_path: Path, random_model) -> None:
    """The scorer cache is keyed by the file's size and mtime: new weights under the same name are used."""
    from drqa_plugin.integrations import common
    from drqa_plugin.integrations.basicsr.metrics import calculate_driqa

    hr = photo("chelsea", 96)
    img, lq = np.ascontiguousarray(hr[..., ::-1]), np.ascontiguousarray(downscale(hr, 2)[..., ::-1])  # BGR
    path = tmp_path / "ckdn.safetensors"
    dq.save_model(random_model, path)
    common.clear_scorer_cache()
    first = calculate_driqa(img, lq=lq, weights=str(path), device="cpu")
    assert calculate_driqa(img, lq=lq, weights=str(path), device="cpu") == first
    assert common.scorer_cache_size() == 1  # unchanged file: the same network

    torch.manual_seed(7)
    retrained = randomise_batchnorm(dq.create_model("ckdn_r50"), seed=7)
    before = path.stat()
    dq.save_model(retrained, path, provenance="random weights for tests")  # same metadata: same size
    # Same size; a rewrite always has a later mtime, made explicit so a coarse file-system clock cannot hide it.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_size == before.st_size
    second = calculate_driqa(img, lq=lq, weights=str(path), device="cpu")
    assert second == pytest.approx(dq.DRIQA(retrained, channel_order="BGR").score_pair(img, lq), abs=1e-6)
    assert abs(second - first) > 1e-4
    assert common.scorer_cache_size() == 2
    common.clear_scorer_cache()


# ----------------------------------------------------------------------------- register_labeller


def test_register_labeller_makes_the_synthetic_targets() -> None:
    from drqa_plugin.data import DataConfig, build_dataset, get_labeller, labellers, register_labeller

    def brightness(images: torch.Tensor, pristine: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3))

    register_labeller("test_brightness", lambda: brightness)
    try:
        ds = build_dataset(DataConfig(crop=32, num_samples=2, labeller="test_brightness"), "train")
        s = ds[0]
        assert float(s["target"]) == pytest.approx(float(s["restored"].mean()), abs=1e-6)
        assert float(s["target_2"]) == pytest.approx(float(s["restored_2"].mean()), abs=1e-6)
        # Registering the name again replaces the instance built before.
        register_labeller("test_brightness", lambda: lambda images, pristine: 1 - images.mean(dim=(1, 2, 3)))
        assert float(ds[0]["target"]) == pytest.approx(1 - float(s["restored"].mean()), abs=1e-6)
    finally:
        labellers._FACTORIES.pop("test_brightness", None)
        get_labeller.cache_clear()
    with pytest.raises(ValueError, match="unknown labeller 'test_brightness'"):
        get_labeller("test_brightness")
