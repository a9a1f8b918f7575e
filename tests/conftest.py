"""Shared fixtures: real photos from scikit-image and small weights files made on the fly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import drqa_plugin as dq

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str, size: int | None = None) -> np.ndarray:
    """A bundled scikit-image photo as uint8 HWC RGB, optionally resized to size x size."""
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if size is not None:
        img = np.array(Image.fromarray(img).resize((size, size), Image.BICUBIC))
    return img


def downscale(img: np.ndarray, factor: int) -> np.ndarray:
    h, w = img.shape[:2]
    return np.array(Image.fromarray(img).resize((w // factor, h // factor), Image.BICUBIC))


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics so BN handling is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.fixture(scope="session")
def random_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = randomise_batchnorm(dq.create_model("ckdn_r50"))
    # Tests know these weights are random; the scorer's warning is for users who do not.
    model.pretrained_cfg = replace(model.pretrained_cfg, provenance="random weights for tests")
    return model


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory, random_model: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("weights") / "ckdn_random.safetensors"
    dq.save_model(random_model, path, provenance="random weights for tests")
    return path
