import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import drqa_plugin as dq
from tests.conftest import downscale, photo

pytestmark = pytest.mark.slow  # every test runs the installed `drqa` console script in a new process


def drqa(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console script (the entry point users type; it must exist)."""
    exe = shutil.which("drqa", path=str(Path(sys.executable).parent))
    assert exe, "the `drqa` console script is missing next to this Python: the entry point is broken"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture()
def folders(tmp_path):
    out, lq = tmp_path / "out", tmp_path / "lq"
    out.mkdir()
    lq.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        img = photo(name, 256)
        Image.fromarray(img).save(out / f"{name}.png")
        Image.fromarray(downscale(img, 4)).save(lq / f"{name}.png")
    return out, lq


def test_score_folders_to_csv(folders, weights_file, tmp_path, random_model):
    out, lq = folders
    csv_path = tmp_path / "scores.csv"
    proc = drqa("score", "--weights", str(weights_file), "--restored", str(out), "--degraded", str(lq),
                "--out", str(csv_path), "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(csv_path.open()))
    assert [Path(r["restored"]).name for r in rows] == ["astronaut.png", "chelsea.png", "coffee.png"]
    expected = dq.DRIQA(random_model)([out / "astronaut.png"], [lq / "astronaut.png"])
    assert abs(float(rows[0]["score"]) - float(expected[0])) < 1e-5
    assert "scored 3 pair(s)" in proc.stdout


def test_unmatched_and_unreadable_files_fail_but_others_are_written(folders, weights_file, tmp_path):
    out, lq = folders
    Image.fromarray(photo("rocket", 128)).save(out / "rocket.png")  # no degraded partner
    (out / "broken.png").write_bytes(b"not an image")
    (lq / "broken.png").write_bytes(b"not an image either")
    json_path = tmp_path / "scores.json"
    proc = drqa("score", "--weights", str(weights_file), "--restored", str(out), "--degraded", str(lq),
                "--out", str(json_path), "--quiet")
    assert proc.returncode == 1
    assert "rocket.png: no degraded image named rocket" in proc.stderr
    assert "cannot read image" in proc.stderr and "broken.png" in proc.stderr
    report = json.loads(json_path.read_text())
    assert len(report["scores"]) == 3 and len(report["errors"]) == 2
    assert report["higher_is_better"] is True


def test_single_pair_prints_score(folders, weights_file):
    out, lq = folders
    proc = drqa("score", "--weights", str(weights_file), "--restored", str(out / "coffee.png"),
                "--degraded", str(lq / "coffee.png"), "--quiet", "--dtype", "bf16")
    assert proc.returncode == 0, proc.stderr
    score = float(proc.stdout.split()[0])
    pair = ([out / "coffee.png"], [lq / "coffee.png"])
    bf16 = float(dq.DRIQA(weights_file, dtype=torch.bfloat16)(*pair)[0])
    assert score == pytest.approx(bf16, abs=1e-5)  # printed with 6 decimals: the bf16 scorer's value
    assert abs(float(dq.DRIQA(weights_file)(*pair)[0]) - bf16) > 1e-4  # which is not the fp32 one (3.5e-4 away)


def test_restored_suffix_pairs_renamed_outputs(folders, weights_file):
    out, lq = folders
    for p in list(out.iterdir()):
        p.rename(p.with_name(p.stem + "_x4.png"))
    proc = drqa("score", "--weights", str(weights_file), "--restored", str(out), "--degraded", str(lq),
                "--restored-suffix", "_x4", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 4  # three scores + the summary


def test_clear_errors_for_bad_arguments(folders, tmp_path, weights_file):
    out, lq = folders
    missing = drqa("score", "--weights", str(tmp_path / "none.safetensors"), "--restored", str(out), "--degraded", str(lq))
    assert missing.returncode == 2 and "weights file not found" in missing.stderr
    mixed = drqa("score", "--weights", str(weights_file), "--restored", str(out), "--degraded", str(lq / "coffee.png"))
    assert mixed.returncode == 2 and "both be files or both be folders" in mixed.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = drqa("score", "--weights", str(weights_file), "--restored", str(empty), "--degraded", str(lq))
    assert none.returncode == 2 and "no images in" in none.stderr


def test_info_prints_metadata(weights_file):
    proc = drqa("info", str(weights_file))
    assert proc.returncode == 0
    assert "arch: ckdn_r50" in proc.stdout and "provenance: random weights for tests" in proc.stdout
