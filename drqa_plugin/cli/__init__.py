"""``drqa``: the command-line face of the package, one module per subcommand.

Each subcommand module has ``register(subparsers)`` (adds its parser, sets
``func``) and a ``run(args) -> int``; the library modules they call never see
argparse. Every :class:`~drqa_plugin.errors.DRQAError` is caught here, once, and
printed as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from drqa_plugin.errors import DRQAError

DESCRIPTION = (
    "Degraded-reference image quality assessment (CKDN): convert published checkpoints, "
    "score restored images against their degraded inputs, evaluate against opinion scores."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``drqa`` parser with every subcommand."""
    from drqa_plugin import __version__
    from drqa_plugin.cli import convert, data, info, score, validate, weights
    from drqa_plugin.cli import eval as eval_cmd

    parser = argparse.ArgumentParser(prog="drqa", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"drqa-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (weights, convert, info, score, eval_cmd, validate, data):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``drqa``; returns the exit status (0 ok, 1 some inputs failed, 2 nothing could be done)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DRQAError as exc:
        print(f"drqa {args.command}: error: {exc}", file=sys.stderr)
        return 2
