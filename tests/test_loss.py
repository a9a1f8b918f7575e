"""DRIQALoss as a plain PyTorch module, on real photos."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import downscale, photo
from torch import nn

from drqa_plugin.loss import DRIQALoss
from drqa_plugin.preprocess import match_reference_size, normalize
from drqa_plugin.scorer import DRIQA
from drqa_plugin.weights import WeightsError, save_weights


def as_tensor(img) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """(restored-like x4 output, its LQ) from two real photos, 64 px output."""
    hr = [photo(name, 64) for name in ("astronaut", "chelsea")]
    restored = torch.cat([as_tensor(img) for img in hr])
    lq = torch.cat([as_tensor(downscale(img, 4)) for img in hr])
    return restored, lq


class TinySR(nn.Module):
    """A small x4 upsampler standing in for the network being trained."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 3 * 16, 3, padding=1)
        self.shuffle = nn.PixelShuffle(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
        return up + 0.1 * self.shuffle(self.body(x))


def test_equals_unfolded_network_on_resized_reference(random_model, pair) -> None:
    restored, lq = pair
    loss = DRIQALoss(random_model, loss_weight=0.5)
    cfg = random_model.pretrained_cfg.preprocess
    with torch.no_grad():
        expected = random_model(normalize(restored, cfg), normalize(match_reference_size(lq, (64, 64)), cfg))
        assert torch.allclose(loss.score(restored, lq), expected, atol=1e-5)
        assert torch.allclose(loss(restored, lq), 0.5 * (1 - expected).mean(), atol=1e-6)


def test_reductions_and_weight(random_model, pair) -> None:
    restored, lq = pair
    per_image = DRIQALoss(random_model, reduction="none", loss_weight=2.0)(restored, lq)
    assert per_image.shape == (2,)
    total = DRIQALoss(random_model, reduction="sum", loss_weight=2.0)(restored, lq)
    assert torch.allclose(total, per_image.sum())
    with pytest.raises(ValueError, match="reduction"):
        DRIQALoss(random_model, reduction="max")


def test_gradient_reaches_output_only_and_network_is_frozen(random_model, pair) -> None:
    restored, lq = pair
    loss = DRIQALoss(random_model)
    before = copy.deepcopy(loss.state_dict())
    sr = TinySR()
    optimizer = torch.optim.Adam(list(sr.parameters()) + list(loss.parameters()), lr=1e-2)
    sr.train()
    loss.train()  # a training loop switches everything to train mode
    assert not loss.net.training and not any(m.training for m in loss.net.modules())
    output = sr(lq)
    output.retain_grad()
    value = loss(output, lq)
    value.backward()
    assert torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sr.parameters())
    optimizer.step()
    after = loss.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reference_path_gets_no_gradient(random_model, pair) -> None:
    restored, lq = pair
    restored = restored.clone().requires_grad_(True)
    lq = lq.clone().requires_grad_(True)
    DRIQALoss(random_model)(restored, lq).backward()
    assert restored.grad is not None and lq.grad is None


def test_deterministic_in_train_mode(random_model, pair) -> None:
    restored, lq = pair
    loss = DRIQALoss(random_model).train()
    assert torch.equal(loss(restored, lq), loss(restored, lq))  # dropout stays off


def test_any_patch_size(random_model) -> None:
    img = photo("coffee", 80)
    loss = DRIQALoss(random_model)
    for h, w in ((16, 16), (40, 52), (80, 80)):
        restored = as_tensor(img)[..., :h, :w].clone().requires_grad_(True)
        lq = nn.functional.interpolate(restored.detach(), size=(h // 2, w // 2), mode="area")
        value = loss(restored, lq)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(restored.grad).all()


def test_unclamped_output_keeps_gradient(random_model, pair) -> None:
    restored, lq = pair
    overshoot = (restored * 1.3 - 0.15).requires_grad_(True)  # early-training outputs leave [0, 1]
    DRIQALoss(random_model)(overshoot, lq).backward()
    outside = (overshoot.detach() > 1) | (overshoot.detach() < 0)
    assert outside.any() and overshoot.grad[outside.expand_as(overshoot.grad)].abs().sum() > 0


def test_ckdn_protocol_matches_scorer(random_model, pair) -> None:
    restored, lq = pair
    loss = DRIQALoss(random_model, preprocess="ckdn")
    scorer = DRIQA(random_model, preprocess="ckdn")
    with torch.no_grad():
        assert torch.allclose(loss.score(restored, lq), scorer(restored, lq), atol=1e-5)


BF16_LOSS_ATOL = 1.5e-3


def test_precision_and_channels_last(random_model, pair) -> None:
    restored, lq = pair
    with torch.no_grad():
        reference = DRIQALoss(random_model).score(restored, lq)
        nhwc = DRIQALoss(random_model, channels_last=True).score(restored, lq)
        bf16 = DRIQALoss(random_model, precision="bf16", channels_last=True).score(restored, lq)
    assert torch.allclose(nhwc, reference, atol=1e-5)
    # bf16 vs fp32, measured: 2.7e-4 here (4.9e-4 at most seen); two photos' scores differ by ~0.03.
    diff = float((bf16 - reference).abs().max())
    assert bf16.dtype == torch.float32 and 0.0 < diff < BF16_LOSS_ATOL, diff
    restored = restored.clone().requires_grad_(True)
    DRIQALoss(random_model, precision="bf16")(restored, lq).backward()
    assert restored.grad.dtype == torch.float32 and torch.isfinite(restored.grad).all()


def test_loads_weights_file_and_moves_with_to(weights_file: Path, random_model, pair) -> None:
    restored, lq = pair
    from_file = DRIQALoss(weights_file)
    from_module = DRIQALoss(random_model)
    with torch.no_grad():
        assert torch.allclose(from_file.score(restored, lq), from_module.score(restored, lq), atol=1e-6)
    assert from_file.to(torch.float32) is from_file


def test_weights_are_required(random_model, monkeypatch, tmp_path) -> None:
    with pytest.raises(ValueError, match="needs weights"):
        DRIQALoss(None)
    # The default is the published model; offline and uncached it says how to get it, and downloads nothing.
    monkeypatch.setenv("DRQA_HOME", str(tmp_path))
    monkeypatch.setenv("DRQA_OFFLINE", "1")
    with pytest.raises(WeightsError, match="'ckdn_pipal' are not cached and downloads are disabled"):
        DRIQALoss()
    with pytest.warns(UserWarning, match="randomly initialised"):
        DRIQALoss("random")
    with pytest.raises(FileNotFoundError, match="no_such.safetensors"):
        DRIQALoss("no_such.safetensors")


def test_weights_of_another_architecture(tmp_path: Path, random_model) -> None:
    other = tmp_path / "srnet.safetensors"
    save_weights(TinySR().state_dict(), other, provenance="not a CKDN")
    with pytest.raises(WeightsError, match="does not fit CKDN"):
        DRIQALoss(other)


def test_clear_input_errors(random_model, pair) -> None:
    restored, lq = pair
    loss = DRIQALoss(random_model)
    with pytest.raises(ValueError, match="needs the degraded input"):
        loss(restored)
    with pytest.raises(ValueError, match="RGB NCHW"):
        loss(restored[:, :1], lq)
    with pytest.raises(ValueError, match="2 restored vs 1 degraded"):
        loss(restored, lq[:1])


def test_callers_model_is_untouched(random_model) -> None:
    before = {k: v.clone() for k, v in random_model.state_dict().items()}
    DRIQALoss(random_model, precision="bf16", channels_last=True)
    after = random_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
