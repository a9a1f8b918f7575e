"""``drqa``: convert checkpoints, score files and folders, evaluate against opinion scores."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from drqa_plugin.preprocess import IMAGE_SUFFIXES, PREPROCESS_MODES
from drqa_plugin.registry import PRECISIONS
from drqa_plugin.weights import WeightsError



@dataclass
class PairPlan:
    """Which files are scored together, and what could not be paired."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def pair_files(restored: Path, degraded: Path, restored_suffix: str = "") -> PairPlan:
    """Pair two files, or the images of two folders by file name (stem, extension ignored).

    ``restored_suffix`` is stripped from restored names first (``0001_out.png`` -> ``0001``).
    """
    for p in (restored, degraded):
        if not p.exists():
            raise FileNotFoundError(f"not found: {p}")
    if restored.is_file() and degraded.is_file():
        return PairPlan(pairs=[(restored, degraded)])
    if restored.is_file() != degraded.is_file():
        raise ValueError("--restored and --degraded must both be files or both be folders")
    outs = _images_in(restored)
    refs = _images_in(degraded)
    if not outs:
        raise ValueError(f"no images in {restored} (looked for {', '.join(IMAGE_SUFFIXES)})")
    plan = PairPlan()
    matched_refs: set[str] = set()
    for stem, path in outs.items():
        key = stem[: -len(restored_suffix)] if restored_suffix and stem.endswith(restored_suffix) else stem
        if key in refs:
            plan.pairs.append((path, refs[key]))
            matched_refs.add(key)
        else:
            plan.unmatched.append(f"{path}: no degraded image named {key}.* in {degraded}")
    plan.unmatched += [f"{p}: no restored image for it in {restored}" for k, p in refs.items() if k not in matched_refs]
    return plan


def _cmd_convert(args: argparse.Namespace) -> int:
    from drqa_plugin.convert import convert_checkpoint
    from drqa_plugin.weights import read_metadata

    out = convert_checkpoint(args.src, args.dst, license=args.license)
    meta = read_metadata(out)
    print(f"wrote {out}\n  {meta['provenance']}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from drqa_plugin.weights import read_metadata

    for key, value in read_metadata(args.weights).items():
        print(f"{key}: {value}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from drqa_plugin.scorer import DRIQA, score_file_pairs

    plan = pair_files(Path(args.restored), Path(args.degraded), args.restored_suffix)
    errors = list(plan.unmatched)
    scorer = DRIQA(
        args.weights,
        preprocess=args.preprocess,
        device=args.device,
        dtype=PRECISIONS[args.dtype],
        reference_interpolation=args.reference_interpolation,
    )
    scores, failures = score_file_pairs(scorer, plan.pairs, args.batch_size, progress=not args.quiet)
    errors += [failures[i] for i in sorted(failures)]
    rows = [
        {"restored": str(r), "degraded": str(d), "score": round(float(score), 6)}
        for (r, d), score in zip(plan.pairs, scores)
        if not np.isnan(score)
    ]
    _write_scores(rows, errors, args, scorer)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if rows:
        mean = sum(r["score"] for r in rows) / len(rows)
        print(f"scored {len(rows)} pair(s), mean {mean:.4f} (higher is better)" + (f" -> {args.out}" if args.out else ""))
    return 1 if errors else 0


def _write_scores(rows: list[dict], errors: list[str], args: argparse.Namespace, scorer) -> None:
    if not args.out:
        for row in rows:
            print(f"{row['score']:.6f}\t{row['restored']}\t{row['degraded']}")
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        report = {
            "weights": str(args.weights),
            "provenance": scorer.pretrained_cfg.provenance,
            "preprocess": args.preprocess,
            "higher_is_better": True,
            "scores": rows,
            "errors": errors,
        }
        out.write_text(json.dumps(report, indent=2))
        return
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["restored", "degraded", "score"])
        writer.writeheader()
        writer.writerows(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drqa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="official or pyiqa CKDN checkpoint -> our .safetensors")
    conv.add_argument("src", help="model_best.pth.tar (official) or CKDN_model_best-*.pth (pyiqa)")
    conv.add_argument("dst", help="output .safetensors file")
    conv.add_argument("--license", default=None, help="licence text stored in the file's metadata")
    conv.set_defaults(func=_cmd_convert)

    info = sub.add_parser("info", help="print a weights file's metadata")
    info.add_argument("weights")
    info.set_defaults(func=_cmd_info)

    score = sub.add_parser("score", help="score restored images against their degraded inputs")
    score.add_argument("--weights", required=True, help="our .safetensors weights file")
    score.add_argument("--restored", required=True, help="a restored image or a folder of them")
    score.add_argument("--degraded", required=True, help="its degraded input, or a folder (paired by file name)")
    score.add_argument("--out", default=None, help="write scores to .csv or .json (default: print)")
    score.add_argument("--restored-suffix", default="", help="strip this from restored names before pairing")
    add_runtime_arguments(score)
    score.set_defaults(func=_cmd_score)

    from drqa_plugin import evaluate

    ev = sub.add_parser("eval", help="SRCC/PLCC/KRCC of weights on a labelled list")
    evaluate.add_arguments(ev)
    ev.set_defaults(func=evaluate.run)
    return parser


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs the scorer."""
    parser.add_argument("--preprocess", choices=PREPROCESS_MODES, default="ckdn")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs loaded at a time")
    parser.add_argument(
        "--reference-interpolation",
        default="bicubic",
        choices=["bicubic", "bilinear", "nearest", "area"],
        help="how a smaller degraded input is resized to the restored size",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, WeightsError) as exc:
        print(f"drqa {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
