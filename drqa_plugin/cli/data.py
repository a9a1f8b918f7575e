"""``drqa data build``: a restoration bank from pristine photos (degraded inputs, restorations, FR labels).

``drqa data photos`` first gathers photos from several folders (and scikit-image's
bundled ones) into one folder, downscaling large ones, for ``--photos``.

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
    from drqa_plugin.data.bank import BankConfig

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
    build.add_argument("--inputs-per-task", type=int, default=None,
                       help="degraded inputs per crop and task (each its own draw of the degradation)")
    build.add_argument("--blends-per-input", type=int, default=None, metavar="N",
                       help="extra restorations of each training input, each a pixel blend of two of its "
                            "restorations, labelled like the rest (method 'blend'; default 0)")
    for kind, when in (("blur", "before"), ("noise", "after"), ("jpeg", "after")):
        default = getattr(BankConfig, f"sr_{kind}_prob")
        build.add_argument(f"--sr-{kind}-prob", type=float, default=None, metavar="P",
                           help=f"probability of {kind} {when} the downscale of an SR input (default {default}; "
                                "0 for all three: clean inputs, as in bicubic SR benchmarks)")
    build.add_argument("--val-fraction", type=float, default=None, help="fraction of photos held out for val.txt")
    build.add_argument("--val-photo", action="append", dest="val_photos", metavar="NAME",
                       help="photo (file stem) held out for val.txt (repeatable; replaces --val-fraction)")
    build.add_argument("--seed", type=int, default=None)
    build.add_argument("--device", default=None,
                       help="where restoration networks and labellers run (cpu, cuda); under accelerate launch "
                            "with ACCELERATE_USE_CPU=1 the processes sync over gloo and all use this device")
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=run_build)
    photos = actions.add_parser("photos", help="gather photos from folders into one folder for --photos, "
                                "downscaling large ones")
    photos.add_argument("--from", action="append", dest="sources", default=[], metavar="DIR",
                        help="folder of photos (repeatable, recursive)")
    photos.add_argument("--bundled", action="store_true", help="also take scikit-image's bundled photos")
    photos.add_argument("--out", required=True, help="folder to write (photos.json records the sources)")
    photos.add_argument("--short-side", type=int, default=512,
                        help="downscale photos whose shorter side is larger (px; 0 = never); default 512")
    photos.add_argument("--no-progress", action="store_true")
    photos.set_defaults(func=run_photos)


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
        "inputs_per_task": args.inputs_per_task,
        "blends_per_input": args.blends_per_input,
        "sr_blur_prob": args.sr_blur_prob,
        "sr_noise_prob": args.sr_noise_prob,
        "sr_jpeg_prob": args.sr_jpeg_prob,
        "val_fraction": args.val_fraction,
        "val_photos": args.val_photos,
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


def run_photos(args: argparse.Namespace) -> int:
    from drqa_plugin.data.photos import gather_photos
    from drqa_plugin.errors import DataError

    sources = ([None] if args.bundled else []) + list(args.sources)
    if not sources:
        raise DataError("give --from DIR (repeatable) and/or --bundled")
    written = gather_photos(sources, args.out, short_side=args.short_side or None, progress=not args.no_progress)
    print(f"{len(written)} photos in {args.out} (sources and sha256 in {args.out}/photos.json); "
          f"next: drqa data build --photos {args.out} --out BANK ...")
    return 0
