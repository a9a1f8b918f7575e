"""benchmarks/quality_rank_probe.py: its listwise loss by hand, and the script end to end on a tiny bank."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality_rank_probe import listwise_loss  # noqa: E402


def test_listwise_loss_is_ranknet_over_pairs_of_one_input() -> None:
    scores = torch.tensor([2.0, 0.0, 1.0, 5.0, -5.0])
    labels = torch.tensor([0.9, 0.1, 0.1, 0.3, 0.2])
    group = torch.tensor([0, 0, 0, 1, 1])
    # Pairs of one input with different labels, both orders: (0,1), (0,2) in group 0 (1 and 2 tie,
    # left out) and (3,4) in group 1. Scores 3 and 4 come from different inputs than 0-2: never compared.
    # In each pair the first has the higher label; its score leads by 2, 1 and 10.
    terms = []
    for gap in (2.0, 1.0, 10.0):
        terms += [math.log1p(math.exp(-gap)), math.log1p(math.exp(-gap))]  # (i,j) target 1 and (j,i) target 0
    assert float(listwise_loss(scores, labels, group)) == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    # Only the order of the labels counts, not their gaps.
    assert float(listwise_loss(scores, labels * 7, group)) == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_probe_trains_and_prints_its_rows_next_to_the_baselines(tmp_path: Path) -> None:
    from skimage import data

    from drqa_plugin.data.bank import BankConfig, build_bank

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).resize((48, 40), Image.BICUBIC).save(photos / f"{name}.png")
    cfg = BankConfig(photos=str(photos), crop=32, tasks=("sr_x2",), restorers=("nearest", "bicubic", "unsharp"),
                     labellers=("ssim",), val_fraction=0.5, progress=False)
    manifest = build_bank(cfg, tmp_path / "bank")
    val = [i for i in manifest.items if i.split == "val"]
    proc = subprocess.run(
        [sys.executable, "benchmarks/quality_rank_probe.py", "--bank", str(tmp_path / "bank"),
         "--eval", f"{tmp_path / 'bank'}:val", "--steps", "8", "--inputs-per-step", "2", "--crop", "16",
         "--threads", "1", "--save", str(tmp_path / "probe.pt")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "machine: " in out and "trained 8 steps" in out and "listwise, reference on" in out
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines()
            if line.startswith(("rank", "method", "sharp"))}
    assert set(rows) == {"rank probe", "method prior (LOSO)", "sharpness (no reference)"}
    assert all(int(cells[-2]) == len(val) for cells in rows.values())  # every val pair scored, in every row
    state = torch.load(tmp_path / "probe.pt", weights_only=True)
    assert state["body.0.weight"].shape[1] == 9  # restored, input and their difference
