"""Options shared by the subcommands that run the scorer."""

from __future__ import annotations

import argparse

from drqa_plugin.constants import INTERPOLATIONS, PRECISION_NAMES, PREPROCESS_MODES


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="ckdn_pipal",
                        help="a weights name (default ckdn_pipal; see `drqa weights list`) or a .safetensors file")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs the scorer."""
    parser.add_argument("--preprocess", choices=PREPROCESS_MODES, default="ckdn")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto, ...")
    parser.add_argument("--dtype", choices=PRECISION_NAMES, default="fp32", help="compute precision of the network")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs loaded at a time")
    parser.add_argument(
        "--reference-interpolation",
        default="bicubic",
        choices=INTERPOLATIONS,
        help="how a smaller degraded input is resized to the restored size",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def make_scorer(args: argparse.Namespace):  # -> DRIQA (imported lazily: torch start-up is slow)
    """The scorer the runtime options describe."""
    from drqa_plugin.scorer import DRIQA

    return DRIQA(
        args.weights,
        preprocess=args.preprocess,
        device=args.device,
        dtype=args.dtype,
        reference_interpolation=args.reference_interpolation,
    )
