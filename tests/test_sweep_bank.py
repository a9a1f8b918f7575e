"""benchmarks/quality_sweep_bank.py end to end on tiny banks: the sweeps extend the base bank's own
training inputs, the merged list keeps the base labels and puts the sweeps on their scale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality_sweep_bank import _rescale  # noqa: E402


def test_rescale_gives_the_base_percentile_rank_and_interpolates_between() -> None:
    reference = np.array([0.1, 0.5, 0.3, 0.5, 0.9])  # percentile ranks 0, 0.625, 0.25, 0.625, 1
    out = _rescale(np.array([0.1, 0.3, 0.5, 0.9, 0.4, 0.0, 2.0]), reference)
    assert out[:4] == pytest.approx([0.0, 0.25, 0.625, 1.0])
    assert out[4] == pytest.approx(0.375)  # between 0.3 (rank 2 of 5) and the tied 0.5s
    assert out[5] == 0.0 and out[6] == 1.0  # outside the base range: clipped to its ends


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "benchmarks/quality_sweep_bank.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_sweeps_extend_the_base_banks_training_inputs(tmp_path: Path) -> None:
    from skimage import data

    from drqa_plugin.data.bank import BankConfig, build_bank, load_manifest

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).resize((48, 40), Image.BICUBIC).save(photos / f"{name}.png")
    base_cfg = BankConfig(photos=str(photos), crop=32, tasks=("sr_x4", "denoise"), restorers=("bicubic", "tv", "none"),
                          labellers=("ssim",), combine="rank", progress=False)
    base = build_bank(base_cfg, tmp_path / "base")
    out = _run("build", "--out", str(tmp_path / "sweeps"), "--labeller", "ssim", "--photos", str(photos),
               "--crop", "32", "--crops-per-photo", "1", "--strengths", "2", "--quiet")
    assert "base val photos left out" in out and "restorations of" in out
    sweeps = load_manifest(tmp_path / "sweeps" / "bank")
    train_inputs = {i.input_id for i in base.split_items("train")}
    assert {i.input_id for i in sweeps.items} == train_inputs  # every training input swept, no val input
    tv = {i.method: i for i in sweeps.items if i.input_id.endswith("denoise-0") and i.method.startswith("tv_")}
    assert sorted(tv) == ["tv_s0", "tv_s1"]
    pixels = [np.asarray(Image.open(tmp_path / "sweeps" / "bank" / i.name)) for i in tv.values()]
    assert not np.array_equal(*pixels)  # two strengths, two images
    # The sweeps restore the base bank's very inputs: the same degraded reference files.
    item = next(iter(tv.values()))
    base_ref = next(i.reference for i in base.items if i.input_id == item.input_id)
    assert (Image.open(tmp_path / "base" / base_ref).tobytes()
            == Image.open(tmp_path / "sweeps" / "bank" / item.reference).tobytes())

    out = _run("merge", "--out", str(tmp_path / "sweeps"), "--base", str(tmp_path / "base"))
    assert "schedule.epochs=" in out
    merged = tmp_path / "sweeps" / "merged"
    lines = (merged / "train.txt").read_text().splitlines()
    base_lines = (tmp_path / "base" / "train.txt").read_text().splitlines()
    assert lines[:len(base_lines)] == base_lines  # base labels untouched
    assert len(lines) == len(base_lines) + len(sweeps.items)
    assert (merged / "val.txt").read_text() == (tmp_path / "base" / "val.txt").read_text()
    table = (merged / "train.csv").read_text().splitlines()
    assert len(table) == len(lines) + 1 and {row.split(",")[4] for row in table[1:]} >= {"tv_s0", "tv_s1", "bicubic"}
    for line in lines:
        name, mos = line.split(",")
        assert (merged / name).is_file() and (merged / f"ref_{name}").is_file()
        assert 900.0 <= float(mos) <= 1900.0
    # Within one input the sweep labels keep the order of the labeller's raw scores.
    mos = {line.split(",")[0]: float(line.split(",")[1]) for line in lines}
    raw = {i.name: i.scores["ssim"] for i in sweeps.items}
    for input_id in train_inputs:
        names = sorted((n for n in raw if n.startswith(input_id + "_")), key=raw.get)
        assert [mos[n] for n in names] == sorted(mos[n] for n in names)
