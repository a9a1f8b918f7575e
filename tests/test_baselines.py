"""Baselines: leave-one-scene-out method prior, PSNR against the input, sharpness, labeller ceiling, table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drqa_plugin.baselines import (
    METHOD_PRIOR,
    PSNR_CAP,
    PSNR_VS_INPUT,
    SHARPNESS,
    bank_baselines,
    compute_baselines,
    format_table,
    gradient_energy,
    labeller_scores,
    method_prior,
    psnr,
    psnr_vs_input,
    score_rows,
    sharpness,
)
from drqa_plugin.data import DataError


def test_method_prior_leaves_the_scene_out() -> None:
    methods = ["a", "a", "a", "b", "b", "b"]
    scenes = ["s1", "s2", "s3", "s1", "s2", "s3"]
    targets = [1.0, 3.0, 5.0, 10.0, 20.0, 60.0]
    # a in s1 -> mean(3, 5) = 4; a in s2 -> mean(1, 5) = 3; a in s3 -> 2; b: 40, 35, 15
    assert method_prior(methods, targets, scenes) == pytest.approx([4, 3, 2, 40, 35, 15])


def test_method_prior_with_repeated_pairs_in_a_scene() -> None:
    # Two "a" pairs in s1 are both left out for each other.
    prior = method_prior(["a", "a", "a"], [1.0, 2.0, 9.0], ["s1", "s1", "s2"])
    assert prior == pytest.approx([9.0, 9.0, 1.5])


def test_method_prior_fallbacks() -> None:
    # "c" exists only in s1: it gets the mean of every pair of the other scenes.
    prior = method_prior(["a", "a", "c"], [1.0, 3.0, 100.0], ["s1", "s2", "s1"])
    assert prior == pytest.approx([3.0, 1.0, 3.0])
    # One scene only: the mean of all targets, a constant (no information).
    assert method_prior(["a", "b"], [1.0, 2.0], ["s", "s"]) == pytest.approx([1.5, 1.5])


def test_method_prior_errors() -> None:
    with pytest.raises(DataError, match="differ in length"):
        method_prior(["a"], [1.0, 2.0], ["s", "t"])
    with pytest.raises(DataError, match="needs a method name"):
        method_prior(["a", ""], [1.0, 2.0], ["s", "t"])
    with pytest.raises(DataError, match="empty set"):
        method_prior([], [], [])
    with pytest.raises(DataError, match="must be finite"):
        method_prior(["a"], [math.nan], ["s"])


def test_psnr_against_the_upsampled_input() -> None:
    restored = np.zeros((4, 6, 3))
    degraded = np.full((2, 3, 3), 0.1)  # x2 input: bicubic of a constant stays constant
    assert psnr_vs_input([restored], [degraded]) == pytest.approx([20.0], abs=1e-6)  # MSE 0.01
    same = (np.arange(48).reshape(4, 4, 3) * 5).astype(np.uint8)
    assert psnr_vs_input([same], [same]) == pytest.approx([PSNR_CAP])
    a, b = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)
    assert psnr_vs_input([a], [b]) == pytest.approx([0.0])
    assert psnr(np.zeros((2, 2, 3)), np.full((2, 2, 3), 0.5)) == pytest.approx(-10 * math.log10(0.25))


def test_psnr_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="aspect ratio"):
        psnr_vs_input([np.zeros((8, 8, 3))], [np.zeros((2, 4, 3))])
    with pytest.raises(DataError, match="differ in length"):
        psnr_vs_input([np.zeros((8, 8, 3))], [])
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        psnr_vs_input([np.full((2, 2, 3), 2.0)], [np.zeros((2, 2, 3))])
    with pytest.raises(DataError, match="image file not found|not found"):
        psnr_vs_input([tmp_path / "missing.png"], [np.zeros((2, 2, 3))])


def test_sharpness_is_tenengrad_of_the_luma() -> None:
    import cv2
    import torch
    from skimage import data

    photo = data.astronaut()[:96, :128]
    blurred = cv2.GaussianBlur(photo, (0, 0), 2.0)
    got = sharpness([photo, blurred, np.full((5, 7, 3), 0.4), np.zeros((1, 1, 3))])
    assert got[0] > 2 * got[1] > 0 and got[2:] == pytest.approx([0.0, 0.0], abs=1e-12)  # constants: no gradient
    # OpenCV's Sobel with replicated edges, on the same BT.601 luma, is the reference.
    luma = (photo.astype(np.float32) / 255) @ np.array([0.299, 0.587, 0.114], np.float32)
    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    assert got[0] == pytest.approx(float((gx ** 2 + gy ** 2).mean()), rel=1e-5)
    # A horizontal ramp of slope a: 8a inside, 4a in the two edge columns, nothing vertical.
    a, width = 0.01, 10
    ramp = np.broadcast_to((np.arange(width) * a)[None, :, None], (4, width, 3))
    assert sharpness([ramp])[0] == pytest.approx(((width - 2) * (8 * a) ** 2 + 2 * (4 * a) ** 2) / width)
    batch = torch.from_numpy(np.stack([photo, blurred]).transpose(0, 3, 1, 2).copy()).float() / 255
    assert gradient_energy(batch).numpy() == pytest.approx(got[:2], rel=1e-5)
    with pytest.raises(DataError, match=r"\(N,3,H,W\)"):
        gradient_energy(batch[:, :1])


def test_labeller_scores_ceiling() -> None:
    rng = np.random.default_rng(0)
    pristine = rng.uniform(0, 1, (24, 24, 3))
    noisy = np.clip(pristine + rng.normal(0, 0.2, pristine.shape), 0, 1)
    scores = labeller_scores([pristine, noisy], [pristine, pristine], "ssim")
    assert scores[0] == pytest.approx(1.0, abs=1e-5) and scores[1] < 0.9
    with pytest.raises(DataError, match="labeller 'nope'"):
        labeller_scores([pristine], [pristine], "nope")
    with pytest.raises(DataError, match="differ in size"):
        labeller_scores([pristine], [pristine[:12]], "ssim")


@dataclass
class Pair:
    restored: object
    degraded: object
    mos: float
    group: str
    method: str = ""


def test_other_input_references_never_keep_their_own_input() -> None:
    from drqa_plugin.baselines import other_input_references

    groups = ["b", "a", "a", "c", "b", "c", "d"]
    other = other_input_references(groups)
    assert all(groups[j] != g for g, j in zip(groups, other))
    # One partner group per group (every pair of a group gets the same reference), deterministic.
    assert len({(g, groups[j]) for g, j in zip(groups, other)}) == len(set(groups))
    assert other_input_references(groups) == other and other_input_references(["x", "y"]) == [1, 0]
    with pytest.raises(DataError, match="at least two groups"):
        other_input_references(["only", "only"])


def test_compute_baselines_and_table() -> None:
    rng = np.random.default_rng(1)
    pristine = [rng.uniform(0, 1, (16, 16, 3)) for _ in range(3)]
    pairs, clean = [], []
    for g, p in enumerate(pristine):
        low = p[::2, ::2]
        for method, noise in (("good", 0.02), ("bad", 0.3), ("mid", 0.1)):
            restored = np.clip(p + rng.normal(0, noise, p.shape), 0, 1)
            pairs.append(Pair(restored, low, 1000 - 1000 * noise, f"g{g}", method))
            clean.append(p)
    out = compute_baselines(pairs, pristine=clean, labeller="ssim")
    assert list(out) == [METHOD_PRIOR, PSNR_VS_INPUT, SHARPNESS, "labeller ssim"]
    # Same method, same MOS in every scene: the LOSO prior is exact.
    assert out[METHOD_PRIOR] == pytest.approx([p.mos for p in pairs])
    rows = score_rows([p.mos for p in pairs], [p.group for p in pairs], {"model": np.zeros(len(pairs)), **out})
    names = [name for name, _ in rows]
    assert names == ["model", METHOD_PRIOR, PSNR_VS_INPUT, SHARPNESS, "labeller ssim"]
    # Added noise is the only difference between the methods here: sharpness prefers the noisier.
    assert dict(rows)[SHARPNESS].grouped_srcc < -0.5
    prior = dict(rows)[METHOD_PRIOR]
    assert prior.srcc == pytest.approx(1.0) and prior.grouped_srcc == pytest.approx(1.0) and prior.n_groups == 3
    assert dict(rows)["model"].srcc == 0.0  # constant predictions cannot rank
    table = format_table(rows, title="t")
    assert table.splitlines()[0] == "t"
    assert METHOD_PRIOR in table and " 1.0000 " in table and table.count("\n") == 7

    with pytest.raises(DataError, match="pairs have no method"):
        compute_baselines([Pair(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), 1.0, "g", "a"),
                           Pair(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), 2.0, "g")])
    with pytest.raises(DataError, match="needs the pristine"):
        compute_baselines(pairs, labeller="ssim")
    without = compute_baselines([Pair(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), 1.0, "g")])
    assert list(without) == [PSNR_VS_INPUT, SHARPNESS]
    assert list(compute_baselines(pairs, psnr_input=False, sharpness_row=False)) == [METHOD_PRIOR]


def test_bank_baselines(tmp_path: Path) -> None:
    from skimage import data

    from drqa_plugin.data.bank import BankConfig, build_bank

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).resize((48, 40), Image.BICUBIC).save(photos / f"{name}.png")
    cfg = BankConfig(photos=str(photos), crop=32, tasks=("sr_x2",), restorers=("nearest", "bicubic", "unsharp"),
                     labellers=("ssim",), val_fraction=1.0, progress=False)
    manifest = build_bank(cfg, tmp_path / "bank")
    preds, targets, groups = bank_baselines(tmp_path / "bank", split="val", labeller="ssim")
    assert len(targets) == len(manifest.items) == 9 and len(set(groups)) == 3
    assert preds["labeller ssim"] == pytest.approx(targets, abs=1e-5)  # the labeller is the label
    # The LOSO prior of item 0 is the mean label of its method in the other two photos.
    first = manifest.items[0]
    others = [i.label for i in manifest.items if i.method == first.method and i.photo != first.photo]
    assert preds[METHOD_PRIOR][0] == pytest.approx(np.mean(others))
    assert preds[SHARPNESS] == pytest.approx(sharpness([tmp_path / "bank" / i.name for i in manifest.items]))
    with pytest.raises(DataError, match="no items in split 'train'"):
        bank_baselines(manifest, split="train")


def test_drqa_eval_prior_on_a_bank_list_is_the_bank_prior(tmp_path: Path) -> None:
    """`drqa eval --list BANK/val.csv` and the trainer/benchmark agree: methods keyed by task, photos left out."""
    from skimage import data

    from drqa_plugin.data.bank import BankConfig, build_bank
    from drqa_plugin.data.pipal import MOS_OFFSET, MOS_SCALE
    from drqa_plugin.evaluation import read_labelled_list

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).resize((48, 40), Image.BICUBIC).save(photos / f"{name}.png")
    # bicubic restores both tasks, and two crops per photo: a key without the task, or a prior
    # that leaves out only the input, would give other values.
    cfg = BankConfig(photos=str(photos), crop=32, crops_per_photo=2, tasks=("sr_x2", "sr_x4"),
                     restorers=("nearest", "bicubic"), labellers=("ssim",), val_fraction=1.0, progress=False)
    manifest = build_bank(cfg, tmp_path / "bank")
    preds, _, _ = bank_baselines(manifest, split="val", labeller=[])
    by_name = dict(zip((i.name for i in manifest.split_items("val")), preds[METHOD_PRIOR]))
    pairs = read_labelled_list(tmp_path / "bank" / "val.csv")
    assert {p.method for p in pairs} == {"sr_x2/nearest", "sr_x2/bicubic", "sr_x4/nearest", "sr_x4/bicubic"}
    assert {p.photo for p in pairs} == {"astronaut", "coffee", "chelsea"} and len({p.group for p in pairs}) == 12
    prior = compute_baselines(pairs, psnr_input=False)[METHOD_PRIOR]
    expected = [MOS_OFFSET + MOS_SCALE * by_name[p.restored.name] for p in pairs]
    assert prior == pytest.approx(expected, abs=1e-6)
    pooled = compute_baselines(pairs, methods=[p.method.split("/")[1] for p in pairs], psnr_input=False)
    assert not np.allclose(pooled[METHOD_PRIOR], prior)  # the task key matters on this bank


def test_method_ranks_by_hand() -> None:
    from drqa_plugin.baselines import format_method_ranks, method_ranks

    groups = ["g1", "g1", "g1", "g2", "g2", "g2", "g3"]
    methods = ["a", "b", "c", "a", "b", "c", "a"]
    values = [0.1, 0.5, 0.9, 3.0, 1.0, 3.0, 7.0]  # g2 ties a with c; g3 has one pair and is skipped
    ranks = method_ranks(values, groups, methods)
    assert list(ranks) == ["a", "b", "c"]
    assert ranks == pytest.approx({"a": (0.0 + 0.75) / 2, "b": (0.5 + 0.0) / 2, "c": (1.0 + 0.75) / 2})
    assert method_ranks(values, groups, methods, min_group_size=4) == {}
    # A method-recogniser ranks every method the same in every group: its ranks are its order.
    assert method_ranks([3, 2, 1, 3, 2, 1], groups[:6], methods[:6]) == {"a": 1.0, "b": 0.5, "c": 0.0}
    text = format_method_ranks({"label": ranks, "model": {"a": 1.0}}, title="t")
    assert text.splitlines() == ["t", "method   label   model", "a         0.38    1.00",
                                 "b         0.25       -", "c         0.88       -"]
    with pytest.raises(DataError, match="differ in length"):
        method_ranks(values, groups, methods[:3])
