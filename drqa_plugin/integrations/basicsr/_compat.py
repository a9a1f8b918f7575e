"""Make BasicSR importable on current torchvision, and registries safe to fill twice.

BasicSR 1.4.2 (the PyPI release) imports ``torchvision.transforms.functional_tensor``,
which torchvision removed in 0.17; ``import basicsr`` then fails before any of its
registries exist. :func:`install_torchvision_shim` puts an alias in ``sys.modules``
before the first BasicSR import. It does nothing where the module still exists, so
a BasicSR that does not need it is left alone.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from drqa_plugin.integrations.common import register_once

_LEGACY = "torchvision.transforms.functional_tensor"


def install_torchvision_shim() -> bool:
    """Alias the removed torchvision module; returns True if an alias was installed."""
    if _LEGACY in sys.modules:
        return False
    try:
        importlib.import_module(_LEGACY)
        return False
    except ImportError:
        pass
    try:
        # torchvision >= 0.17 keeps the same functions in a private module.
        module: types.ModuleType = importlib.import_module("torchvision.transforms._functional_tensor")
    except ImportError:
        from torchvision.transforms import functional

        module = types.ModuleType(_LEGACY)
        module.rgb_to_grayscale = functional.rgb_to_grayscale  # type: ignore[attr-defined]
    sys.modules[_LEGACY] = module
    return True


def import_basicsr() -> types.ModuleType:
    """``import basicsr`` with the shim in place, or a clear error if it is not installed."""
    install_torchvision_shim()
    try:
        return importlib.import_module("basicsr")
    except ImportError as exc:
        raise ImportError(
            "the BasicSR integration needs basicsr: pip install --no-build-isolation 'basicsr>=1.4.2' "
            f"(import failed: {exc})"
        ) from exc


def register(registry: Any, obj: Any) -> Any:
    """Register ``obj`` under its ``__name__``; a second registration of our own object is a no-op.

    BasicSR's registries raise on duplicate names. A name taken by somebody else's
    object is still an error, and says who holds it.
    """
    return register_once(registry, obj, obj.__name__, host="")
