"""``drqa eval``: SRCC/PLCC/KRCC of weights on a labelled list, global and grouped by reference.

Two list formats are read (detected from the first line):

  PIPAL layout (no header): "A0001_00_00.bmp,<MOS>" per line; restored
  ROOT/[RESTORED_DIR/]X, degraded reference ROOT/[DEGRADED_DIR/]ref_X; grouped by
  scene (A0001). Names containing _06_ are skipped as in the official code
  (--drop-pattern '' keeps them).

  CSV with a header restored,degraded,mos[,group][,method][,task][,photo][,pristine]
  (any column order); paths relative to ROOT; without a group column pairs are
  grouped by degraded image. `drqa data build` writes such lists (train.csv, val.csv).

Next to the model, the rows a sceptic asks for, on the same pairs: the method
prior (when the list names methods: mean label of the same method, per task where
a task column names one, in the other photos, or the other groups where no photo
column names them), PSNR of the output against its upsampled input, and with --labeller
and a pristine column the full-reference labeller itself (the ceiling). With
--reference-check, the model again with each restoration scored against another
group's degraded input: if that row orders the restorations of one input as well as
the model's own, the model does not use its reference.

ROOT defaults to the list file's folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from drqa_plugin.cli.common import (
    add_runtime_arguments,
    add_weights_argument,
    make_scorer,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="SRCC/PLCC/KRCC of weights on a labelled list", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_weights_argument(parser)
    parser.add_argument("--list", required=True, dest="list_file",
                        help="labelled list: PIPAL 'name,MOS' lines or CSV restored,degraded,mos[,group][,method]"
                             "[,task][,photo][,pristine]")
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
    parser.add_argument("--labeller", action="append", default=None, metavar="NAME",
                        help="also score the pristine column with this FR labeller (the ceiling row; repeatable)")
    parser.add_argument("--reference-check", action="store_true",
                        help="also score every restoration against another group's degraded input (a row a "
                             "model that compares must lose clearly; scores every pair twice)")
    parser.add_argument("--per-method", action="store_true",
                        help="also print each method's mean rank inside its group (0 = last, 1 = first) for the "
                             "label and every row: where the model's per-input order differs from the label's "
                             "(needs a method column)")
    parser.add_argument("--no-baselines", action="store_true", help="only the model's row")
    add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 on success, 1 if some images could not be read (the metrics cover the rest)."""
    from drqa_plugin.data.config import PIPALLayout
    from drqa_plugin.evaluation import (
        read_labelled_list,
        score_pairs,
        write_predictions,
    )
    from drqa_plugin.metrics import correlate

    layout = PIPALLayout(restored_dir=args.restored_dir, degraded_dir=args.degraded_dir,
                         degraded_prefix=args.degraded_prefix, drop_pattern=args.drop_pattern)
    pairs = read_labelled_list(args.list_file, args.root, layout)
    scorer = make_scorer(args)
    preds, errors = score_pairs(scorer, pairs, args.batch_size, progress=not args.quiet)
    if args.out:
        write_predictions(Path(args.out), pairs, preds)
    for message in errors:
        print(f"drqa eval: error: {message}", file=sys.stderr)
    ok = ~np.isnan(preds)
    if ok.sum() < 2:
        print(f"drqa eval: error: only {int(ok.sum())} pair(s) could be scored; nothing to correlate", file=sys.stderr)
        return 1
    kept = [p for p, good in zip(pairs, ok) if good]
    result = correlate(preds[ok], [p.mos for p in kept], [p.group for p in kept], args.min_group_size)
    print(f"weights: {args.weights} ({scorer.pretrained_cfg.provenance})")
    print(f"list: {args.list_file}  preprocess: {args.preprocess}  pairs scored: {result.n}/{len(pairs)}")
    rows = {"model": preds[ok]}
    if args.no_baselines:
        print(result.format())
    else:
        rows.update(_baseline_rows(kept, args, scorer))
        from drqa_plugin.baselines import format_table, score_rows

        print(format_table(score_rows([p.mos for p in kept], [p.group for p in kept], rows, args.min_group_size)))
    if args.per_method:
        print(_per_method_table(kept, rows, args.min_group_size))
    if args.out:
        print(f"predictions: {args.out}")
    if errors:
        print(f"drqa eval: {len(errors)} pair(s) could not be read; metrics cover the rest", file=sys.stderr)
        return 1
    return 0


def _baseline_rows(pairs: list, args: argparse.Namespace, scorer: Any) -> dict[str, np.ndarray]:
    """The rows after the model's: the method prior, PSNR vs input, sharpness, (with --labeller) the labeller and
    (with --reference-check) the model against another input's reference."""
    from drqa_plugin.baselines import compute_baselines

    pristine = [p.pristine for p in pairs]
    labeller = args.labeller if args.labeller and all(p is not None for p in pristine) else None
    if args.labeller and labeller is None:
        print("drqa eval: --labeller needs a pristine column in the list; the labeller row is left out", file=sys.stderr)
    rows = compute_baselines(pairs, pristine=pristine if labeller else None, labeller=labeller)
    if args.reference_check:
        rows.update(_other_reference_row(pairs, args, scorer))
    return rows


def _per_method_table(pairs: list, rows: dict[str, np.ndarray], min_group_size: int) -> str:
    from drqa_plugin.baselines import method_rank_table

    if not all(p.method for p in pairs):
        return "per method: the list names no method for some pairs (a method column is needed)"
    return method_rank_table([p.mos for p in pairs], [p.group for p in pairs], [p.method for p in pairs], rows,
                             min_group_size, title="mean rank of each method inside its group (0 = last, 1 = first)")


def _other_reference_row(pairs: list, args: argparse.Namespace, scorer: Any) -> dict[str, np.ndarray]:
    from drqa_plugin.baselines import OTHER_REFERENCE, other_input_references
    from drqa_plugin.scorer import score_file_pairs

    other = other_input_references([p.group for p in pairs])
    scores, failures = score_file_pairs(scorer, [(p.restored, pairs[j].degraded) for p, j in zip(pairs, other)],
                                        args.batch_size, not args.quiet)
    if failures:
        print(f"drqa eval: --reference-check: {len(failures)} pair(s) could not be scored against another input "
              f"(first: {next(iter(failures.values()))}); the row is left out (images of different sizes need "
              "a --preprocess that crops or resizes)", file=sys.stderr)
        return {}
    return {OTHER_REFERENCE: scores}
