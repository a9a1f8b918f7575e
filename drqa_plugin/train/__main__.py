"""``python -m drqa_plugin.train --config RECIPE.yaml [key=value ...]`` (also under ``accelerate launch``)."""

from __future__ import annotations

import argparse
import sys

from drqa_plugin.errors import DRQAError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m drqa_plugin.train",
        description="Train a CKDN degraded-reference IQA model (run it under `accelerate launch` for several processes).",
        epilog="Overrides are dotted keys of the config, e.g. max_steps=20 output_dir=runs/x data.root=/data/PIPAL "
        "resume=latest optim.lr=0.01 runtime.mixed_precision=bf16",
    )
    parser.add_argument("--config", help="YAML recipe (recipes/configs/*.yaml); defaults are used without it")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 trained, 2 the config is invalid (nothing started), 1 the run failed with a known error."""
    from drqa_plugin.train.config import load_config

    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except DRQAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from drqa_plugin.train.trainer import (
        train,  # heavy imports only after the config is valid
    )

    try:
        train(cfg)
    except DRQAError as exc:
        # Expected failures (bad data, bad resume, misconfigured launch): a message, not a traceback.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
