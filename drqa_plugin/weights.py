"""Our weights format: one ``.safetensors`` file, tensors plus metadata.

Metadata (all strings, as safetensors requires):

==================  ========================================================
``format``          ``"drqa-plugin"``
``format_version``  ``"1"``
``arch``            registered variant name, e.g. ``"ckdn_r50"``
``preprocess``      JSON of :class:`~drqa_plugin.pretrained.PreprocessConfig`
``score_range``     JSON list ``[low, high]``
``higher_is_better``  ``"true"`` / ``"false"``
``license``         licence of the weights
``provenance``      where they came from (conversion source, training run)
==================  ========================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from drqa_plugin.constants import DEFAULT_ARCH
from drqa_plugin.errors import WeightsError, WeightsNotFoundError
from drqa_plugin.files import atomic_path
from drqa_plugin.pretrained import PreprocessConfig, PretrainedConfig
from drqa_plugin.registry import create_model, get_variant

FORMAT_NAME = "drqa-plugin"
FORMAT_VERSION = "1"
PathLike = str | os.PathLike
# Weights are meant to be shared: rw-r--r-- (less the umask), not mkstemp's private 0600.
FILE_MODE = 0o644
TORCH_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")

__all__ = ["WeightsError", "load_model", "read_metadata", "save_model", "save_weights"]


def pretrained_metadata(arch: str, cfg: PretrainedConfig) -> dict[str, str]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "preprocess": cfg.preprocess.to_json(),
        "score_range": json.dumps(list(cfg.score_range)),
        "higher_is_better": "true" if cfg.higher_is_better else "false",
        "license": cfg.license,
        "provenance": cfg.provenance,
    }


def save_weights(
    state_dict: Mapping[str, Tensor],
    path: PathLike,
    *,
    arch: str = DEFAULT_ARCH,
    pretrained: PretrainedConfig | None = None,
    extra_metadata: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Path:
    """Write a state dict atomically (temp file + rename) as our safetensors format.

    ``overrides`` replace fields of the variant's :class:`PretrainedConfig`
    (``license=...``, ``provenance=...``); ``extra_metadata`` adds string keys of
    its own (e.g. ``source_url``). The file gets mode 0644 less the umask.

    Raises:
        WeightsError: ``extra_metadata`` would overwrite one of the format's keys.
    """
    cfg = pretrained or get_variant(arch).pretrained
    if overrides:
        cfg = replace(cfg, **overrides)
    metadata = pretrained_metadata(arch, cfg)
    clash = sorted(set(extra_metadata or {}) & set(metadata))
    if clash:
        raise WeightsError(f"extra metadata must not overwrite the format's keys {clash}")
    metadata.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, FILE_MODE & ~_umask())
    return path


def save_model(model: nn.Module, path: PathLike, **overrides: Any) -> Path:
    """Save a model built by :func:`create_model`/:func:`load_model`, keeping its pretrained config."""
    arch = getattr(model, "arch_name", DEFAULT_ARCH)
    cfg = getattr(model, "pretrained_cfg", None) or get_variant(arch).pretrained
    return save_weights(model.state_dict(), path, arch=arch, pretrained=cfg, **overrides)


def read_metadata(path: PathLike) -> dict[str, str]:
    """The metadata of a weights file, with clear errors for missing or corrupt files."""
    path = _existing(path)
    if path.suffix in TORCH_CHECKPOINT_SUFFIXES:
        raise WeightsError(f"{path} is a PyTorch checkpoint, not a drqa-plugin weights file: "
                           f"run `drqa convert {path} OUT.safetensors` and use OUT.safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    if meta.get("format") != FORMAT_NAME:
        raise WeightsError(
            f"{path}: not a drqa-plugin weights file (metadata 'format' is {meta.get('format')!r}); "
            "convert published checkpoints with `drqa convert`"
        )
    return meta


def pretrained_config_from_metadata(meta: Mapping[str, str]) -> PretrainedConfig:
    try:
        low, high = json.loads(meta["score_range"])
        return PretrainedConfig(
            preprocess=PreprocessConfig.from_json(meta["preprocess"]),
            score_range=(float(low), float(high)),
            higher_is_better=meta["higher_is_better"] == "true",
            license=meta.get("license", "unspecified"),
            provenance=meta.get("provenance", "unspecified"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"weights metadata is incomplete or malformed: {exc!r}") from exc


def load_state_dict(path: PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of one of our weights files (tensors on CPU)."""
    meta = read_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise WeightsError(f"{path}: cannot read tensors (truncated or corrupt?): {exc}") from exc
    return tensors, meta


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise :class:`WeightsError` naming every missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
    if mismatched:
        problems.append(f"{len(mismatched)} with other shapes (e.g. {'; '.join(mismatched[:3])})")
    if problems:
        raise WeightsError(f"{source} does not fit {type(model).__name__}: " + ", ".join(problems))


def load_model(
    path: PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
) -> nn.Module:
    """Build the variant named in a weights file and load it (eval mode).

    ``path`` is one of our ``.safetensors`` files or a registered weights name
    (``"ckdn_pipal"``; see :mod:`drqa_plugin.hub`: fetched, verified and converted
    once, then read from the cache). The model's ``pretrained_cfg`` holds the
    preprocessing and score range from the file's metadata.

    Raises:
        WeightsNotFoundError: neither a file nor a known name.
        WeightsError: a corrupt or mismatched file, or a failed download (``DownloadError``).
    """
    from drqa_plugin.constants import resolve_dtype
    from drqa_plugin.hub import resolve_weights

    path = resolve_weights(path)
    tensors, meta = load_state_dict(path)
    arch = meta.get("arch", "")
    try:
        model = create_model(arch)
    except KeyError as exc:
        raise WeightsError(f"{path}: architecture {arch!r} is not known to this drqa-plugin") from exc
    check_state_dict(model, tensors, str(path))
    model.load_state_dict(tensors)
    setattr(model, "pretrained_cfg", pretrained_config_from_metadata(meta))  # noqa: B010
    return model.to(device=device, dtype=resolve_dtype(dtype) if dtype is not None else None).eval()


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
