"""``pyiqa.create_metric("drqa_ckdn", ...)`` against pyiqa 0.1.16 (installed with --no-deps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import downscale, photo
from PIL import Image

import drqa_plugin as dq

pyiqa = pytest.importorskip("pyiqa")
from drqa_plugin.integrations.pyiqa import ARCH_NAME, DRIQANet, register  # noqa: E402


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    names = ("astronaut", "coffee", "chelsea")
    restored = torch.stack([_tensor(photo(n, 96)) for n in names])
    degraded = torch.stack([_tensor(downscale(photo(n, 96), 4)) for n in names])
    return restored, degraded


@pytest.fixture(scope="module")
def metric(weights_file: Path) -> torch.nn.Module:
    register()
    return pyiqa.create_metric("drqa_ckdn", weights=str(weights_file), device="cpu")


def test_create_metric_returns_our_fast_scorer(metric: torch.nn.Module, weights_file: Path,
                                               data: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert isinstance(metric.net, DRIQANet)
    assert metric.metric_mode == "FR" and metric.lower_better is False and metric.score_range == "0, 1"
    assert "drqa_ckdn" in pyiqa.list_models(metric_mode="FR")
    restored, degraded = data
    scores = metric(restored, degraded)              # pyiqa's call order: (restored, degraded)
    torch.testing.assert_close(scores, dq.DRIQA(weights_file)(restored, degraded), rtol=0, atol=1e-6)
    assert scores.shape == (3,) and bool(((scores > 0) & (scores < 1)).all())


def test_file_paths_are_read_by_pyiqa(metric: torch.nn.Module, weights_file: Path, tmp_path: Path) -> None:
    sr, lq = tmp_path / "sr.png", tmp_path / "lq.png"
    Image.fromarray(photo("rocket", 96)).save(sr)
    Image.fromarray(downscale(photo("rocket", 96), 4)).save(lq)
    expected = dq.DRIQA(weights_file)([sr], [lq])
    torch.testing.assert_close(metric(str(sr), str(lq)), expected, rtol=0, atol=1e-6)


def test_as_loss_gives_gradients(weights_file: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    register()
    loss_metric = pyiqa.create_metric("drqa_ckdn", weights=str(weights_file), device="cpu", as_loss=True)
    restored, degraded = (t[:2] for t in data)
    x = restored.clone().requires_grad_(True)
    value = loss_metric(x, degraded)                 # pyiqa reduces to the mean score
    (1 - value).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert float(value.detach()) == pytest.approx(float(dq.DRIQA(weights_file)(restored, degraded).mean()), abs=1e-4)


def test_register_is_idempotent_and_never_overrides_pyiqa_ckdn(weights_file: Path) -> None:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.registry import ARCH_REGISTRY

    assert register() == register() == "drqa_ckdn"
    assert ARCH_REGISTRY.get(ARCH_NAME) is DRIQANet
    with pytest.raises(dq.ConfigError, match="pyiqa already has a metric named 'ckdn'"):
        register("ckdn")
    assert DEFAULT_CONFIGS["ckdn"]["metric_opts"]["type"] == "CKDN"


def test_default_options_and_option_errors(weights_file: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    register("drqa_ckdn_none", weights=str(weights_file), preprocess="none")
    metric = pyiqa.create_metric("drqa_ckdn_none", device="cpu")    # no arguments needed
    restored, degraded = data
    expected = dq.DRIQA(weights_file, preprocess="none")(restored[:1], degraded[:1])
    torch.testing.assert_close(metric(restored[:1], degraded[:1]), expected, rtol=0, atol=1e-6)
    with pytest.raises(dq.ConfigError, match=r"unknown option key 'preprocces' \(did you mean 'preprocess'\?\)"):
        pyiqa.create_metric("drqa_ckdn", weights=str(weights_file), preprocces="none", device="cpu")
    with pytest.raises(dq.ConfigError, match="the DR-IQA metric needs weights="):
        pyiqa.create_metric("drqa_ckdn", device="cpu")
