"""Training faults: non-finite losses, damaged checkpoints, resuming under a changed config."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_train_distributed import REPO, TINY, _accelerate, _env, _free_port

from drqa_plugin.train.checkpoint import list_checkpoints, resolve_resume, verify_checkpoint

pytestmark = pytest.mark.slow

# A run whose labels are NaN for some samples: the labeller is registered in the training process itself.
NAN_SCRIPT = """
import sys, torch
from drqa_plugin.data import register_labeller, ssim

def nan_sometimes(images, pristine):
    scores = ssim(images, pristine)
    bad = images[:, 0, 0, 0] > 0.6  # a pixel decides: deterministic, some samples of most batches
    return torch.where(bad, torch.full_like(scores, float("nan")), scores)

register_labeller("nan_sometimes", lambda: nan_sometimes)
from drqa_plugin.train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _train(args: list[str], *, ddp: bool = False, script: Path | None = None) -> subprocess.CompletedProcess:
    entry = [str(script)] if script else ["-m", "drqa_plugin.train"]
    if ddp:
        cmd = [*_accelerate(), "--config_file", "recipes/accelerate/cpu_2proc.yaml", "--main_process_port",
               str(_free_port()), *entry, "--config", TINY, *args]
    else:
        cmd = [sys.executable, *entry, "--config", TINY, *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(ddp), capture_output=True, text=True, timeout=300)


@pytest.fixture
def nan_script(tmp_path: Path) -> Path:
    path = tmp_path / "train_with_nan_labels.py"
    path.write_text(NAN_SCRIPT)
    return path


@pytest.mark.parametrize("ddp", [False, True], ids=["1proc", "ddp"])
def test_nonfinite_loss_stops_with_step_stage_term_and_samples(tmp_path, nan_script, ddp) -> None:
    proc = _train([f"output_dir={tmp_path / 'run'}", "data.labeller=nan_sometimes"], ddp=ddp, script=nan_script)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-4000:]
    message = proc.stderr
    assert re.search(r"non-finite loss at step \d+ \(stage [12], epoch \d+\): term\(s\) d[1-4](, d[1-4])* = nan", message)
    assert "batch samples: " in message and "_train_0_" in message  # synthetic sample names
    assert "optim.skip_nonfinite" in message
    assert 'drqa_plugin/train/trainer.py", line' not in message  # our error is one line, not a traceback


def test_skip_nonfinite_skips_counts_and_finishes(tmp_path, nan_script) -> None:
    out = tmp_path / "run"
    proc = _train([f"output_dir={out}", "data.labeller=nan_sometimes", "optim.skip_nonfinite=100"], ddp=True,
                  script=nan_script)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and 1 <= summary["nonfinite_skipped"] <= 6
    assert "skipped a non-finite batch (1 of at most 100)" in proc.stderr + proc.stdout
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r["split"] == "train"]
    assert int(rows[-1]["nonfinite_skipped"]) == summary["nonfinite_skipped"]
    weights = load_file(out / "model.safetensors")
    assert all(bool(t.isfinite().all()) for t in weights.values() if t.is_floating_point())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "run"
    proc = _train([f"output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(finished_run, tmp_path) -> None:
    out = _copy_run(finished_run, tmp_path / "run")
    older, latest = list_checkpoints(out)
    assert verify_checkpoint(latest) is None
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    assert "model.safetensors has" in verify_checkpoint(latest) and "truncated" in verify_checkpoint(latest)
    with pytest.warns(UserWarning, match=f"skipped damaged checkpoint\\(s\\) {latest.name} .*resuming from {older.name}"):
        assert resolve_resume("latest", out) == older
    proc = _train([f"output_dir={out}", "resume=latest", "max_steps=8"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resumed from {older}" in proc.stdout and "skipped damaged checkpoint" in proc.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 8
    # Same size, other bytes: caught by the hash.
    older_file = list_checkpoints(out)[-1] / "model.safetensors"
    data = bytearray(older_file.read_bytes())
    data[-100] ^= 0xFF
    older_file.write_bytes(bytes(data))
    assert "does not match the SHA-256" in verify_checkpoint(list_checkpoints(out)[-1])


def test_interrupted_save_leaves_the_previous_checkpoint_usable(finished_run, tmp_path) -> None:
    out = _copy_run(finished_run, tmp_path / "run")
    latest = list_checkpoints(out)[-1]
    half = out / "checkpoints" / ".tmp-step_00000009"  # what a kill during save leaves behind
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 100)
    assert resolve_resume("latest", out) == latest


def test_resume_under_a_changed_config_is_refused_unless_forced(finished_run, tmp_path) -> None:
    out = _copy_run(finished_run, tmp_path / "run")
    proc = _train([f"output_dir={out}", "resume=latest", "max_steps=8", "loader.batch_size=4", "data.crop=48"])
    assert proc.returncode == 1
    assert "data.crop: 64 -> 48; loader.batch_size: 2 -> 4" in proc.stderr and "resume_force=true" in proc.stderr
    forced = _train([f"output_dir={out}", "resume=latest", "max_steps=8", "loader.batch_size=4", "resume_force=true"])
    assert forced.returncode == 0, forced.stderr[-4000:]
    assert "warning:" in forced.stdout and "loader.batch_size: 2 -> 4" in forced.stdout
    assert not math.isnan(json.loads((out / "summary.json").read_text())["final_eval"]["srcc"])
