"""benchmarks/quality_heldout.py: the parameters of its two held-out sets (the published figures depend on them)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality_heldout import DENOISE, SR, heldout_config  # noqa: E402


def test_the_clean_set_keeps_its_parameters_and_the_degraded_set_adds_the_training_chain(tmp_path: Path) -> None:
    clean, degraded = heldout_config(tmp_path, degraded=False), heldout_config(tmp_path, degraded=True)
    for cfg in (clean, degraded):
        assert cfg.photos == str(tmp_path) and cfg.crop == 256 and cfg.crops_per_photo == 2
        assert cfg.val_fraction == 1.0 and cfg.labellers == ("stlpips_alex",) and not cfg.vary_strength
        assert set(cfg.restorers) <= set(SR + DENOISE) and cfg.dn_noise_sigma_range == (15 / 255, 50 / 255)
    # The first set: clean bicubic x4 inputs and plain Gaussian noise, seed 11 (docs/quality.md's tables).
    assert clean.tasks == ("sr_x4", "denoise") and clean.seed == 11
    assert (clean.sr_blur_prob, clean.sr_noise_prob, clean.sr_jpeg_prob, clean.dn_jpeg_prob) == (0, 0, 0, 0)
    assert clean.sr_down_interpolations == ("bicubic",)
    # The second: x4 and x2 inputs through the training banks' default chain, JPEG on half the noisy inputs.
    assert degraded.tasks == ("sr_x4", "sr_x2", "denoise") and degraded.seed == 12 and degraded.dn_jpeg_prob == 0.5
    assert (degraded.sr_blur_prob, degraded.sr_noise_prob, degraded.sr_jpeg_prob) == (0.5, 0.3, 0.3)
    assert len(degraded.sr_down_interpolations) == 3
