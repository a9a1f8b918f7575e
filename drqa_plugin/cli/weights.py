"""``drqa weights``: list the named weights, or fetch them ahead of time (for offline compute nodes)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("weights", help="list or pre-fetch named weights (ckdn_pipal, imagenet_resnet50, ...)",
                            description=__doc__.split(": ", 1)[1])
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="name, source URLs, licence, size, whether cached")
    listing.set_defaults(func=run_list)
    fetch = actions.add_parser("download", help="fetch, verify and convert named weights into the cache")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    fetch.add_argument("--to", default=None, metavar="DIR",
                       help="cache folder to fill (point DRQA_HOME at it on the compute nodes)")
    fetch.set_defaults(func=run_download)


def run_list(args: argparse.Namespace) -> int:
    from drqa_plugin.hub import format_weights_table

    print(format_weights_table())
    return 0


def run_download(args: argparse.Namespace) -> int:
    from drqa_plugin.hub import download_weights

    for name, path in zip(args.names, download_weights(args.names, to=args.to, progress=True)):
        print(f"{name}: {path}")
    if args.to:
        print(f"on machines without network: export DRQA_HOME={args.to} DRQA_OFFLINE=1")
    return 0
