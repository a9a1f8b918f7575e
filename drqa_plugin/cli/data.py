"""``drqa data build``: a restoration bank from pristine photos (degraded inputs, restorations, FR labels).

The bank is written in the PIPAL layout the trainer reads (``data.kind=pipal
data.root=BANK data.list_file=train.txt data.val_list_file=val.txt``) plus
``train.csv``/``val.csv`` for ``drqa eval`` and ``manifest.json`` with every
parameter. Deterministic from ``--seed``, resumable (a rerun completes what is
missing), and sharded across processes under ``accelerate launch``.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="build a restoration bank (training/validation data with FR labels)",
                            description=__doc__.split(": ", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="photos -> degraded inputs -> restorations -> labels, PIPAL layout")
    build.add_argument("--photos", default=None, help="folder of pristine photos (default: scikit-image's bundled ones)")
    build.add_argument("--out", required=True, help="bank folder (created; an existing bank is completed)")
    build.add_argument("--labeller", action="append", dest="labellers", metavar="NAME",
                       help="FR labeller (repeatable; e.g. stlpips_alex, ms_ssim); default ms_ssim")
    build.add_argument("--combine", choices=("mean", "rank", "minmax"), default=None,
                       help="how several labellers make one label")
    build.add_argument("--restorer", action="append", dest="restorers", metavar="NAME",
                       help="restorer (repeatable): a built-in name, auto, spandrel:MODEL.pth or ncnn:NET.param")
    build.add_argument("--task", action="append", dest="tasks", metavar="TASK", help="sr_x2..sr_x8 or denoise (repeatable)")
    build.add_argument("--crop", type=int, default=None, help="side of the pristine crops in px")
    build.add_argument("--crops-per-photo", type=int, default=None)
    build.add_argument("--val-fraction", type=float, default=None, help="fraction of photos held out for val.txt")
    build.add_argument("--seed", type=int, default=None)
    build.add_argument("--device", default=None, help="where restoration networks run (cpu, cuda)")
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=run_build)


def bank_options(args: argparse.Namespace) -> dict[str, Any]:
    """The BankConfig fields the command line sets (everything else keeps its default)."""
    given = {
        "photos": args.photos,
        "labellers": args.labellers,
        "combine": args.combine,
        "restorers": args.restorers,
        "tasks": args.tasks,
        "crop": args.crop,
        "crops_per_photo": args.crops_per_photo,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "device": args.device,
    }
    options = {k: v for k, v in given.items() if v is not None}
    options["progress"] = not args.no_progress
    return options


def run_build(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from drqa_plugin.data.bank import BankConfig, build_bank

    manifest = build_bank(BankConfig.from_dict(bank_options(args)), args.out)
    if PartialState().is_main_process:
        splits: dict[str, int] = {}
        for item in manifest.items:
            splits[item.split] = splits.get(item.split, 0) + 1
        print(f"bank {args.out}: {len(manifest.items)} labelled restorations "
              f"({', '.join(f'{n} {s}' for s, n in sorted(splits.items()))}); wrote {len(manifest.written)} now")
        print(f"train on it: python -m drqa_plugin.train --config ... data.kind=pipal data.root={args.out} "
              "data.list_file=train.txt data.val_list_file=val.txt")
    return 0
