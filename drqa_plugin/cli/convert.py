"""``drqa convert``: a published CKDN checkpoint (official or pyiqa layout) -> our .safetensors."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="official or pyiqa CKDN checkpoint -> our .safetensors",
                            description=__doc__.split(": ", 1)[1])
    parser.add_argument("src", help="model_best.pth.tar (official) or CKDN_model_best-*.pth (pyiqa)")
    parser.add_argument("dst", help="output .safetensors file")
    parser.add_argument("--license", default=None, help="licence text stored in the file's metadata")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drqa_plugin.convert import convert_checkpoint
    from drqa_plugin.weights import read_metadata

    out = convert_checkpoint(args.src, args.dst, license=args.license)
    meta = read_metadata(out)
    print(f"wrote {out}\n  {meta['provenance']}")
    return 0
