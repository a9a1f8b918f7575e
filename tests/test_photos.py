"""Photo folders for a bank: ``gather_photos`` / ``drqa data photos`` and the wallpaper-photo script."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drqa_plugin.cli import main as drqa_main
from drqa_plugin.data import DataError
from drqa_plugin.data.photos import BUNDLED_PHOTOS, gather_photos, list_photos, read_rgb
from tests.conftest import photo

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "wallpaper_photos.sh"


def _save(img: np.ndarray, path: Path, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize(size, Image.BICUBIC).save(path)
    return path


def test_gather_downscales_large_photos_and_copies_small_ones(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    big = _save(photo("coffee"), a / "coffee.jpg", (900, 600))
    small = _save(photo("chelsea"), b / "deeper" / "chelsea.png", (300, 200))
    out = tmp_path / "out"
    written = gather_photos([a, b], out, short_side=256, progress=False)
    assert [p.name for p in written] == ["chelsea.png", "coffee.png"]
    assert (out / "chelsea.png").read_bytes() == small.read_bytes()  # small enough: copied byte for byte
    resized = read_rgb(out / "coffee.png")
    assert resized.shape == (256, 384, 3)
    # Lanczos downscaling of the same pixels, not a crop: the mean colour survives.
    assert np.abs(resized.mean((0, 1)) - read_rgb(big).mean((0, 1))).max() < 2.0
    record = json.loads((out / "photos.json").read_text())
    assert record["short_side"] == 256
    assert record["photos"]["coffee.png"]["source"] == str(big)
    assert record["photos"]["coffee.png"]["source_size"] == [900, 600]
    assert record["photos"]["coffee.png"]["resized"] is True and record["photos"]["chelsea.png"]["resized"] is False
    assert record["photos"]["chelsea.png"]["sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()
    assert [p.name for p in list_photos(out)] == ["chelsea", "coffee"]  # photos.json is not a photo
    # Deterministic: a second run writes the same bytes.
    again = gather_photos([a, b], tmp_path / "again", short_side=256, progress=False)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]


def test_gather_bundled_and_errors(tmp_path: Path) -> None:
    out = tmp_path / "bundled"
    written = gather_photos([None], out, short_side=None, progress=False)
    assert sorted(p.name for p in written) == sorted(BUNDLED_PHOTOS)
    clash = _save(photo("astronaut"), tmp_path / "mine" / "astronaut.png", (64, 64)).parent
    with pytest.raises(DataError, match="two photos are named 'astronaut'"):
        gather_photos([None, clash], tmp_path / "x", progress=False)
    with pytest.raises(DataError, match="short_side"):
        gather_photos([clash], tmp_path / "x", short_side=8, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        gather_photos([tmp_path / "missing"], tmp_path / "x", progress=False)
    assert drqa_main(["data", "photos", "--out", str(tmp_path / "x")]) == 2  # no source: one-line error


def test_cli_photos_then_build_with_named_val_photos(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    for name in ("astronaut", "coffee", "rocket"):
        _save(photo(name), src / f"{name}.png", (160, 128))
    folder = tmp_path / "photos"
    assert drqa_main(["data", "photos", "--from", str(src), "--out", str(folder), "--short-side", "96",
                      "--no-progress"]) == 0
    assert "3 photos in" in capsys.readouterr().out
    assert {Image.open(p).size for p in folder.glob("*.png")} == {(120, 96)}
    bank = tmp_path / "bank"
    assert drqa_main(["data", "build", "--photos", str(folder), "--out", str(bank), "--crop", "64",
                      "--task", "denoise", "--restorer", "gaussian", "--restorer", "median", "--labeller", "ssim",
                      "--val-photo", "rocket", "--val-photo", "coffee", "--no-progress"]) == 0
    manifest = json.loads((bank / "manifest.json").read_text())
    assert manifest["config"]["val_photos"] == ["rocket", "coffee"]
    val_inputs = {line.split(",")[0].split("_")[0] for line in (bank / "val.txt").read_text().splitlines()}
    assert {name.split("-")[0] for name in val_inputs} == {"rocket", "coffee"}


PLASMA = ("BytheWater ColdRipple ColorfulCups EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am").split()
MATE = "Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood YellowFlower".split()


def _deb(tree: Path, package: str, out: Path) -> None:
    (tree / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (tree / "DEBIAN" / "control").write_text(textwrap.dedent(f"""\
        Package: {package}
        Version: 1.0
        Architecture: all
        Maintainer: test <test@example.org>
        Description: test stand-in
        """))
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out / f"{package}_1.0_all.deb")],
                   check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="the photo script needs dpkg-deb (Debian/Ubuntu)")
def test_wallpaper_photo_script_as_shipped(tmp_path: Path) -> None:
    """benchmarks/wallpaper_photos.sh end to end; only apt-get is a stand-in (no download in tests).

    The stand-in serves two .deb files laid out like the real packages: each Plasma wallpaper
    at two resolutions (the script must take the larger file), the MATE photos beside a render
    the script must leave out.
    """
    debs = tmp_path / "debs"
    debs.mkdir()
    sources = ["astronaut", "coffee", "chelsea", "rocket", "retina", "camera"]
    plasma_tree, mate_tree = tmp_path / "plasma", tmp_path / "mate"
    for i, name in enumerate(PLASMA):
        img = photo(sources[i % len(sources)])
        images = plasma_tree / "usr/share/wallpapers" / name / "contents/images"
        _save(img, images / "640x400.jpg", (160, 100))
        _save(img, images / "1280x800.jpg", (1280, 800))
    for i, name in enumerate(MATE):
        _save(photo(sources[i % len(sources)]), mate_tree / "usr/share/backgrounds/mate/nature" / f"{name}.jpg",
              (700, 560))
    _save(photo("brick"), mate_tree / "usr/share/backgrounds/mate/abstract/Silk.jpg", (700, 560))
    _deb(plasma_tree, "plasma-workspace-wallpapers", debs)
    _deb(mate_tree, "mate-backgrounds", debs)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(f"#!/bin/sh\n[ \"$1\" = download ] || exit 9\ncp {debs}/*.deb .\n")
    apt.chmod(apt.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent),
                                                 os.environ.get("PATH", "")]))
    out = tmp_path / "photos_wallpapers"
    run = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    record = json.loads((out / "photos.json").read_text())["photos"]
    names = {Path(n).stem for n in record}
    assert names == set(PLASMA) | set(MATE) | {Path(n).stem for n in BUNDLED_PHOTOS}
    assert record["Kite.png"]["source_size"] == [1280, 800]  # the largest file of the wallpaper
    assert record["Kite.png"]["size"] == [819, 512] and record["Aqua.png"]["size"] == [640, 512]
    assert record["astronaut.png"]["resized"] is False  # bundled 512 px photos are copied
    assert len(list_photos(out)) == 36
