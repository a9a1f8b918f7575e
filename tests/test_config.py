"""drqa_plugin.config: the one config mechanism (typed dataclasses from YAML, keys that cannot be mistyped)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drqa_plugin.config import check_keys, from_dict, load_yaml_config, parse_override
from drqa_plugin.data import DataConfig
from drqa_plugin.errors import ConfigError, OptionError


@dataclass
class Inner:
    size: tuple[int, ...] = (1, 2)
    rate: float = 0.5


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_nested_values_are_coerced_and_typos_named(tmp_path: Path) -> None:
    cfg = from_dict(Outer, {"inner": {"size": [3, 4], "rate": 1}})
    assert cfg.inner.size == (3, 4) and cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    with pytest.raises(ConfigError, match="inner.rte \\(did you mean 'rate'\\?\\)"):
        from_dict(Outer, {"inner": {"rte": 1}})
    with pytest.raises(ConfigError, match="inner.rate must be float"):
        from_dict(Outer, {"inner": {"rate": "fast"}})
    path = tmp_path / "c.yaml"
    path.write_text("name: y\ninner: {size: [5]}\n")
    assert load_yaml_config(Outer, path, ["inner.rate=1e-3"]) == Outer("y", Inner((5,), 1e-3))
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_data_config_uses_the_same_mechanism() -> None:
    with pytest.raises(ConfigError, match="data.degradation.blur_prb \\(did you mean 'blur_prob'\\?\\)"):
        DataConfig.from_dict({"degradation": {"blur_prb": 0.2}})
    cfg = DataConfig.from_dict({"degradation": {"scale_range": [2, 3]}})
    assert cfg.degradation.scale_range == (2.0, 3.0)


def test_check_keys_suggests_the_intended_key() -> None:
    check_keys({"weights": 1}, ("weights", "better"), "here")
    with pytest.raises(OptionError, match="unknown option key 'weigths' \\(did you mean 'weights'\\?\\) in here"):
        check_keys({"weigths": 1}, ("weights", "better"), "here")
