"""Converters from published checkpoints to our safetensors format.

Every foreign file is read with ``torch.load(..., weights_only=True)``; the only
non-tensor class allowed is :class:`argparse.Namespace`, which the official
CKDN ``model_best.pth.tar`` stores under ``args``.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from drqa_plugin.constants import DEFAULT_ARCH
from drqa_plugin.errors import WeightsError, WeightsNotFoundError
from drqa_plugin.registry import create_model
from drqa_plugin.weights import PathLike, check_state_dict, save_weights

# Official top-level module name -> ours. Order does not matter: names are
# matched on the first dotted component only.
OFFICIAL_TO_OURS = {
    "qse_1": "restored_encoder.stem",
    "qse_2": "restored_encoder.blocks",
    "dte_1": "reference_encoder.stem",
    "dte_2": "reference_encoder.blocks",
    "csp": "comparator",
    "fc_": "head",
    "aux_csp": "nr_comparator",
    "fc1_": "nr_head",
}
# ImageNet ResNet-50 (torchvision names) -> the CKDN modules it initialises.
RESNET50_TO_OURS = {
    "conv1": ("restored_encoder.stem", "reference_encoder.stem"),
    "layer1": ("restored_encoder.blocks", "reference_encoder.blocks"),
    "layer2": ("comparator", "nr_comparator"),
}
_PREFIXES = ("module.net.", "net.", "module.")


def load_foreign_checkpoint(path: PathLike) -> dict:
    """``torch.load`` a ``.pth``/``.pth.tar`` safely (tensors + argparse.Namespace only)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for bad files
        raise WeightsError(f"{path}: cannot be read as a weights-only PyTorch checkpoint: {exc}") from exc
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def detect_layout(checkpoint: Mapping) -> str:
    """``"official"`` (dict with a ``module.``-prefixed ``state_dict``) or ``"pyiqa"`` (flat ``net.``)."""
    if isinstance(checkpoint.get("state_dict"), Mapping):
        return "official"
    for key in ("params", "params_ema"):  # BasicSR-style wrappers
        if isinstance(checkpoint.get(key), Mapping):
            return "pyiqa"
    keys = [k for k, v in checkpoint.items() if isinstance(v, Tensor)]
    if keys and all(k.startswith(("net.", "module.net.")) for k in keys):
        return "pyiqa"
    if keys and all(k.split(".")[0] in OFFICIAL_TO_OURS for k in keys):
        return "official"
    raise WeightsError(
        "unrecognised checkpoint layout: expected the official CKDN model_best.pth.tar "
        "or pyiqa's CKDN_model_best-*.pth"
    )


def _raw_state_dict(checkpoint: Mapping) -> Mapping[str, Tensor]:
    for key in ("state_dict", "params_ema", "params"):
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def remap_official_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip ``module.``/``net.`` prefixes and rename official modules to ours."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        head, _, rest = key.partition(".")
        if head not in OFFICIAL_TO_OURS:
            raise WeightsError(f"unexpected tensor {key!r} in a CKDN checkpoint")
        out[f"{OFFICIAL_TO_OURS[head]}.{rest}"] = value
    return out


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    *,
    license: str | None = None,
    layout: str | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Convert an official or pyiqa CKDN checkpoint to our safetensors file; returns ``dst``.

    ``layout`` (``"official"``/``"pyiqa"``), when given, is the layout the caller
    expects; ``extra_metadata`` adds string keys (e.g. ``source_url``) to the
    file's metadata next to ours.

    Raises:
        WeightsError: unreadable file, unknown layout, another layout than
            ``layout``, or tensors that do not fit CKDN.
        WeightsError: ``extra_metadata`` would overwrite one of the format's keys.
    """
    src = Path(src)
    checkpoint = load_foreign_checkpoint(src)
    detected = detect_layout(checkpoint)
    if layout is not None and detected != layout:
        raise WeightsError(f"{src}: expected the {layout} CKDN layout, found the {detected} layout")
    layout = detected
    tensors = remap_official_keys(_raw_state_dict(checkpoint))
    model = create_model(DEFAULT_ARCH)
    # The auxiliary branch is not needed for scoring; keep whatever the file has
    # and fill the rest from a fresh model so the file is always complete.
    full = {k: tensors.get(k, v) for k, v in model.state_dict().items()}
    extra = {k: v for k, v in tensors.items() if k not in full}
    check_state_dict(model, {**full, **extra}, f"{src} ({layout} layout)")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    missing_aux = sorted({k.split(".")[0] for k in full if k not in tensors})
    provenance = f"converted from {src.name} ({layout} CKDN layout, sha256 {digest})"
    if missing_aux:
        provenance += f"; freshly initialised: {', '.join(missing_aux)}"
    return save_weights(
        full,
        dst,
        arch=DEFAULT_ARCH,
        provenance=provenance,
        license=license or "as stated by the source checkpoint's authors",
        extra_metadata=extra_metadata,
    )


# model.init name of the ST-LPIPS AlexNet trunk (its ``net.`` keys) -> the ``alex`` encoder layers it fills.
STLPIPS_ALEX = "stlpips_alex"
STLPIPS_ALEX_TO_OURS = {
    "net.slice1.0.weight": "conv1.weight",
    "net.slice1.0.bias": "conv1.bias",
    "net.slice1.1.filt": "down1.filt",
    "net.slice2.4.filt": "down2.filt",
    "net.slice2.5.weight": "conv2.weight",
    "net.slice2.5.bias": "conv2.bias",
}


def init_from_stlpips_alex(model: nn.Module, path: PathLike) -> nn.Module:
    """Initialise both encoders of a ``ckdn_alex`` network from the ST-LPIPS AlexNet file.

    Its conv1, conv2 and blur filters go into the restored and the reference encoder alike
    (ImageNet-trained, then tuned by the ST-LPIPS authors for shift tolerance); the 1x1
    projection, comparators and heads keep their random init. ST-LPIPS normalises its input
    with ImageNet's mean and std, as our preprocessing does, so the weights apply unchanged.
    """
    state = load_foreign_checkpoint(path)
    own = model.state_dict()
    new: dict[str, Tensor] = {}
    for key, ours in STLPIPS_ALEX_TO_OURS.items():
        value = state.get(key)
        if not isinstance(value, Tensor):
            raise WeightsError(f"{path}: no tensor {key}; is it the ST-LPIPS AlexNet file?")
        for encoder in ("restored_encoder", "reference_encoder"):
            name = f"{encoder}.{ours}"
            if name not in own or own[name].shape != value.shape:
                raise WeightsError(f"{path}: {key} {tuple(value.shape)} does not fit {name}; ST-LPIPS AlexNet "
                                   "weights need model.arch ckdn_alex")
            new[name] = value
    model.load_state_dict(new, strict=False)
    return model


def init_from_imagenet_resnet50(model: nn.Module, path: PathLike) -> nn.Module:
    """Initialise CKDN from a local torchvision ResNet-50 state dict (``resnet50-*.pth``).

    As in the paper: conv1 -> both stems, layer1 -> both encoders, layer2 -> both
    comparators; the stem BN, layer3+ and fc are dropped; heads keep their init.
    Never downloads.
    """
    state = _raw_state_dict(load_foreign_checkpoint(path))
    own = model.state_dict()
    new: dict[str, Tensor] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        for target in RESNET50_TO_OURS.get(head, ()):
            name = f"{target}.{rest}"
            if name not in own or own[name].shape != value.shape:
                raise WeightsError(f"{path}: {key} {tuple(value.shape)} does not fit {name}; is it a ResNet-50?")
            new[name] = value
    if not new:
        raise WeightsError(f"{path}: no conv1/layer1/layer2 tensors found; is it a torchvision ResNet-50?")
    model.load_state_dict(new, strict=False)
    return model
