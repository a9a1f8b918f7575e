"""drqa_plugin.images: the one decoder (bit depths, EXIF, alpha policy) and folder pairing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drqa_plugin.errors import ImageInputError, MissingFileError
from drqa_plugin.images import pair_files, read_image, to_uint8
from drqa_plugin.preprocess import to_float_batch


def _ramp16(h: int = 8, w: int = 16) -> np.ndarray:
    return np.linspace(0, 65535, h * w).reshape(h, w).astype(np.uint16)


def test_16bit_pgm_and_mode_i_tiff_keep_their_scale(tmp_path: Path) -> None:
    ramp = _ramp16()
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    pgm = tmp_path / "g16.pgm"
    header = f"P5\n{ramp.shape[1]} {ramp.shape[0]}\n65535\n".encode()
    pgm.write_bytes(header + ramp.astype(">u2").tobytes())
    Image.fromarray(ramp.astype(np.int32), mode="I").save(tmp_path / "g32.tif")
    reference = to_float_batch(tmp_path / "g16.png")
    for name in ("g16.pgm", "g32.tif"):
        decoded = read_image(tmp_path / name)
        assert decoded.dtype == np.uint16 and decoded.shape == (8, 16, 3), name
        x = to_float_batch(tmp_path / name)
        # Before the one decoder, these came out clipped to near-white (mean ~1.0).
        assert torch.allclose(x, reference, atol=1 / 65535), name
        assert abs(float(x.mean()) - 0.5) < 0.01, name


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255  # a white band on the left of a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    decoded = read_image(tmp_path / "rot.jpg")
    assert decoded.shape == (40, 20, 3)  # displayed upright: portrait
    assert decoded[:10].mean() > 200 and decoded[-10:].mean() < 50  # the band is now on top


def test_alpha_policy_is_explicit(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red, fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert (read_image(tmp_path / "a.png", alpha="drop")[..., 0] == 200).all()
    assert (read_image(tmp_path / "a.png", alpha="white") == 255).all()
    with pytest.raises(ValueError, match="alpha must be one of"):
        read_image(tmp_path / "a.png", alpha="black")  # type: ignore[arg-type]


def test_to_uint8_rounds_16_bit() -> None:
    assert to_uint8(np.array([0, 257, 65535], np.uint16)).tolist() == [0, 1, 255]


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageInputError, match="cannot read image .*bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ImageInputError, match="image file not found"):
        read_image(tmp_path / "none.png")


def test_pairing_reports_duplicate_stems_instead_of_dropping_them(tmp_path: Path) -> None:
    out, lq = tmp_path / "out", tmp_path / "lq"
    out.mkdir()
    lq.mkdir()
    pixel = Image.new("RGB", (4, 4))
    for name in ("a.png", "b.png"):
        pixel.save(out / name)
    for name in ("a.png", "a.jpg", "b.png"):
        pixel.save(lq / name)
    plan = pair_files(out, lq)
    assert [(r.name, d.name) for r, d in plan.pairs] == [("b.png", "b.png")]
    assert len(plan.unmatched) == 1 and "a.jpg, a.png share the name 'a'" in plan.unmatched[0]
    with pytest.raises(MissingFileError, match="not found"):
        pair_files(out, tmp_path / "nowhere")
