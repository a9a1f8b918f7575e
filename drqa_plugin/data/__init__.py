"""Training and evaluation data for DR-IQA.

The trainer's interface::

    from drqa_plugin.data import DataConfig, build_dataset
    ds = build_dataset(DataConfig(crop=64), "train")
    sample = ds[0]   # dict, see below

A sample has float32 CHW RGB tensors in [0, 1] (not normalised), all crop x crop:
``restored``, ``degraded``, ``restored_2``, ``pristine``; 0-dim float32 tensors
``target`` / ``target_2`` (quality of restored / restored_2, about [0, 1]);
``group`` (int scene id, for grouped evaluation) and ``name`` (str).
Datasets have ``set_epoch(epoch)`` to draw new (still deterministic) samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from drqa_plugin.data.config import (
    DataConfig,
    DegradationConfig,
    PIPALLayout,
    RestorationConfig,
)
from drqa_plugin.data.labellers import (
    available_labellers,
    get_labeller,
    ms_ssim,
    register_labeller,
    ssim,
)
from drqa_plugin.data.photos import (
    BUNDLED_PHOTOS,
    DataError,
    Photo,
    list_photos,
    read_rgb,
)
from drqa_plugin.data.pipal import PIPALPairs, collate_groups, read_pipal_list

# The synthetic pipeline needs OpenCV; import it on first use so that PIPAL data,
# ``drqa eval`` and the metrics work without it.
_SYNTHETIC = ("SyntheticPairs", "RestoreContext", "RESTORERS", "degrade", "restore", "sample_rng")


def __getattr__(name: str):
    if name in _SYNTHETIC:
        from drqa_plugin.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BUNDLED_PHOTOS",
    "DataConfig",
    "DataError",
    "DegradationConfig",
    "PIPALLayout",
    "PIPALPairs",
    "Photo",
    "RESTORERS",
    "RestorationConfig",
    "RestoreContext",
    "SyntheticPairs",
    "available_labellers",
    "build_dataset",
    "collate_groups",
    "degrade",
    "get_labeller",
    "list_photos",
    "ms_ssim",
    "read_pipal_list",
    "read_rgb",
    "register_labeller",
    "restore",
    "sample_rng",
    "split_photos",
    "ssim",
]


def split_photos(photos: list[Photo], cfg: DataConfig) -> tuple[list[int], list[int]]:
    """Indices of (train, val) photos: ``cfg.val_photos`` by name, else a seeded draw."""
    if len(photos) < 2:
        raise DataError(f"need at least 2 photos to hold some out for validation, found {len(photos)}")
    names = [p.name for p in photos]
    if cfg.val_photos:
        unknown = [n for n in cfg.val_photos if n not in names]
        if unknown:
            raise DataError(f"data.val_photos {unknown} are not among the photos {names}")
        val = sorted(names.index(n) for n in cfg.val_photos)
        if len(val) == len(photos):
            raise DataError("data.val_photos holds out every photo; nothing is left to train on")
    else:
        n_val = min(len(photos) - 1, max(1, round(cfg.val_fraction * len(photos))))
        val = sorted(int(i) for i in np.random.default_rng(cfg.seed).permutation(len(photos))[:n_val])
    train = [i for i in range(len(photos)) if i not in set(val)]
    return train, val


def resolve_list_file(list_file: str, root: str) -> str:
    """A relative list file that does not exist here is looked up under ``root``.

    So ``data.root=/data/PIPAL`` alone finds the recipe's ``train.txt`` in it.
    """
    path = Path(list_file)
    if path.is_absolute() or path.exists():
        return str(path)
    return str(Path(root) / path)


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The ``"train"`` or ``"val"`` dataset described by ``cfg``.

    Checks files and folders now (clear DataError if empty/missing/malformed);
    pixels are read lazily in ``__getitem__``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if cfg.kind == "pipal":
        assert cfg.root is not None and cfg.list_file is not None  # DataConfig refuses pipal without them
        if cfg.val_list_file is not None:
            list_file, part = (cfg.list_file if split == "train" else cfg.val_list_file), None
        else:
            list_file, part = cfg.list_file, split
        return PIPALPairs(cfg.root, resolve_list_file(list_file, cfg.root), cfg.crop, cfg.seed, split=part,
                          val_fraction=cfg.val_fraction,
                          layout=cfg.pipal, seed=cfg.seed, random_crop=(split == "train"),
                          augment=cfg.augment and split == "train",
                          center_labels=cfg.center_labels and split == "train",
                          group_size=cfg.group_size if split == "train" else 0)
    from drqa_plugin.data.synthetic import SyntheticPairs

    get_labeller(cfg.labeller)  # fail now on an unknown or uninstallable labeller
    photos = list_photos(cfg.root)
    train, val = split_photos(photos, cfg)
    chosen = train if split == "train" else val
    length = cfg.num_samples if split == "train" else cfg.val_samples
    return SyntheticPairs([photos[i] for i in chosen], chosen, cfg, split, length)
