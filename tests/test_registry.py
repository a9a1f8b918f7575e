"""drqa_plugin.registry and pretrained configs: named variants, one default name, leaf imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

import drqa_plugin as dq
from drqa_plugin.constants import DEFAULT_ARCH
from drqa_plugin.errors import ConfigError
from drqa_plugin.pretrained import PreprocessConfig
from drqa_plugin.registry import ModelVariant, get_variant, register_variant


def test_default_variant_is_registered_beside_the_architecture() -> None:
    assert DEFAULT_ARCH in dq.list_models()
    variant = get_variant(DEFAULT_ARCH)
    assert variant.build.__module__ == "drqa_plugin.models.ckdn"
    model = dq.create_model()
    assert isinstance(model, dq.CKDN) and not model.training and model.pretrained_cfg is variant.pretrained


def test_unknown_and_conflicting_variants() -> None:
    with pytest.raises(KeyError, match="unknown model variant 'nope'; known: \\['ckdn_alex', 'ckdn_r50', 'ckdn_r50_ctx', 'ckdn_r50_detail'\\]"):
        get_variant("nope")
    variant = get_variant(DEFAULT_ARCH)
    assert register_variant(variant) is variant  # the same object again: a no-op
    clone = ModelVariant(variant.name, variant.build, variant.pretrained, "another")
    with pytest.raises(ValueError, match="already registered"):
        register_variant(clone)


def test_preprocess_config_round_trips_and_checks() -> None:
    cfg = PreprocessConfig(crop=224, resize_shorter=256)
    assert PreprocessConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="restored_interpolation must be one of"):
        PreprocessConfig(restored_interpolation="lanczos3")
    with pytest.raises(ConfigError, match="crop 300 is larger than resize_shorter 256"):
        PreprocessConfig(crop=300, resize_shorter=256)


@pytest.mark.parametrize("module", ["drqa_plugin.preprocess", "drqa_plugin.pretrained", "drqa_plugin.images"])
def test_preprocessing_does_not_load_the_network_module(module: str) -> None:
    """Imports point one way: preparing images never imports the model definition."""
    code = (
        "import sys, importlib, types;"
        "pkg = types.ModuleType('drqa_plugin'); pkg.__path__ = [sys.argv[2]]; sys.modules['drqa_plugin'] = pkg;"
        "importlib.import_module(sys.argv[1]); print('drqa_plugin.models.ckdn' in sys.modules)"
    )
    root = str(__import__("pathlib").Path(dq.__file__).parent)
    out = subprocess.run([sys.executable, "-c", code, module, root], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
