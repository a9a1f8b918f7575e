"""``DRIQA``: score restored images against their degraded inputs.

The scorer keeps a private inference copy of the network with BatchNorm folded
into the convolutions and channels-last weights; with ``dtype=torch.bfloat16``
the convolutional trunk runs in bf16 (weights cast once, unlike autocast which
re-casts them every call) while the small MLP head stays fp32.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from drqa_plugin.constants import (
    DEFAULT_ARCH,
    INTERPOLATIONS,
    PREPROCESS_MODES,
    resolve_device,
    resolve_dtype,
)
from drqa_plugin.errors import ConfigError, ImageInputError
from drqa_plugin.models.ckdn import frozen_inference_copy
from drqa_plugin.preprocess import (
    ChannelOrder,
    ImageLike,
    PreprocessMode,
    prepare_pair,
    tile_pairs,
    to_float_batch,
)
from drqa_plugin.pretrained import PretrainedConfig
from drqa_plugin.registry import get_variant
from drqa_plugin.weights import load_model

# Pairs per forward pass. Small chunks keep a 2-core CPU's activations in cache
# (pyiqa's CKDN runs ~30 % slower per pair at batch 8 than at batch 1 here).
DEFAULT_CHUNK = {"cpu": 2, "cuda": 32}
# Pairs decoded and preprocessed at a time (at least one network chunk).
LOAD_BATCH = 16


class DRIQA:
    """Degraded-reference quality scorer. ``scorer(restored, degraded) -> Tensor (N,)``, higher is better.

    Args:
        model: a weights name (default ``"ckdn_pipal"``, the authors' published model, fetched
            once and cached), the path of one of our ``.safetensors`` files, or a CKDN module.
        preprocess: ``"ckdn"`` (official protocol: shorter side 329, centre crop 288),
            ``"none"`` (whole image) or ``"tiles"`` (mean over ``tile_size`` tiles covering
            the whole image, no resampling).
        device, dtype: where and in which precision the network runs; chosen by the
            caller, default CPU fp32. ``dtype`` is a torch dtype or a name (``"bf16"``,
            ``"bfloat16"``, ``"fp16"``, ``"fp32"``); bf16/fp16 run the trunk in that dtype.
        chunk_size: pairs per forward pass (memory stays bounded for any input count);
            default 2 on CPU, 32 on CUDA.
        reference_interpolation: how a reference of another size (an SR input) is brought
            to the restored size before the protocol runs.
        channel_order: channel order of uint8/float *arrays* (``"BGR"`` for OpenCV images);
            a constructor argument, fixed for the scorer's lifetime.

    Raises:
        ConfigError: an unknown preprocess mode, precision, interpolation or device.
        WeightsError: ``model`` names a missing or unusable weights file.
    """

    higher_is_better = True

    def __init__(
        self,
        model: nn.Module | str | os.PathLike = "ckdn_pipal",
        *,
        preprocess: PreprocessMode = "ckdn",
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        chunk_size: int | None = None,
        tile_size: int | None = None,
        reference_interpolation: str = "bicubic",
        channel_order: ChannelOrder = "RGB",
    ) -> None:
        if preprocess not in PREPROCESS_MODES:
            raise ConfigError(f"preprocess must be one of {PREPROCESS_MODES}, got {preprocess!r}")
        if reference_interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"reference_interpolation must be one of {INTERPOLATIONS}, got {reference_interpolation!r}"
            )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model)
        self.preprocess = preprocess
        self.pretrained_cfg: PretrainedConfig = getattr(model, "pretrained_cfg", None) or get_variant(
            DEFAULT_ARCH
        ).pretrained
        self.tile_size = tile_size or self.pretrained_cfg.preprocess.crop
        self.chunk_size = chunk_size or DEFAULT_CHUNK.get(self.device.type, 8)
        if self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {self.chunk_size}")
        self.reference_interpolation = reference_interpolation
        self.channel_order = channel_order
        if self.pretrained_cfg.provenance == get_variant(DEFAULT_ARCH).pretrained.provenance:
            warnings.warn(
                "DRIQA: the network is randomly initialised, so its scores carry no information about image "
                "quality; pass weights (e.g. 'ckdn_pipal' or a trained .safetensors file)",
                stacklevel=2,
            )
        self.model = frozen_inference_copy(model, dtype=self.dtype, device=self.device, differentiable=False)

    @torch.inference_mode()
    def __call__(self, restored: ImageLike | Sequence[ImageLike], degraded: ImageLike | Sequence[ImageLike]) -> Tensor:
        """Scores of N pairs as a float32 CPU tensor of shape (N,)."""
        if isinstance(restored, Tensor) and isinstance(degraded, Tensor) and restored.ndim == degraded.ndim == 4:
            return self._score_tensors(restored, degraded)
        restored_items, degraded_items = _as_items(restored), _as_items(degraded)
        if len(restored_items) != len(degraded_items):
            raise ImageInputError(f"{len(restored_items)} restored images but {len(degraded_items)} degraded ones")
        pairs = list(zip(restored_items, degraded_items))
        scores = [self._score_items(batch) for batch in _chunks(pairs, self._load_batch)]
        return torch.cat(scores) if scores else torch.empty(0)

    def score_pair(self, restored: ImageLike, degraded: ImageLike) -> float:
        """The score of one pair as a Python float."""
        return float(self(restored, degraded)[0])

    @property
    def _load_batch(self) -> int:
        # Pairs decoded and preprocessed together: bounds memory, and lets the
        # (memory-bound) MLP head run once for several network chunks.
        return max(self.chunk_size, LOAD_BATCH)

    def _score_tensors(self, restored: Tensor, degraded: Tensor) -> Tensor:
        if restored.shape[0] != degraded.shape[0]:
            raise ImageInputError(f"{restored.shape[0]} restored images but {degraded.shape[0]} degraded ones")
        step = self._load_batch
        scores = [
            self._score_batch(
                to_float_batch(restored[i : i + step], self.channel_order).to(self.device),
                to_float_batch(degraded[i : i + step], self.channel_order).to(self.device),
            ).float().cpu()
            for i in range(0, restored.shape[0], step)
        ]
        return torch.cat(scores) if scores else torch.empty(0)

    def _score_items(self, pairs: list[tuple[ImageLike, ImageLike]]) -> Tensor:
        loaded = [(self._load(r), self._load(d)) for r, d in pairs]
        groups: dict[tuple, list[int]] = {}
        for i, (r, d) in enumerate(loaded):
            groups.setdefault((tuple(r.shape[-2:]), tuple(d.shape[-2:])), []).append(i)
        out = torch.empty(len(loaded))
        for idx in groups.values():
            r = torch.cat([loaded[i][0] for i in idx]).to(self.device)
            d = torch.cat([loaded[i][1] for i in idx]).to(self.device)
            out[idx] = self._score_batch(r, d).float().cpu()
        return out

    def _load(self, item: ImageLike) -> Tensor:
        x = to_float_batch(item, self.channel_order)
        if x.shape[0] != 1:
            raise ImageInputError(f"expected one image per item, got a batch of {x.shape[0]}")
        return x

    def _score_batch(self, restored: Tensor, degraded: Tensor) -> Tensor:
        x, y = prepare_pair(
            restored, degraded, self.preprocess, self.pretrained_cfg.preprocess, self.reference_interpolation
        )
        n, tiles = x.shape[0], 1
        if self.preprocess == "tiles":
            x, y, tiles = tile_pairs(x, y, self.tile_size)
        pooled = torch.cat(
            [self._pooled(xs, ys) for xs, ys in zip(x.split(self.chunk_size), y.split(self.chunk_size))]
        )
        return self.model.score_pooled(pooled).view(n, tiles).mean(1)

    def _pooled(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        y = y.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.model.pooled_features(x, y)

    def __repr__(self) -> str:
        return (
            f"DRIQA(preprocess={self.preprocess!r}, device={self.device}, dtype={self.dtype}, "
            f"chunk_size={self.chunk_size}, provenance={self.pretrained_cfg.provenance!r})"
        )


def _as_items(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """Split the caller's input into per-image items without loading files."""
    if isinstance(images, Tensor):
        if images.ndim == 4:
            return list(images.unbind(0))
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    raise ImageInputError(
        f"unsupported input {type(images).__name__}; pass a tensor, an array, a PIL image, a path or a list of them"
    )


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_file_pairs(
    scorer: Callable[[list[Tensor], list[Tensor]], Tensor],
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[np.ndarray, dict[int, str]]:
    """Score (restored, degraded) files, ``batch_size`` pairs loaded at a time.

    Returns the scores (NaN where a pair failed) and, for each failed pair's index, the
    reason naming both files. A pair that cannot be read or scored (unreadable file,
    other aspect ratio, too small for the protocol) never stops the others.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    scores = np.full(len(pairs), np.nan)
    errors: dict[int, str] = {}
    with tqdm(total=len(pairs), desc="scoring", unit="pair", disable=not progress) as bar:
        for start in range(0, len(pairs), batch_size):
            loaded: dict[int, tuple[Tensor, Tensor]] = {}
            for index in range(start, min(start + batch_size, len(pairs))):
                try:
                    r, d = (to_float_batch(path)[0] for path in pairs[index])
                except ImageInputError as exc:
                    errors[index] = _pair_error(pairs[index], exc)
                    continue
                loaded[index] = (r, d)
            _score_loaded(scorer, pairs, loaded, scores, errors)
            bar.update(min(batch_size, len(pairs) - start))
    return scores, errors


def _score_loaded(scorer: Callable, pairs: Sequence, loaded: dict[int, tuple[Tensor, Tensor]],
                  scores: np.ndarray, errors: dict[int, str]) -> None:
    """Score a loaded batch at once; if a pair is refused, score each alone to find which."""
    if not loaded:
        return
    try:
        values = scorer([r for r, _ in loaded.values()], [d for _, d in loaded.values()])
    except ImageInputError as exc:
        if len(loaded) == 1:
            index = next(iter(loaded))
            errors[index] = _pair_error(pairs[index], exc)
            return
        for index, pair in loaded.items():
            _score_loaded(scorer, pairs, {index: pair}, scores, errors)
        return
    scores[list(loaded)] = values.detach().float().cpu().numpy()


def _pair_error(pair: tuple, exc: Exception) -> str:
    return f"{pair[0]} vs {pair[1]}: {exc}"
