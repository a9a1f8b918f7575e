"""Converted published checkpoints score exactly like the source implementation.

pyiqa's CKDN is the test-only reference: built with random weights (its own
constructor would download ImageNet weights, so that call is replaced), saved in
both published layouts, converted with our CLI, and compared on real photos.
"""

import argparse
import subprocess
import sys

import pytest
import torch

import drqa_plugin as dq
from drqa_plugin.preprocess import prepare_pair, to_float_batch
from tests.conftest import PHOTOS, downscale, photo, randomise_batchnorm


def build_reference(use_default_preprocess: bool) -> torch.nn.Module:
    """pyiqa's CKDN with random weights; its ImageNet download is replaced by an empty state dict.

    Only the tests that compare with pyiqa need it: without pyiqa they skip, the others still run.
    """
    ckdn_arch = pytest.importorskip("pyiqa.archs.ckdn_arch", reason="pyiqa (the test-only parity reference) is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ckdn_arch, "load_state_dict_from_url", lambda *args, **kwargs: {})
        return ckdn_arch.CKDN(pretrained=False, use_default_preprocess=use_default_preprocess)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(123)
    return randomise_batchnorm(build_reference(use_default_preprocess=False), seed=5).eval()


@pytest.fixture(scope="module")
def published_files(tmp_path_factory, reference):
    root = tmp_path_factory.mktemp("published")
    flat = reference.state_dict()  # pyiqa layout: net.<official key>
    pyiqa_file = root / "CKDN_model_best-38b27dc6.pth"
    torch.save(flat, pyiqa_file)
    official = {
        "epoch": 29,
        "arch": "resnet50",
        "state_dict": {"module." + k[len("net.") :]: v for k, v in flat.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.16, "params": [0, 1]}]},
        "args": argparse.Namespace(lr=0.16, batch_size=8, arch="resnet50"),
        "version": 0.1,
        "metric": 0.9,
    }
    official_file = root / "model_best.pth.tar"
    torch.save(official, official_file)
    return {"pyiqa": pyiqa_file, "official": official_file}


def _pairs():
    restored = [photo(name, 320) for name in PHOTOS]
    degraded = [downscale(img, 4) for img in restored]
    return restored, degraded


@pytest.mark.slow  # runs `python -m drqa_plugin.cli convert`
@pytest.mark.parametrize("layout", ["official", "pyiqa"])
def test_converted_weights_match_reference_scores(tmp_path, published_files, reference, layout):
    dst = tmp_path / f"{layout}.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "drqa_plugin.cli", "convert", str(published_files[layout]), str(dst)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{layout} CKDN layout" in dq.read_metadata(dst)["provenance"]

    model = dq.load_model(dst)
    scorer = dq.DRIQA(dst, preprocess="ckdn")
    cfg = model.pretrained_cfg.preprocess
    restored, degraded = _pairs()
    x, y = prepare_pair(
        torch.cat([to_float_batch(r) for r in restored]), torch.cat([to_float_batch(d) for d in degraded]), "ckdn", cfg
    )
    with torch.no_grad():
        expected = reference(x, y).squeeze(1)
        ours_plain = model(x, y)
    ours_scorer = scorer(restored, degraded)  # folded BN, channels-last, own preprocessing
    assert (expected.max() - expected.min()) > 1e-4, "photos must get different scores for a meaningful check"
    assert (ours_plain - expected).abs().max() <= 1e-5
    assert (ours_scorer - expected).abs().max() <= 1e-5


def test_reference_preprocessing_agrees_closely(tmp_path, published_files):
    """pyiqa preprocesses floats with torchvision; ours follows the official PIL protocol."""
    dst = tmp_path / "w.safetensors"
    dq.convert_checkpoint(published_files["pyiqa"], dst)
    ref = build_reference(use_default_preprocess=True).eval()
    ref.load_state_dict(torch.load(published_files["pyiqa"], weights_only=True))
    restored, degraded = _pairs()
    r = torch.cat([to_float_batch(x) for x in restored])
    # pyiqa needs references already at the restored size.
    d = torch.nn.functional.interpolate(
        torch.cat([to_float_batch(x) for x in degraded]), size=r.shape[-2:], mode="bicubic"
    ).clamp(0, 1)
    with torch.no_grad():
        theirs = ref(r, d).squeeze(1)
    ours = dq.DRIQA(dst)(r, d)
    # Same network, different resamplers (nearest vs nearest-exact, PIL-style clamping). Measured 5.2e-4 on
    # these four photos, whose scores are 0.006-0.06 apart: a few times the measured error, not the photo gap.
    assert (theirs.max() - theirs.min()) > 5e-3
    assert (ours - theirs).abs().max() < 2e-3


def test_convert_rejects_unknown_layouts(tmp_path):
    src = tmp_path / "weird.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, src)
    with pytest.raises(dq.WeightsError, match="unrecognised checkpoint layout"):
        dq.convert_checkpoint(src, tmp_path / "out.safetensors")


def test_convert_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    src = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Evil()}, src)
    with pytest.raises(dq.WeightsError, match="weights-only"):
        dq.convert_checkpoint(src, tmp_path / "out.safetensors")
