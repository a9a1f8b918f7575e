"""benchmarks/quality_stats_ranker.py: its statistics on images whose answer is known, the per-input rank
ensemble by hand, and the script end to end on a tiny bank."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality_stats_ranker import (  # noqa: E402
    STATISTICS,
    _blockiness,
    _noise_sigma,
    mean_rank_in_group,
    statistics,
)


def _camera(size: int = 128) -> torch.Tensor:
    from skimage import data

    return torch.from_numpy(data.camera()[:size, 200:200 + size].astype(np.float32) / 255)[None, None]


def _as_rgb8(y: torch.Tensor) -> torch.Tensor:
    return (y.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)


def test_noise_estimate_recovers_the_sigma_of_added_noise() -> None:
    smooth = F.avg_pool2d(_camera(), 5, stride=1, padding=2)
    noise = torch.randn(smooth.shape, generator=torch.Generator().manual_seed(0))
    for sigma in (0.05, 0.1):
        assert float(_noise_sigma(smooth + sigma * noise)[0]) == pytest.approx(sigma, rel=0.15)
    assert float(_noise_sigma(smooth)[0]) < 0.02


def test_blockiness_finds_the_grid_of_nearest_upscaling_only() -> None:
    small = F.avg_pool2d(_camera(), 4)
    nearest = F.interpolate(small, scale_factor=4, mode="nearest")
    bicubic = F.interpolate(small, scale_factor=4, mode="bicubic", align_corners=False)
    # Nearest x4: every step falls on one phase of 4 (ratio 4) and of 2 (ratio 2), in both directions.
    assert float(_blockiness(nearest)[0]) == pytest.approx((math.log(2) + math.log(4)) / 2, abs=0.02)
    # Bicubic's kernel weights repeat every 4 px too, faintly; a photo at its own resolution has no grid.
    assert float(_blockiness(bicubic)[0]) < 0.25
    assert float(_blockiness(_camera())[0]) < 0.1


def test_residual_follows_the_edges_when_a_denoiser_oversmooths() -> None:
    pristine = _camera()
    noisy = pristine + 0.08 * torch.randn(pristine.shape, generator=torch.Generator().manual_seed(1))
    blurred = F.avg_pool2d(F.pad(noisy, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
    stats = statistics(torch.cat([_as_rgb8(pristine), _as_rgb8(blurred)]), _as_rgb8(noisy).expand(2, -1, -1, -1))
    assert stats.shape == (2, len(STATISTICS)) and torch.isfinite(stats).all()
    on_edges = STATISTICS.index("residual on input edges")
    # The oracle removes the noise alone, the box filter also the edges: only its residual follows them.
    assert float(stats[1, on_edges]) > float(stats[0, on_edges]) + 0.3
    noise_out, noise_in = STATISTICS.index("noise out"), STATISTICS.index("noise in")
    assert float(stats[1, noise_in]) > float(stats[1, noise_out]) + 1.0  # the box filter removed most noise


def test_mean_rank_in_group_averages_each_inputs_ranks() -> None:
    a = np.array([0.1, 0.5, 0.9, 10.0, -1.0])
    b = np.array([3.0, 2.0, 1.0, 0.0, 5.0])
    groups = ["x", "x", "x", "y", "y"]
    # Ranks in [0, 1]: a gives x (0, .5, 1), y (1, 0); b gives x (1, .5, 0), y (0, 1).
    assert mean_rank_in_group([a, b], groups) == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.5])
    assert mean_rank_in_group([a], groups) == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.0])


def _tiny_bank(tmp_path: Path):
    from skimage import data

    from drqa_plugin.data.bank import BankConfig, build_bank

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).resize((48, 40), Image.BICUBIC).save(photos / f"{name}.png")
    cfg = BankConfig(photos=str(photos), crop=32, tasks=("sr_x2", "denoise"),
                     restorers=("nearest", "bicubic", "unsharp", "tv", "none"),
                     labellers=("ssim",), val_fraction=0.5, progress=False)
    return build_bank(cfg, tmp_path / "bank")


def test_only_methods_keeps_the_named_restorers_of_each_input(tmp_path: Path) -> None:
    from benchmarks.quality_rank_probe import load_inputs
    from benchmarks.quality_stats_ranker import only_methods

    manifest = _tiny_bank(tmp_path)
    items = manifest.split_items("train")
    inputs = load_inputs(tmp_path / "bank", "train")
    kept = only_methods(inputs, tmp_path / "bank", {"bicubic", "unsharp", "tv"})
    # SR inputs keep bicubic and unsharp; a denoising input keeps tv alone and is dropped.
    assert kept and [x.task for x in kept] == [x.task for x in inputs if x.task == "sr_x2"]
    for x in kept:
        assert sorted(items[r].method for r in x.rows) == ["bicubic", "unsharp"]
        assert len(x.restored) == len(x.labels) == 2
        assert x.labels.tolist() == pytest.approx([items[r].label for r in x.rows])
    with pytest.raises(SystemExit, match="lanczos"):
        only_methods(inputs, tmp_path / "bank", {"lanczos"})


def test_ranker_trains_and_prints_its_rows_next_to_the_baselines(tmp_path: Path, weights_file: Path) -> None:
    manifest = _tiny_bank(tmp_path)
    val = [i for i in manifest.items if i.split == "val"]
    proc = subprocess.run(
        [sys.executable, "benchmarks/quality_stats_ranker.py", "--bank", str(tmp_path / "bank"),
         "--eval", f"{tmp_path / 'bank'}:val", "--steps", "20", "--leave-one-photo-out", "--weights", str(weights_file)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "machine: " in out and "trained a linear scorer on" in out
    weights = [line.split()[1:] for line in out.splitlines() if line.startswith("  ") and line.strip()[0] in "+-"]
    assert sorted(" ".join(w) for w in weights) == sorted(STATISTICS)  # every statistic's weight printed
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines()
            if line.startswith(("statistics", "model", "method", "sharp"))}
    model, ensemble = f"model {weights_file}", f"model {weights_file} + ranker (mean rank in input)"
    inside = "statistics ranker (linear), trained on this split's other photos"
    assert set(rows) == {"statistics ranker (linear)", inside, model, ensemble, "method prior (LOSO)",
                         "sharpness (no reference)"}
    table = out.split("all inputs")[1]
    counts = [int(line.split()[-2]) for line in table.splitlines()[3:9]]
    assert counts == [len(val)] * 6  # every val pair scored, in every row
