"""``drqa eval``: correlation of a model's scores with opinion scores on a labelled list.

Two list formats are read (format detected from the first line):

* PIPAL layout (no header): ``A0001_00_00.bmp,<MOS>`` per line; restored
  ``ROOT/[RESTORED_DIR/]X``, degraded reference ``ROOT/[DEGRADED_DIR/]ref_X``;
  grouped by scene (``A0001``).
  Names containing ``_06_`` are skipped as in the official code (``--drop-pattern ''`` keeps them).
* CSV with a header ``restored,degraded,mos[,group]`` (any column order); paths
  relative to ROOT; without a ``group`` column pairs are grouped by degraded image.

ROOT defaults to the list file's folder.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from drqa_plugin.data.config import PIPALLayout
from drqa_plugin.data.photos import DataError
from drqa_plugin.data.pipal import check_files, pipal_paths, read_pipal_list
from drqa_plugin.metrics import EvalResult, evaluate
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
            pairs.append(EvalPair(root / restored, root / degraded, mos, group, line))
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
                   min_group_size: int = 3) -> tuple[np.ndarray, EvalResult]:
    """Score all pairs and correlate with their MOS; any unreadable image raises DataError."""
    preds, errors = score_pairs(scorer, pairs, batch_size, progress)
    if errors:
        raise DataError(f"{len(errors)} pair(s) could not be scored: " + "; ".join(errors[:5]))
    result = evaluate(preds, [p.mos for p in pairs], [p.group for p in pairs], min_group_size)
    return preds, result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``drqa eval``."""
    from drqa_plugin.cli import add_runtime_arguments

    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--weights", required=True, help="our .safetensors weights file")
    parser.add_argument("--list", required=True, dest="list_file",
                        help="labelled list: PIPAL 'name,MOS' lines or CSV restored,degraded,mos[,group]")
    parser.add_argument("--root", default=None, help="folder the list's paths are relative to (default: its folder)")
    parser.add_argument("--out", default=None, help="write per-pair predictions to this CSV")
    parser.add_argument("--min-group-size", type=int, default=3,
                        help="groups with fewer pairs are skipped in the grouped protocol")
    parser.add_argument("--restored-dir", default="", help="PIPAL layout: sub-folder of ROOT with the listed images")
    parser.add_argument("--degraded-dir", default="", help="PIPAL layout: sub-folder of ROOT with the ref_ images")
    parser.add_argument("--degraded-prefix", default="ref_",
                        help="PIPAL layout: degraded name = prefix + restored name")
    parser.add_argument("--drop-pattern", default="_06_",
                        help="PIPAL layout: skip names containing this ('' keeps all)")
    add_runtime_arguments(parser)


def _write_predictions(path: Path, pairs: Sequence[EvalPair], preds: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["restored", "degraded", "mos", "group", "pred"])
        for pair, pred in zip(pairs, preds):
            writer.writerow([pair.restored, pair.degraded, pair.mos, pair.group,
                             "" if math.isnan(pred) else repr(float(pred))])
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """Run ``drqa eval``; 0 on success, 1 if some images could not be read (metrics cover the rest)."""
    from drqa_plugin.registry import PRECISIONS
    from drqa_plugin.scorer import DRIQA

    layout = PIPALLayout(restored_dir=args.restored_dir, degraded_dir=args.degraded_dir,
                         degraded_prefix=args.degraded_prefix, drop_pattern=args.drop_pattern)
    pairs = read_labelled_list(args.list_file, args.root, layout)
    scorer = DRIQA(args.weights, preprocess=args.preprocess, device=args.device, dtype=PRECISIONS[args.dtype],
                   reference_interpolation=args.reference_interpolation)
    preds, errors = score_pairs(scorer, pairs, args.batch_size, progress=not args.quiet)
    if args.out:
        _write_predictions(Path(args.out), pairs, preds)
    for message in errors:
        print(f"drqa eval: error: {message}", file=sys.stderr)
    ok = ~np.isnan(preds)
    if ok.sum() < 2:
        print(f"drqa eval: error: only {int(ok.sum())} pair(s) could be scored; nothing to correlate", file=sys.stderr)
        return 1
    kept = [p for p, good in zip(pairs, ok) if good]
    result = evaluate(preds[ok], [p.mos for p in kept], [p.group for p in kept], args.min_group_size)
    print(f"weights: {args.weights} ({scorer.pretrained_cfg.provenance})")
    print(f"list: {args.list_file}  preprocess: {args.preprocess}  pairs scored: {result.n}/{len(pairs)}")
    print(result.format())
    if args.out:
        print(f"predictions: {args.out}")
    if errors:
        print(f"drqa eval: {len(errors)} pair(s) could not be read; metrics cover the rest", file=sys.stderr)
        return 1
    return 0
