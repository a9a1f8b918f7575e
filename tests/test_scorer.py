import numpy as np
import pytest
import torch
from PIL import Image

import drqa_plugin as dq
from drqa_plugin.preprocess import tile_starts
from tests.conftest import downscale, photo


@pytest.fixture(scope="module")
def scorer(random_model):
    return dq.DRIQA(random_model)


@pytest.fixture(scope="module")
def pair():
    restored = photo("astronaut", 320)
    return restored, downscale(restored, 4)


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255


def test_scores_are_probabilities_one_per_pair(scorer, pair):
    restored, degraded = pair
    scores = scorer([restored, photo("coffee", 300)], [degraded, photo("coffee", 75)])
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert ((scores > 0) & (scores < 1)).all()
    assert scorer.higher_is_better


def test_all_input_kinds_agree(scorer, pair, tmp_path):
    restored, degraded = pair
    expected = scorer(restored, degraded)
    Image.fromarray(restored).save(tmp_path / "r.png")
    Image.fromarray(degraded).save(tmp_path / "d.png")
    variants = {
        "CHW float": (as_tensor(restored), as_tensor(degraded)),
        "NCHW float": (as_tensor(restored)[None], as_tensor(degraded)[None]),
        "uint8 tensor": (torch.from_numpy(restored).permute(2, 0, 1), torch.from_numpy(degraded).permute(2, 0, 1)),
        "PIL": (Image.fromarray(restored), Image.fromarray(degraded)),
        "paths": (tmp_path / "r.png", str(tmp_path / "d.png")),
        "float arrays": (restored / 255.0, degraded / 255.0),
    }
    for name, (r, d) in variants.items():
        torch.testing.assert_close(scorer(r, d), expected, atol=1e-5, rtol=0, msg=name)


def test_bgr_arrays_with_explicit_channel_order(random_model, scorer, pair):
    restored, degraded = pair
    bgr = dq.DRIQA(random_model, channel_order="BGR")
    expected = scorer(restored, degraded)
    torch.testing.assert_close(bgr(restored[..., ::-1], degraded[..., ::-1]), expected, atol=1e-5, rtol=0)
    assert (scorer(restored[..., ::-1], degraded[..., ::-1]) - expected).abs().max() > 1e-4
    # channel_order is about arrays; tensors are RGB by the torch convention.
    torch.testing.assert_close(bgr(as_tensor(restored), as_tensor(degraded)), expected, atol=1e-5, rtol=0)


def test_grayscale_is_expanded_and_alpha_dropped(scorer, pair):
    restored, degraded = pair
    gray_r, gray_d = restored.mean(-1).astype(np.uint8), degraded.mean(-1).astype(np.uint8)
    torch.testing.assert_close(
        scorer(gray_r, gray_d), scorer(np.repeat(gray_r[..., None], 3, -1), np.repeat(gray_d[..., None], 3, -1))
    )
    alpha = lambda img: np.concatenate([img, np.full(img.shape[:2] + (1,), 7, np.uint8)], -1)  # noqa: E731
    torch.testing.assert_close(scorer(alpha(restored), alpha(degraded)), scorer(restored, degraded))
    torch.testing.assert_close(
        scorer(Image.fromarray(alpha(restored), "RGBA"), Image.fromarray(degraded)), scorer(restored, degraded)
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((64, 64, 5), np.uint8), "5 channels"),
        (torch.rand(3, 64, 64) * 255, "0-255 values"),
        (torch.full((3, 64, 64), float("nan")), "NaN"),
        (np.zeros((64, 64, 3), np.int32), "uint8, uint16 or float"),
        (torch.zeros(64, 64, 3, 2, 1), "CHW or NCHW"),
        ({"not": "an image"}, "unsupported input"),
        ("/no/such/image.png", "image file not found"),
    ],
)
def test_bad_inputs_raise_clear_errors(scorer, bad, message):
    good = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(dq.ImageInputError, match=message):
        scorer(bad, good)


def test_unreadable_file(scorer, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(dq.ImageInputError, match="cannot read image"):
        scorer(broken, broken)


def test_mismatched_counts_and_aspect_ratios(scorer, pair):
    restored, degraded = pair
    with pytest.raises(dq.ImageInputError, match="2 restored images but 1 degraded"):
        scorer([restored, restored], [degraded])
    with pytest.raises(dq.ImageInputError, match="different aspect ratios"):
        scorer(restored, photo("astronaut")[:, :200])


def test_sr_sized_reference_equals_upscaled_reference(scorer, pair):
    restored, degraded = pair
    up = torch.nn.functional.interpolate(as_tensor(degraded)[None], size=restored.shape[:2], mode="bicubic")
    torch.testing.assert_close(scorer(restored, degraded), scorer(restored, up.clamp(0, 1)), atol=1e-5, rtol=0)
    nearest = dq.DRIQA(scorer.model, reference_interpolation="nearest")
    assert (nearest(restored, degraded) - scorer(restored, degraded)).abs().max() > 1e-5


def test_chunking_does_not_change_scores(random_model):
    imgs = [photo(n, 300) for n in ("astronaut", "coffee", "chelsea", "rocket", "astronaut")]
    refs = [downscale(i, 2) for i in imgs]
    one = dq.DRIQA(random_model, chunk_size=1)(imgs, refs)
    three = dq.DRIQA(random_model, chunk_size=3)(imgs, refs)
    torch.testing.assert_close(one, three, atol=1e-5, rtol=0)
    batched = dq.DRIQA(random_model, chunk_size=2)(torch.stack([as_tensor(i) for i in imgs]), refs)
    torch.testing.assert_close(batched, one, atol=1e-5, rtol=0)


def test_whole_image_and_tiles_modes(random_model, pair):
    restored, degraded = pair
    whole = dq.DRIQA(random_model, preprocess="none")
    tiles = dq.DRIQA(random_model, preprocess="tiles", tile_size=160)
    # 320 px = exactly 2x2 tiles of 160: the tile score is the mean of the four crops.
    crops = [(restored[y : y + 160, x : x + 160], y, x) for y in (0, 160) for x in (0, 160)]
    up = torch.nn.functional.interpolate(as_tensor(degraded)[None], size=(320, 320), mode="bicubic").clamp(0, 1)[0]
    per_crop = torch.cat([whole(c, up[:, y : y + 160, x : x + 160]) for c, y, x in crops])
    torch.testing.assert_close(tiles(restored, degraded), per_crop.mean().view(1), atol=1e-5, rtol=0)
    with pytest.raises(dq.ImageInputError, match="too small"):
        whole(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8))


def test_tiles_cover_the_whole_image():
    assert tile_starts(288, 288) == [0]
    assert tile_starts(600, 288) == [0, 288, 312]
    assert tile_starts(100, 288) == [0]


# bf16 vs fp32 score error, measured (2-core AMD EPYC, torch 2.14.1): 1.3e-4 on this pair, 2.3e-4 over the
# four PHOTOS, 2.7e-4 at most seen. Different photos' scores differ by 0.02-0.08, so the old 0.01 could
# not tell bf16 error from a wrong image; a few times the measured error can.
BF16_SCORE_ATOL = 1e-3


def test_bf16_is_close_to_fp32(random_model, pair):
    restored, degraded = pair
    fp32 = dq.DRIQA(random_model)(restored, degraded)
    scorer = dq.DRIQA(random_model, dtype=torch.bfloat16)
    bf16 = scorer(restored, degraded)
    assert bf16.dtype == torch.float32 and scorer.model.restored_encoder.stem.weight.dtype == torch.bfloat16
    diff = float((bf16 - fp32).abs().max())
    assert 0.0 < diff < BF16_SCORE_ATOL, diff  # exactly 0 would mean the trunk did not run in bf16


def test_scorer_from_weights_file_and_repr(weights_file, random_model, pair):
    restored, degraded = pair
    from_file = dq.DRIQA(weights_file, device="cpu")
    torch.testing.assert_close(from_file(restored, degraded), dq.DRIQA(random_model)(restored, degraded))
    assert "random weights for tests" in repr(from_file)


def test_scorer_does_not_touch_the_callers_model(random_model):
    before = {k: v.clone() for k, v in random_model.state_dict().items()}
    dq.DRIQA(random_model, dtype=torch.bfloat16)
    after = random_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in random_model.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(random_model, pair):
    restored, degraded = pair
    cpu = dq.DRIQA(random_model)(restored, degraded)
    gpu = dq.DRIQA(random_model, device="cuda")(restored, degraded)
    assert (gpu - cpu).abs().max() < 1e-3


def test_cpu_scorer_uses_fused_blocks_and_stays_exact(random_model):
    from drqa_plugin.models.blocks import FusedBottleneck, _mkldnn_pointwise_available
    from drqa_plugin.preprocess import normalize

    if not _mkldnn_pointwise_available():
        pytest.skip("this PyTorch build has no fused oneDNN convolutions")
    scorer = dq.DRIQA(random_model, preprocess="none")
    assert any(isinstance(m, FusedBottleneck) for m in scorer.model.modules())
    x, y = torch.rand(2, 3, 96, 96), torch.rand(2, 3, 96, 96)
    cfg = random_model.pretrained_cfg.preprocess
    with torch.no_grad():
        expected = random_model(normalize(x, cfg), normalize(y, cfg))
    torch.testing.assert_close(scorer(x, y), expected, atol=1e-5, rtol=0)
