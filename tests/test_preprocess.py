"""drqa_plugin.preprocess: input coercion and the scoring protocols, without the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from drqa_plugin.errors import ImageInputError
from drqa_plugin.preprocess import (
    center_crop,
    normalize,
    prepare_pair,
    resize_shorter,
    tile_pairs,
    to_float_batch,
)
from drqa_plugin.pretrained import PreprocessConfig
from tests.conftest import photo


def test_ckdn_protocol_shapes_and_per_input_interpolation() -> None:
    cfg = PreprocessConfig()
    restored = to_float_batch(photo("chelsea"))  # 451 x 300 (w x h)
    x, y = prepare_pair(restored, restored.clone(), "ckdn", cfg)
    assert x.shape == y.shape == (1, 3, 288, 288)
    # Same pixels in, different filters out: bicubic for the restored image, nearest for the reference.
    assert not torch.equal(x, y)
    nearest = center_crop(resize_shorter(restored, 329, "nearest"), 288)
    assert torch.allclose(y, normalize(nearest, cfg))


def test_resize_matches_pil_when_shrinking() -> None:
    img = photo("astronaut", 256)
    ours = resize_shorter(to_float_batch(img), 128, "bicubic")[0].permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(img).resize((128, 128), Image.Resampling.BICUBIC), np.float32) / 255
    assert np.abs(ours - pil).mean() < 0.01  # antialiased like PIL, not aliased like plain interpolate


def test_tiles_are_image_major_and_cover_everything() -> None:
    r = torch.arange(2 * 3 * 20 * 30, dtype=torch.float32).view(2, 3, 20, 30)
    rt, dt, per_image = tile_pairs(r, r + 1, tile=16)
    assert per_image == 4 and rt.shape == (8, 3, 16, 16) and torch.equal(dt, rt + 1)
    assert torch.equal(rt[0], r[0, :, :16, :16]) and torch.equal(rt[3], r[0, :, 4:, 14:])  # last tile flush
    assert torch.equal(rt[4], r[1, :, :16, :16])


def test_array_conversions() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    assert torch.equal(to_float_batch(rgb, "BGR")[0, 2], torch.ones(4, 4))  # BGR arrays are flipped
    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4096)
    assert torch.allclose(to_float_batch(deep)[0, 0], torch.from_numpy(deep / 65535.0).float())
    with pytest.raises(ImageInputError, match="channel_order must be 'RGB' or 'BGR'"):
        to_float_batch(rgb, "RGBA")  # type: ignore[arg-type]
    with pytest.raises(ImageInputError, match="0-255 values\\? divide by 255"):
        to_float_batch(torch.full((3, 4, 4), 200.0))


def test_too_small_for_the_whole_image_protocols() -> None:
    tiny = torch.rand(1, 3, 16, 16)
    with pytest.raises(ImageInputError, match="16x16 is too small \\(min side 32\\) for preprocess='none'"):
        prepare_pair(tiny, tiny, "none", PreprocessConfig())
