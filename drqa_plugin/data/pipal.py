"""PIPAL-style labelled data, in the layout of the official CKDN code.

List file: one ``A0001_00_00.bmp,<MOS>`` per line (Elo MOS as in PIPAL).
For a listed name ``X`` under ``root``:

* restored   ``root/<restored_dir>/X``
* degraded   ``root/<degraded_dir>/ref_X`` (the "matched degraded image")
* pristine   ``root/<pristine_dir>/A0001.bmp`` (scene id = name up to the first ``_``)
* restored_2 another listed image of the same scene, drawn from (seed, epoch, index)

Names containing ``_06_`` are dropped, as the official code does.
Target = (MOS - 900) / 1000.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from drqa_plugin.data.config import PIPALLayout
from drqa_plugin.data.photos import DataError, read_rgb
from drqa_plugin.preprocess import to_float_batch

MOS_OFFSET = 900.0
MOS_SCALE = 1000.0
_MAX_LISTED = 5  # missing files quoted in an error message


@dataclass(frozen=True)
class ListEntry:
    name: str
    mos: float
    scene: str
    line: int  # 1-based line number in the list file


def mos_to_target(mos: float) -> float:
    return (mos - MOS_OFFSET) / MOS_SCALE


def scene_of(name: str) -> str:
    stem = Path(name).name
    return stem.split("_", 1)[0]


def read_pipal_list(list_file: str | os.PathLike, drop_pattern: str = "_06_") -> list[ListEntry]:
    """Parse a ``name,MOS`` list; blank lines and ``#`` comments are skipped.

    Raises DataError naming the file and line for malformed lines, bad MOS
    values, names without a scene prefix and duplicates.
    """
    path = Path(list_file)
    if not path.is_file():
        raise DataError(f"list file {str(path)!r} does not exist")
    entries: list[ListEntry] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{number}"
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2 or not parts[0]:
                raise DataError(f"{where}: expected '<image name>,<MOS>', got {line!r}")
            name, mos_text = parts
            try:
                mos = float(mos_text)
            except ValueError:
                raise DataError(f"{where}: MOS {mos_text!r} is not a number (line {line!r})") from None
            if not math.isfinite(mos):
                raise DataError(f"{where}: MOS must be finite, got {mos_text!r}")
            if "_" not in Path(name).name:
                raise DataError(f"{where}: cannot derive the scene of {name!r} "
                                "(PIPAL names look like A0001_00_00.bmp)")
            if name in seen:
                raise DataError(f"{where}: {name!r} is listed twice (first on line {seen[name]})")
            seen[name] = number
            if drop_pattern and drop_pattern in Path(name).name:
                continue
            entries.append(ListEntry(name, mos, scene_of(name), number))
    if not entries:
        raise DataError(f"list file {str(path)!r} has no usable entries")
    return entries


def row_method(row: Mapping[str, str | None]) -> tuple[str, str]:
    """(method key, photo) of one labelled-list CSV row; ``("", "")`` where it names neither.

    The key is ``task/method`` when the row names a task (a bank's lists do), so the method
    prior never pools ``bicubic`` x2 with ``bicubic`` x4; the photo is what the prior leaves out.
    """
    method, task = (row.get("method") or "").strip(), (row.get("task") or "").strip()
    return (f"{task}/{method}" if task and method else method), (row.get("photo") or "").strip()


def read_list_methods(list_file: str | os.PathLike) -> dict[str, tuple[str, str]] | None:
    """``name -> (method, photo)`` from the CSV beside a list, or None when there is none.

    ``drqa data build`` writes ``val.csv`` beside ``val.txt`` with ``restored``, ``method``,
    ``task`` and ``photo`` columns; the trainer uses it for the method-prior baseline
    (methods keyed by task, e.g. ``sr_x4/bicubic``; left out by photo, else by scene).
    """
    path = Path(list_file).with_suffix(".csv")
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not {"restored", "method"} <= set(reader.fieldnames or ()):
                return None
            return {row["restored"]: row_method(row) for row in reader}
    except (OSError, csv.Error, KeyError) as exc:
        raise DataError(f"cannot read the methods of {list_file} from {path}: {exc}") from None


def pipal_paths(root: str | os.PathLike, name: str, layout: PIPALLayout) -> tuple[Path, Path, Path]:
    """(restored, degraded, pristine) paths of a listed name."""
    base = Path(root)
    rel = Path(name)
    restored = base / layout.restored_dir / rel
    degraded = base / layout.degraded_dir / rel.parent / f"{layout.degraded_prefix}{rel.name}"
    pristine = base / layout.pristine_dir / rel.parent / f"{scene_of(name)}{rel.suffix}"
    return restored, degraded, pristine


def check_files(list_file: str | os.PathLike, groups: Sequence[tuple[int, Sequence[Path]]]) -> None:
    """Raise one DataError listing (up to a few) missing files with their list lines."""
    missing = [(line, p) for line, paths in groups for p in paths if not p.is_file()]
    if missing:
        shown = "; ".join(f"line {line}: {p}" for line, p in missing[:_MAX_LISTED])
        more = f" (and {len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
        raise DataError(f"{len(missing)} file(s) named by {list_file} are missing: {shown}{more}")


def split_scenes(scenes: Sequence[str], val_fraction: float, split_seed: int) -> tuple[set[str], set[str]]:
    """Deterministic (train, val) partition of scene ids; at least one scene each."""
    unique = sorted(set(scenes))
    if len(unique) < 2:
        raise DataError(f"need at least 2 scenes to split train/val, found {len(unique)}")
    order = np.random.default_rng(int(split_seed)).permutation(len(unique))
    n_val = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    val = {unique[i] for i in order[:n_val]}
    return set(unique) - val, val


def dihedral(image: np.ndarray, symmetry: int) -> np.ndarray:
    """One of the 8 symmetries of the square (0 = identity) of an HWC image: rotations by
    ``symmetry % 4`` quarter turns, mirrored when ``symmetry >= 4``."""
    out = np.rot90(image, symmetry % 4, axes=(0, 1))
    return out[:, ::-1] if symmetry >= 4 else out


class PIPALPairs(Dataset):
    """Samples of a PIPAL-layout list, same dict format as the synthetic pipeline.

    ``split=None`` uses every entry; "train"/"val" partition the scenes by
    ``val_fraction`` and ``split_seed`` (or pass a separate val list and
    ``split=None``). Training crops are random (from seed, epoch, index),
    ``random_crop=False`` takes the centre; ``augment`` flips/transposes each sample's crops
    (one of the 8 symmetries of the square, from the same seed); ``center_labels`` makes each
    target its label minus its scene's mean label plus the mean over all entries (the order within
    a scene is kept). Images smaller than ``crop`` raise.

    ``group_size=K`` (training): each sample is one *input* (scene) instead of one restoration:
    K of its restorations, drawn afresh each epoch (without replacement where it has K), all cut at
    one crop box with one symmetry, stacked along a first dimension of K; ``restored_2`` of each is
    the next one of the group. :func:`collate_groups` flattens a batch of groups, so the trainer sees
    ordinary samples whose ``group`` says which ones are restorations of one input at the same crop:
    what ``loss.listwise`` ranks.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        crop: int = 288,
        split_seed: int = 0,
        *,
        split: str | None = None,
        val_fraction: float = 0.2,
        layout: PIPALLayout | None = None,
        seed: int = 0,
        random_crop: bool = True,
        augment: bool = False,
        center_labels: bool = False,
        group_size: int = 0,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"PIPAL root {str(self.root)!r} does not exist or is not a folder")
        self.layout = layout or PIPALLayout()
        self.crop = int(crop)
        self.seed = int(seed)
        self.random_crop = random_crop
        self.augment = augment
        self.group_size = int(group_size)
        if self.group_size == 1 or self.group_size < 0:
            raise ValueError(f"group_size must be 0 (one restoration per sample) or >= 2, got {group_size!r}")
        self.epoch = 0
        entries = read_pipal_list(list_file, self.layout.drop_pattern)
        if split is not None:
            if split not in ("train", "val"):
                raise ValueError(f"split must be None, 'train' or 'val', got {split!r}")
            train, val = split_scenes([e.scene for e in entries], val_fraction, split_seed)
            keep = train if split == "train" else val
            entries = [e for e in entries if e.scene in keep]
        self.entries = entries
        self.paths = [pipal_paths(self.root, e.name, self.layout) for e in entries]
        check_files(list_file, [(e.line, p) for e, p in zip(entries, self.paths)])
        scenes = sorted({e.scene for e in entries})
        self.scene_ids = {s: i for i, s in enumerate(scenes)}
        self.by_scene: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            self.by_scene.setdefault(e.scene, []).append(i)
        self.scene_order = list(self.by_scene)
        self.targets = [mos_to_target(e.mos) for e in entries]
        if center_labels and entries:
            overall = float(np.mean(self.targets))
            shift = {s: overall - float(np.mean([self.targets[i] for i in idx])) for s, idx in self.by_scene.items()}
            self.targets = [t + shift[e.scene] for t, e in zip(self.targets, entries)]
        known = read_list_methods(list_file)
        # (method, photo) per entry for the trainer's baselines; None unless every entry has one.
        self.methods: list[tuple[str, str]] | None = None
        if known is not None and all(e.name in known for e in entries):
            self.methods = [(known[e.name][0], known[e.name][1] or e.scene) for e in entries]

    def __len__(self) -> int:
        return len(self.by_scene) if self.group_size else len(self.entries)

    def group_ids(self) -> list[int]:
        """Each sample's ``group`` (its scene id), from the list: no image is read."""
        if self.group_size:
            return [self.scene_ids[s] for s in self.scene_order]
        return [self.scene_ids[e.scene] for e in self.entries]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _crop_box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        c = self.crop
        if self.random_crop:
            return int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        return (h - c) // 2, (w - c) // 2

    def _crops(self, arrays: Mapping[str, np.ndarray], where: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """All ``arrays`` cut at one crop box (and turned by one symmetry), as float CHW tensors."""
        shapes = {k: a.shape[:2] for k, a in arrays.items()}
        if len(set(shapes.values())) != 1:
            raise DataError(f"{where}: images differ in size {shapes}")
        h, w = next(iter(shapes.values()))
        if min(h, w) < self.crop:
            raise DataError(f"{where}: {w}x{h} is smaller than crop {self.crop}")
        top, left = self._crop_box(h, w, rng)
        c = self.crop
        crops = {k: a[top:top + c, left:left + c] for k, a in arrays.items()}
        if self.augment:
            symmetry = int(rng.integers(8))
            crops = {k: dihedral(a, symmetry) for k, a in crops.items()}
        return {k: to_float_batch(np.ascontiguousarray(a))[0] for k, a in crops.items()}

    def __getitem__(self, index: int) -> dict:
        if self.group_size:
            return self._group(index)
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, 2, self.epoch, int(index)])
        others = [j for j in self.by_scene[entry.scene] if j != index]
        # A scene listed once pairs with itself (the ranking target is then 0.5).
        partner = others[int(rng.integers(len(others)))] if others else index
        restored_path, degraded_path, pristine_path = self.paths[index]
        arrays = {
            "restored": read_rgb(restored_path),
            "degraded": read_rgb(degraded_path),
            "restored_2": read_rgb(self.paths[partner][0]),
            "pristine": read_rgb(pristine_path),
        }
        sample = self._crops(arrays, f"{entry.name} (list line {entry.line})", rng)
        return {
            **sample,
            "target": torch.tensor(self.targets[index], dtype=torch.float32),
            "target_2": torch.tensor(self.targets[partner], dtype=torch.float32),
            "group": self.scene_ids[entry.scene],
            "name": entry.name,
            **({"method": self.methods[index][0], "photo": self.methods[index][1]} if self.methods else {}),
        }

    def _group(self, index: int) -> dict:
        scene = self.scene_order[index]
        members = self.by_scene[scene]
        rng = np.random.default_rng([self.seed, 3, self.epoch, int(index)])
        k = self.group_size
        chosen = [members[int(j)] for j in rng.choice(len(members), size=k, replace=len(members) < k)]
        arrays = {"pristine": read_rgb(self.paths[chosen[0]][2])}
        for slot, i in enumerate(chosen):
            arrays[f"restored{slot}"] = read_rgb(self.paths[i][0])
            arrays[f"degraded{slot}"] = read_rgb(self.paths[i][1])
        crops = self._crops(arrays, f"input {scene} ({self.entries[chosen[0]].name}, ...)", rng)
        restored = torch.stack([crops[f"restored{slot}"] for slot in range(k)])
        targets = torch.tensor([self.targets[i] for i in chosen], dtype=torch.float32)
        return {
            "restored": restored,
            "degraded": torch.stack([crops[f"degraded{slot}"] for slot in range(k)]),
            "restored_2": restored.roll(-1, 0),
            "pristine": crops["pristine"].expand(k, -1, -1, -1),
            "target": targets,
            "target_2": targets.roll(-1, 0),
            "group": torch.full((k,), self.scene_ids[scene], dtype=torch.long),
            "name": [self.entries[i].name for i in chosen],
            **({"method": [self.methods[i][0] for i in chosen], "photo": [self.methods[i][1] for i in chosen]}
               if self.methods else {}),
        }


def collate_groups(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A batch of :class:`PIPALPairs` groups (``group_size`` > 0) as one batch of restorations:
    tensors concatenated along the first dimension, lists of names and methods joined."""
    batch: dict[str, Any] = {}
    for key, first in samples[0].items():
        if isinstance(first, torch.Tensor):
            batch[key] = torch.cat([s[key] for s in samples])
        else:
            batch[key] = [v for s in samples for v in s[key]]
    return batch
