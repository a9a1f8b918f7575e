"""Find SR checkpoints, parse their iteration, and load them safely as callable models.

Loading never unpickles arbitrary objects: ``.pth``/``.pt``/``.ckpt``/``.bin`` files are read
with ``torch.load(weights_only=True)`` and ``.safetensors`` with safetensors. (spandrel's own
``load_from_file`` uses a restricted unpickler of its own and TorchScript for ``.pt``, so we
read the state dict here and hand spandrel only the tensors.) The architecture is detected
by spandrel (ESRGAN/Real-ESRGAN, Compact, SwinIR, HAT, SPAN, ...); BasicSR's ``params`` /
``params_ema`` wrappers are unwrapped. When spandrel does not know the architecture and a
BasicSR option file is given, its ``network_g`` is built with BasicSR's ``build_network``
and the weights are loaded into it strictly.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drqa_plugin.config import read_yaml_mapping
from drqa_plugin.errors import ConfigError, MissingFileError, WeightsError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
# BasicSR-style wrappers, most specific first (an EMA copy is what Real-ESRGAN/BasicSR validate).
WRAPPER_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "net", "net_g")
# Names in front of an iteration number: net_g_5000, model_iter5000, checkpoint-5000, step5000.
_ITERATION_TOKEN = re.compile(r"^(?:iter|it|step|steps|ckpt|checkpoint|epoch|e)?(\d+)$", re.IGNORECASE)


class CheckpointError(WeightsError):
    """An SR checkpoint cannot be read safely, is not a recognised architecture, or does not fit it."""


# ----------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Checkpoint:
    """One SR checkpoint: its resolved path, a short unique label and the iteration in its name."""

    path: Path
    label: str
    iteration: int | None

    @property
    def key(self) -> str:
        return str(self.path)


def parse_iteration(name: str) -> int | None:
    """The training iteration in a checkpoint's file name, or None.

    The last ``_``/``-``/``.``-separated part of the stem that is a number, optionally
    prefixed by ``iter``, ``step``, ``epoch``, ... : ``net_g_5000.pth`` -> 5000,
    ``net_g_5000_ema.pth`` -> 5000, ``model_iter12000.pth`` -> 12000, ``net_g_latest.pth``
    -> None, ``RealESRGAN_x4plus.pth`` -> None (``x4plus`` is a scale, not an iteration).
    """
    stem = Path(name).name
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for token in reversed(re.split(r"[_\-.]", stem)):
        match = _ITERATION_TOKEN.match(token)
        if match:
            return int(match.group(1))
    return None


def find_checkpoints(patterns: Sequence[str]) -> list[Checkpoint]:
    """Checkpoints named by glob patterns, files or folders, sorted by iteration (unnumbered last).

    A folder means every checkpoint file directly inside it. Labels are the paths relative to
    the deepest folder all checkpoints share, without the suffix (``net_g_5000``, or
    ``run_a/models/net_g_5000`` when several runs are compared).

    Raises:
        MissingFileError: a pattern matches nothing, or no checkpoint was found at all.
    """
    paths: dict[Path, None] = {}
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        found = []
        for match in matches:
            p = Path(match)
            if p.is_dir():
                found += [c for c in sorted(p.iterdir()) if c.is_file() and c.suffix.lower() in CHECKPOINT_SUFFIXES]
            elif p.is_file():
                found.append(p)
        if not found:
            raise MissingFileError(f"--models {pattern!r} matches no checkpoint file")
        for p in found:
            paths[p.resolve()] = None
    if not paths:
        raise MissingFileError("no checkpoint given")
    resolved = list(paths)
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    checkpoints = []
    for p in resolved:
        rel = p.relative_to(root)
        label = str(rel.with_suffix("")) if rel.suffix.lower() in CHECKPOINT_SUFFIXES else str(rel)
        checkpoints.append(Checkpoint(p, label.replace(os.sep, "/"), parse_iteration(p.name)))
    counts = Counter(c.label for c in checkpoints)  # net_g_5000.pth next to net_g_5000.safetensors
    checkpoints = [Checkpoint(c.path, c.label + c.path.suffix if counts[c.label] > 1 else c.label, c.iteration)
                   for c in checkpoints]
    return sorted(checkpoints, key=lambda c: (c.iteration is None, c.iteration or 0, c.label))


# ----------------------------------------------------------------------------- reading


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level mapping stored in a checkpoint, read without unpickling code.

    Raises:
        CheckpointError: missing, unreadable, not a mapping, or holding objects that
            ``weights_only=True`` refuses (a pickled model instead of its weights).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError (zip), EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read {path} safely with torch.load(weights_only=True): {first[:300]}"
        ) from None
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def unwrap_state_dict(state: Mapping[str, Any], param_key: str | None = None) -> dict[str, Tensor]:
    """The tensors of a (possibly BasicSR-wrapped) checkpoint, ``module.`` prefixes removed."""
    inner: Any = state
    if param_key:
        if not isinstance(state.get(param_key), Mapping):
            raise CheckpointError(f"checkpoint has no {param_key!r} entry (keys: {_some(state)})")
        inner = state[param_key]
    else:
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), Mapping):
                inner = state[key]
                break
    tensors = {k: v for k, v in inner.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint holds no tensors (keys: {_some(state)})")
    for prefix in ("module.", "netG.", "_orig_mod."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def _some(state: Mapping[str, Any], n: int = 5) -> str:
    keys = list(state)
    return ", ".join(map(str, keys[:n])) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


# ----------------------------------------------------------------------------- models


@dataclass
class SRModel:
    """An RGB -> RGB image model: ``model(x)`` maps (1, 3, h, w) in [0, 1] to (1, 3, s*h, s*w) in [0, 1]."""

    forward: Callable[[Tensor], Tensor]
    scale: int
    architecture: str
    source: str  # "spandrel" or "basicsr"
    device: torch.device
    multiple_of: int = 1

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple_of, (-w) % self.multiple_of
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        y = self.forward(x.to(self.device))
        return y[..., : h * self.scale, : w * self.scale].clamp_(0, 1)

    def describe(self) -> str:
        return f"{self.architecture} x{self.scale} ({self.source})"


def load_sr_model(path: str | os.PathLike, device: torch.device | str = "cpu",
                  basicsr_options: Mapping[str, Any] | None = None) -> SRModel:
    """An SR checkpoint as an :class:`SRModel`: spandrel first, then BasicSR's ``network_g`` if given.

    Raises:
        CheckpointError: unreadable, unknown to spandrel (and no usable option file), not
            RGB -> RGB, or the weights do not fit the option file's network.
    """
    device = torch.device(device)
    state = read_state_dict(path)
    try:
        return _from_spandrel(state, device)
    except CheckpointError as exc:
        if basicsr_options is None:
            raise CheckpointError(f"{path}: {exc}; if it is a BasicSR network, pass its option file "
                                  "with --basicsr-opt") from None
        spandrel_reason = str(exc)
    try:
        return _from_basicsr(state, basicsr_options, device)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {spandrel_reason}, and from the BasicSR option file: {exc}") from None


def _from_spandrel(state: Mapping[str, Any], device: torch.device) -> SRModel:
    try:
        import spandrel
    except ImportError as exc:
        raise CheckpointError("spandrel is not installed (pip install spandrel)") from exc
    tensors = unwrap_state_dict(state)
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_state_dict(tensors)
    except spandrel.UnsupportedModelError:
        raise CheckpointError(f"spandrel does not recognise the architecture (tensors: {_some(tensors, 3)})") from None
    except Exception as exc:  # noqa: BLE001 - an architecture's own loader failing on odd shapes
        raise CheckpointError(f"spandrel could not build the model: {type(exc).__name__}: {exc}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise CheckpointError(f"spandrel found a {descriptor.architecture.name} model, which is not an image-to-image model")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise CheckpointError(f"{descriptor.architecture.name} model maps {descriptor.input_channels} to "
                              f"{descriptor.output_channels} channels; only RGB -> RGB models can be validated")
    descriptor.model.eval()
    return SRModel(descriptor, int(descriptor.scale), descriptor.architecture.name, "spandrel", device)


# ----------------------------------------------------------------------------- BasicSR fallback


def load_basicsr_options(path: str | os.PathLike) -> dict[str, Any]:
    """A BasicSR option file with a ``network_g`` section.

    Raises:
        MissingFileError: the file does not exist.
        ConfigError: not YAML, or no ``network_g`` with a ``type``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"BasicSR option file not found: {path}")
    options = read_yaml_mapping(path)  # safe_load; ConfigError for bad YAML or a non-mapping top level
    network = options.get("network_g")
    if not isinstance(network, dict) or "type" not in network:
        raise ConfigError(f"{path}: no network_g section with a 'type' (the generator BasicSR builds)")
    return options


def _arch_registry():
    from drqa_plugin.integrations.basicsr._compat import import_basicsr

    import_basicsr()
    from basicsr.utils.registry import ARCH_REGISTRY

    return ARCH_REGISTRY


def _ensure_arch(name: str) -> None:
    """Import BasicSR's archs and, if still unknown, the known projects that register more."""
    from drqa_plugin.integrations.basicsr.launcher import KNOWN_EXTENSIONS

    registry = _arch_registry()
    importlib.import_module("basicsr.archs")
    for module in KNOWN_EXTENSIONS:
        if name in registry:
            return
        if importlib.util.find_spec(module) is not None:
            try:
                importlib.import_module(f"{module}.archs")
            except ImportError:
                continue
    if name not in registry:
        raise CheckpointError(f"network_g type {name!r} is not in BasicSR's arch registry "
                              f"(also tried: {', '.join(KNOWN_EXTENSIONS)})")


def _from_basicsr(state: Mapping[str, Any], options: Mapping[str, Any], device: torch.device) -> SRModel:
    try:
        network = deepcopy(dict(options["network_g"]))
        _ensure_arch(str(network["type"]))
        from basicsr.archs import build_network
    except ImportError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        net: nn.Module = build_network(dict(network))
    except Exception as exc:  # noqa: BLE001 - the architecture's constructor with the user's arguments
        raise CheckpointError(f"cannot build network_g {network}: {type(exc).__name__}: {exc}") from None
    path_opts = options.get("path") or {}
    param_key = path_opts.get("param_key_g") if isinstance(path_opts, Mapping) else None
    tensors = unwrap_state_dict(state, param_key if param_key in state else None)
    missing, unexpected, shapes = _compare(net.state_dict(), tensors)
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
        raise CheckpointError(f"weights do not fit network_g type {network['type']} ({'; '.join(parts)})")
    net.load_state_dict(tensors, strict=True)
    net.eval().to(device)
    multiple = int(network.get("window_size", 1) or 1)
    scale = _probe_scale(net, device, max(multiple, 16))
    return SRModel(net, scale, str(network["type"]), "basicsr", device, multiple_of=multiple)


def _compare(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and tuple(expected[k].shape) != tuple(given[k].shape)]
    return missing, unexpected, shapes


@torch.inference_mode()
def _probe_scale(net: nn.Module, device: torch.device, size: int) -> int:
    y = net(torch.zeros(1, 3, size, size, device=device))
    if y.ndim != 4 or y.shape[1] != 3 or y.shape[-1] % size or y.shape[-1] != y.shape[-2]:
        raise CheckpointError(f"network maps a 3x{size}x{size} input to {tuple(y.shape[1:])}; "
                              "only RGB -> RGB models with an integer scale can be validated")
    return y.shape[-1] // size
