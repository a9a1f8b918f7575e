"""Labelled lists and the correlation of a scorer's predictions with their opinion scores (``drqa eval``).

Two list formats are read (format detected from the first line):

* PIPAL layout (no header): ``A0001_00_00.bmp,<MOS>`` per line; restored
  ``ROOT/[RESTORED_DIR/]X``, degraded reference ``ROOT/[DEGRADED_DIR/]ref_X``;
  grouped by scene (``A0001``).
  Names containing ``_06_`` are skipped as in the official code (``--drop-pattern ''`` keeps them).
* CSV with a header ``restored,degraded,mos[,group][,method]`` (any column order,
  other columns ignored); paths relative to ROOT; without a ``group`` column pairs
  are grouped by degraded image. ``method`` names the restoration method (for the
  method-prior baseline).

ROOT defaults to the list file's folder.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drqa_plugin.data.config import PIPALLayout
from drqa_plugin.data.pipal import check_files, pipal_paths, read_pipal_list, row_method
from drqa_plugin.errors import DataError
from drqa_plugin.files import atomic_path
from drqa_plugin.metrics import Correlations, correlate
from drqa_plugin.scorer import score_file_pairs

CSV_COLUMNS = ("restored", "degraded", "mos")

Scorer = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class EvalPair:
    """One labelled (restored, degraded) pair of an evaluation list."""

    restored: Path
    degraded: Path
    mos: float
    group: str
    line: int  # line of the list file, for error messages
    method: str = ""  # the method prior's key (``task/method`` where the list names a task), if named
    pristine: Path | None = None  # the pristine image, when the list names it (for the labeller baseline)
    photo: str = ""  # the photo the pair comes from, when named: the method prior leaves it out whole


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig") as fh:
        for raw in fh:
            if raw.strip() and not raw.lstrip().startswith("#"):
                return raw.strip()
    raise DataError(f"list file {str(path)!r} is empty")


def _read_csv(path: Path, root: Path) -> list[EvalPair]:
    pairs: list[EvalPair] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        missing = [c for c in CSV_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"{path}:1: CSV header lacks column(s) {missing}; need {', '.join(CSV_COLUMNS)}[,group]")
        for row in reader:
            line = reader.line_num
            if not any((v or "").strip() for v in row.values()):
                continue
            if None in row or any(row.get(c) is None for c in CSV_COLUMNS):
                raise DataError(f"{path}:{line}: expected {len(columns)} fields, got a different number")
            restored, degraded = row["restored"].strip(), row["degraded"].strip()
            if not restored or not degraded:
                raise DataError(f"{path}:{line}: empty restored or degraded path")
            try:
                mos = float(row["mos"])
            except ValueError:
                raise DataError(f"{path}:{line}: mos {row['mos']!r} is not a number") from None
            if not math.isfinite(mos):
                raise DataError(f"{path}:{line}: mos must be finite, got {row['mos']!r}")
            group = (row.get("group") or "").strip() or degraded
            method, photo = row_method(row)
            pristine = (row.get("pristine") or "").strip()
            pairs.append(EvalPair(root / restored, root / degraded, mos, group, line, method,
                                  root / pristine if pristine else None, photo))
    if not pairs:
        raise DataError(f"list file {str(path)!r} has no pairs")
    return pairs


def read_labelled_list(list_file: str | os.PathLike, root: str | os.PathLike | None = None,
                       layout: PIPALLayout | None = None) -> list[EvalPair]:
    """Parse a PIPAL-layout or CSV list and check that every file exists.

    Raises DataError naming the list file and line for malformed lines and
    missing files.
    """
    path = Path(list_file)
    if not path.is_file():
        raise DataError(f"list file {str(path)!r} does not exist")
    base = Path(root) if root is not None else path.parent
    if not base.is_dir():
        raise DataError(f"root {str(base)!r} does not exist or is not a folder")
    layout = layout or PIPALLayout()
    header = [c.strip().lower() for c in _first_line(path).split(",")]
    if set(CSV_COLUMNS) & set(header):  # a header line: CSV (missing columns reported there)
        pairs = _read_csv(path, base)
    else:
        pairs = []
        for entry in read_pipal_list(path, layout.drop_pattern):
            restored, degraded, _ = pipal_paths(base, entry.name, layout)
            pairs.append(EvalPair(restored, degraded, entry.mos, entry.scene, entry.line))
    check_files(path, [(p.line, (p.restored, p.degraded)) for p in pairs])
    return pairs


def score_pairs(scorer: Scorer, pairs: Sequence[EvalPair], batch_size: int = 8,
                progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Scores of every pair (NaN where an image could not be read) and the error messages."""
    preds, failures = score_file_pairs(scorer, [(p.restored, p.degraded) for p in pairs], batch_size, progress)
    return preds, [f"list line {pairs[i].line}: {failures[i]}" for i in sorted(failures)]


def evaluate_pairs(scorer: Scorer, pairs: Sequence[EvalPair], batch_size: int = 8, progress: bool = True,
                   min_group_size: int = 3) -> tuple[np.ndarray, Correlations]:
    """Score all pairs and correlate with their MOS; any unreadable image raises DataError."""
    preds, errors = score_pairs(scorer, pairs, batch_size, progress)
    if errors:
        raise DataError(f"{len(errors)} pair(s) could not be scored: " + "; ".join(errors[:5]))
    result = correlate(preds, [p.mos for p in pairs], [p.group for p in pairs], min_group_size)
    return preds, result


def write_predictions(path: Path, pairs: Sequence[EvalPair], preds: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["restored", "degraded", "mos", "group", "pred"])
        for pair, pred in zip(pairs, preds):
            writer.writerow([pair.restored, pair.degraded, pair.mos, pair.group,
                             "" if math.isnan(pred) else repr(float(pred))])


