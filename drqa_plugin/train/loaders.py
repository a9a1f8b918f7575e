"""Training and validation loaders, and the normalisation the model's pretrained config asks for."""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from drqa_plugin.baselines import other_input_references
from drqa_plugin.data import build_dataset, collate_groups
from drqa_plugin.errors import TrainingError
from drqa_plugin.preprocess import normalize
from drqa_plugin.pretrained import PreprocessConfig
from drqa_plugin.train.config import TrainConfig


class FixedSamples(Dataset):
    """Hides a dataset's ``set_epoch`` so the validation samples stay the same at every evaluation.

    (Accelerate calls ``dataset.set_epoch(iteration)`` on every pass over a prepared
    loader whose sampler has no ``set_epoch``, which would redraw synthetic val pairs.)
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # map-style datasets are sized

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]


class OtherInputReferences(Dataset):
    """The val samples with each degraded crop replaced by the degraded crop of another group
    (:func:`drqa_plugin.baselines.other_input_references`): the trainer's reference check.

    Every pair of a group takes the same partner (the first pair of another group), so each
    partner's degraded crop is read once and kept: one crop per group, not one per sample.
    """

    def __init__(self, dataset: Dataset, groups: list[int]) -> None:
        self.dataset = dataset
        self.other = other_input_references(groups)
        self._partner_crops: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.other)

    def __getitem__(self, index: int) -> Any:
        sample = dict(self.dataset[index])
        partner = self.other[index]
        if partner not in self._partner_crops:
            self._partner_crops[partner] = self.dataset[partner]["degraded"]
        degraded = self._partner_crops[partner]
        if degraded.shape != sample["restored"].shape:
            raise TrainingError(f"log.reference_check needs val crops of one size; got {tuple(degraded.shape)} and "
                                f"{tuple(sample['restored'].shape)} (set data.crop, or log.reference_check=false)")
        sample["degraded"] = degraded
        return sample


def sample_groups(dataset: Dataset) -> list[int]:
    """The group id of every sample: the dataset's own ``group_ids()`` (our datasets have it, and it
    reads no image), else each sample's ``group``."""
    inner = getattr(dataset, "dataset", dataset)  # FixedSamples wraps the val set
    if hasattr(inner, "group_ids"):
        return list(inner.group_ids())
    return [int(dataset[i]["group"]) for i in range(len(dataset))]  # type: ignore[arg-type]


# Imported once by the forkserver, so each worker it forks starts with them loaded.
_FORKSERVER_PRELOAD = ["torch", "drqa_plugin.data"]


def worker_context(start_method: str) -> BaseContext | None:
    """The multiprocessing context DataLoader workers start with (``loader.start_method``); None (the
    platform's default) where that method does not exist, e.g. forkserver on Windows."""
    if start_method not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(_FORKSERVER_PRELOAD)  # read when the server starts, once per process
    return context


def build_loaders(cfg: TrainConfig) -> tuple[Dataset, Dataset, DataLoader, DataLoader, DataLoader | None]:
    """Train and val sets and loaders, and the reference-check loader (None when off or one val group)."""
    train_set = build_dataset(cfg.data, split="train")
    val_set = FixedSamples(build_dataset(cfg.data, split="val"))
    if len(train_set) == 0:  # type: ignore[arg-type]  # map-style datasets are sized
        raise TrainingError(f"the training data is empty (data.kind={cfg.data.kind!r}, data.root={cfg.data.root!r})")
    if len(val_set) == 0:
        raise TrainingError(f"the validation data is empty (data.kind={cfg.data.kind!r}, data.root={cfg.data.root!r})")
    lc = cfg.loader
    common: dict[str, Any] = dict(num_workers=lc.num_workers, persistent_workers=False, pin_memory=torch.cuda.is_available())
    if lc.num_workers > 0:
        common["multiprocessing_context"] = worker_context(lc.start_method)
    # With data.group_size a sample is an input of that many restorations; batch_size counts restorations.
    group = cfg.data.group_size
    train = DataLoader(train_set, batch_size=lc.batch_size // max(group, 1), shuffle=True, drop_last=lc.drop_last,
                       collate_fn=collate_groups if group else None, **common)
    val = DataLoader(val_set, batch_size=lc.eval_batch_size, shuffle=False, drop_last=False, **common)
    other = None
    if cfg.log.reference_check:
        groups = sample_groups(val_set)
        if len(set(groups)) >= 2:
            other = DataLoader(OtherInputReferences(val_set, groups), batch_size=lc.eval_batch_size, shuffle=False,
                               drop_last=False, **common)
    return train_set, val_set, train, val, other


class Normalizer:
    """ImageNet normalisation (+ memory format) of float [0, 1] batches on the training device."""

    def __init__(self, cfg: PreprocessConfig, channels_last: bool) -> None:
        self.cfg = cfg
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: Tensor) -> Tensor:
        return normalize(x, self.cfg).contiguous(memory_format=self.fmt)
