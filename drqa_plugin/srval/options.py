"""Command-line pieces of the distributed/resumable mode, light to import (no torch until needed)."""

from __future__ import annotations

import argparse
import os


def add_sharding_arguments(parser: argparse.ArgumentParser) -> None:
    """``--resume``: keep per-process shard files next to ``--out`` and skip pairs already scored."""
    parser.add_argument(
        "--resume", action="store_true",
        help="keep progress in OUT.shards/ and, when run again, score only the pairs not yet scored "
             "(always on under accelerate launch with several processes)",
    )


def launched_world_size() -> int:
    """The number of processes the launcher started (1 when not launched)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def sharded_scoring_requested(args: argparse.Namespace) -> bool:
    """True under a multi-process launch or with ``--resume``.

    Under a launch it also sets up the process group (once), which makes this rank's GPU the
    current CUDA device, so call it before building the scorer: ``--device cuda`` or ``auto``
    then means this rank's own GPU.
    """
    if launched_world_size() > 1:
        from drqa_plugin.srval.dist import current

        current(cpu=str(getattr(args, "device", "")) == "cpu")
        return True
    return bool(getattr(args, "resume", False))
