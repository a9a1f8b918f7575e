"""``drqa info``: the metadata of a weights file."""

from __future__ import annotations

import argparse

# The format's own keys first, in the order the format documents them; any others after, sorted.
KEY_ORDER = ("format", "format_version", "arch", "preprocess", "score_range", "higher_is_better", "license",
             "provenance")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="print a weights file's metadata", description=__doc__.split(": ", 1)[1])
    parser.add_argument("weights")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drqa_plugin.weights import read_metadata

    meta = read_metadata(args.weights)
    ordered = [k for k in KEY_ORDER if k in meta] + sorted(k for k in meta if k not in KEY_ORDER)
    for key in ordered:
        print(f"{key}: {meta[key]}")
    return 0
