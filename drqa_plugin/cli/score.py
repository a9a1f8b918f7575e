"""``drqa score``: score restored images against their degraded inputs (files or folders paired by name)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from drqa_plugin.cli.common import (
    add_runtime_arguments,
    add_weights_argument,
    make_scorer,
)
from drqa_plugin.srval.options import add_sharding_arguments, sharded_scoring_requested


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("score", help="score restored images against their degraded inputs",
                            description=__doc__.split(": ", 1)[1])
    add_weights_argument(parser)
    parser.add_argument("--restored", required=True, help="a restored image or a folder of them")
    parser.add_argument("--degraded", required=True, help="its degraded input, or a folder (paired by file name)")
    parser.add_argument("--out", default=None, help="write scores to .csv or .json (default: print)")
    parser.add_argument("--restored-suffix", default="", help="strip this from restored names before pairing")
    add_runtime_arguments(parser)
    add_sharding_arguments(parser)  # --resume; under accelerate launch the pairs are split across processes
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drqa_plugin.images import pair_files
    from drqa_plugin.scorer import score_file_pairs

    plan = pair_files(Path(args.restored), Path(args.degraded), args.restored_suffix)
    errors = list(plan.unmatched)
    sharded = sharded_scoring_requested(args)  # before the scorer: under a launch this picks the rank's device
    scorer = make_scorer(args)
    if sharded:
        from drqa_plugin.srval.score import score_file_pairs_sharded, score_settings

        result = score_file_pairs_sharded(scorer, plan.pairs, args.out, settings=score_settings(args),
                                          batch_size=args.batch_size, progress=not args.quiet)
        if result is None:  # a worker process: the main process writes and reports
            return 0
        scores, failures = result
    else:
        scores, failures = score_file_pairs(scorer, plan.pairs, args.batch_size, progress=not args.quiet)
    errors += [failures[i] for i in sorted(failures)]
    rows = [
        {"restored": str(r), "degraded": str(d), "score": round(float(score), 6)}
        for (r, d), score in zip(plan.pairs, scores)
        if not np.isnan(score)
    ]
    failed = [{"restored": str(plan.pairs[i][0]), "degraded": str(plan.pairs[i][1]), "error": failures[i]}
              for i in sorted(failures)]
    _write_scores(rows, failed, errors, args, scorer.pretrained_cfg.provenance)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if rows:
        mean = float(np.nanmean(scores))
        print(f"scored {len(rows)} pair(s), mean {mean:.4f} (higher is better)" + (f" -> {args.out}" if args.out else ""))
    return 1 if errors else 0


def _write_scores(rows: list[dict], failed: list[dict], errors: list[str], args: argparse.Namespace,
                  provenance: str) -> None:
    """Scores, and failed pairs beside them (CSV: an empty score and the error; JSON: "failures")."""
    if not args.out:
        for row in rows:
            print(f"{row['score']:.6f}\t{row['restored']}\t{row['degraded']}")
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        report = {
            "weights": str(args.weights),
            "provenance": provenance,
            "preprocess": args.preprocess,
            "higher_is_better": True,
            "scores": rows,
            "failures": failed,
            "errors": errors,
        }
        out.write_text(json.dumps(report, indent=2))
        return
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["restored", "degraded", "score", "error"])
        writer.writeheader()
        writer.writerows(rows)
        writer.writerows({**row, "score": ""} for row in failed)
