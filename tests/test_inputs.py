"""Every input a new user tries: each finding of the shipped-defaults review, one test each."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import downscale, photo
from PIL import Image

import drqa_plugin as dq
from drqa_plugin.errors import ConfigError, ImageInputError, WeightsError
from drqa_plugin.loss import DRIQALoss


def drqa(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("drqa", path=str(Path(sys.executable).parent))
    assert exe, "the drqa console script is missing"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    out, lq = root / "out", root / "lq"
    out.mkdir()
    lq.mkdir()
    for name in ("astronaut", "coffee"):
        img = photo(name, 128)
        Image.fromarray(img).save(out / f"{name}.png")
        Image.fromarray(downscale(img, 4)).save(lq / f"{name}.png")
    wide = photo("chelsea", 128)
    Image.fromarray(wide).save(out / "wide.png")
    Image.fromarray(np.array(Image.fromarray(wide).resize((64, 16)))).save(lq / "wide.png")  # other aspect ratio
    return out, lq


def test_per_pair_problems_are_per_pair_failures_naming_both_files(folders, weights_file, tmp_path) -> None:
    out, lq = folders
    csv_path, json_path = tmp_path / "s.csv", tmp_path / "s.json"
    proc = drqa("score", "--weights", str(weights_file), "--restored", str(out), "--degraded", str(lq),
                "--out", str(csv_path), "--quiet")
    assert proc.returncode == 1
    assert f"{out / 'wide.png'} vs {lq / 'wide.png'}" in proc.stderr and "aspect ratio" in proc.stderr
    rows = {Path(r["restored"]).name: r for r in csv.DictReader(csv_path.open())}
    assert rows["wide.png"]["score"] == "" and "aspect ratio" in rows["wide.png"]["error"]
    assert float(rows["coffee.png"]["score"]) > 0 and rows["coffee.png"]["error"] == ""
    drqa("score", "--weights", str(weights_file), "--restored", str(out), "--degraded", str(lq),
         "--out", str(json_path), "--quiet")
    report = json.loads(json_path.read_text())
    assert len(report["scores"]) == 2 and [Path(f["restored"]).name for f in report["failures"]] == ["wide.png"]


def test_too_small_for_whole_image_protocol_fails_only_that_pair(tmp_path, weights_file) -> None:
    out, lq = tmp_path / "out", tmp_path / "lq"
    out.mkdir()
    lq.mkdir()
    Image.fromarray(photo("coffee", 96)).save(out / "ok.png")
    Image.fromarray(photo("coffee", 96)).save(lq / "ok.png")
    Image.fromarray(photo("rocket", 16)).save(out / "tiny.png")
    Image.fromarray(photo("rocket", 16)).save(lq / "tiny.png")
    proc = drqa("score", "--weights", str(weights_file), "--restored", str(out), "--degraded", str(lq),
                "--preprocess", "none", "--quiet")
    assert proc.returncode == 1 and "too small" in proc.stderr and "tiny.png vs" in proc.stderr
    assert "ok.png" in proc.stdout


def test_swapped_arguments_warn(weights_file) -> None:
    restored = photo("coffee", 64)
    with pytest.warns(UserWarning, match="larger than the restored image \\(32x32\\); are restored and degraded swapped"):
        dq.DRIQA(weights_file)(downscale(restored, 2), restored)


@pytest.mark.parametrize("spelling", ["bf16", "bfloat16", torch.bfloat16])
def test_one_precision_vocabulary(spelling, weights_file, random_model) -> None:
    restored = photo("coffee", 64)
    lq = downscale(restored, 2)
    fp32 = dq.DRIQA(weights_file)(restored, lq)
    assert dq.DRIQA(weights_file, dtype=spelling).dtype == torch.bfloat16
    assert (dq.DRIQA(weights_file, dtype=spelling)(restored, lq) - fp32).abs().max() < 2e-3
    assert dq.load_model(weights_file, dtype=spelling).head[0].weight.dtype == torch.bfloat16
    assert DRIQALoss(random_model, precision=spelling).cfg.precision == "bf16"
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        dq.DRIQA(weights_file, dtype="fp8")


def test_device_without_gpu_is_one_line(folders, weights_file) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no usable CUDA GPU; use cpu"):
        dq.DRIQA(weights_file, device="cuda")
    out, lq = folders
    proc = drqa("score", "--weights", str(weights_file), "--restored", str(out / "coffee.png"),
                "--degraded", str(lq / "coffee.png"), "--device", "cuda")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no usable CUDA GPU" in proc.stderr


def test_a_pth_given_as_weights_says_run_convert(tmp_path) -> None:
    ckpt = tmp_path / "model_best.pth"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(WeightsError, match=f"run `drqa convert {ckpt} OUT.safetensors`"):
        dq.DRIQA(ckpt)


def test_random_weights_warn() -> None:
    with pytest.warns(UserWarning, match="randomly initialised"):
        dq.DRIQA(dq.create_model())


def test_loss_refuses_0_255_floats(random_model) -> None:
    loss = DRIQALoss(random_model)
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ImageInputError, match="0-255 values\\? divide by 255"):
        loss(x * 255, x)
    with pytest.raises(ImageInputError, match="restored must hold values in \\[0, 1\\]; got range \\[nan"):
        loss(torch.full_like(x, float("nan")), x)
    assert torch.isfinite(loss(x * 1.2 - 0.1, x))  # a generator's overshoot is fine


def test_weights_files_are_world_readable(tmp_path, random_model) -> None:
    path = dq.save_model(random_model, tmp_path / "w.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~umask


def test_cli_version_info_order_and_plain_help(weights_file) -> None:
    assert drqa("--version").stdout.strip() == f"drqa-plugin {dq.__version__}"
    keys = [line.split(":", 1)[0] for line in drqa("info", str(weights_file)).stdout.splitlines()]
    assert keys[:3] == ["format", "format_version", "arch"] and keys == keys[:8] + sorted(keys[8:])
    assert "``" not in drqa("--help").stdout and "``" not in drqa("score", "--help").stdout


@pytest.mark.parametrize(
    "metric, loss, message",
    [
        ({"better": "lower"}, {}, "higher-is-better"),
        ({"precision": "fp8"}, {}, "val.metrics.dr \\(calculate_driqa\\): unknown precision 'fp8'"),
        ({"preprocess": "crop"}, {}, "preprocess must be one of"),
        ({"reference_interpolation": "lanczos"}, {}, "reference_interpolation must be one of"),
        ({}, {"precision": "int8"}, "train.driqa_opt \\(DRIQALoss\\): unknown precision 'int8'"),
        ({}, {"reference_interpolation": "cubic"}, "train.driqa_opt \\(DRIQALoss\\): reference_interpolation"),
    ],
)
def test_basicsr_values_are_checked_before_anything_starts(weights_file, metric, loss, message, tmp_path,
                                                            monkeypatch) -> None:
    from drqa_plugin.errors import OptionError
    from drqa_plugin.integrations.basicsr import launcher

    options = {
        "name": "bad_values", "model_type": "DRIQASRModel", "num_gpu": 0,
        "network_g": {"type": "MSRResNet", "num_feat": 8, "num_block": 1, "upscale": 2},
        "train": {"driqa_opt": {"weights": str(weights_file), **loss}},
        "val": {"metrics": {"dr": {"type": "calculate_driqa", "weights": str(weights_file), **metric}}},
    }
    path = tmp_path / "opt.yml"
    import yaml

    path.write_text(yaml.safe_dump(options))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        launcher.run(lambda root: pytest.fail("BasicSR must not start"), ["-opt", str(path)], is_train=True)
    assert not (tmp_path / "experiments").exists()
    with pytest.raises(OptionError, match=message):
        from drqa_plugin.integrations.basicsr import validate

        validate.check_options(options, is_train=True)
