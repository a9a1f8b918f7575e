"""The distributed, resumable mode of ``drqa score`` (folders of restored/degraded pairs).

Under ``accelerate launch`` (or with ``--resume``; see :mod:`drqa_plugin.srval.options` for the
command-line side) the pairs are split across processes with
:mod:`drqa_plugin.srval.shards`: each process scores its share and appends to its own shard
file in ``<out>.shards/``; the main process merges and returns exactly what
:func:`drqa_plugin.scorer.score_file_pairs` returns, so the rest of ``drqa score`` (writing
CSV/JSON, messages, exit status) is unchanged. A killed run started again with the same
``--out`` scores only the pairs that are missing.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from drqa_plugin.errors import ConfigError
from drqa_plugin.scorer import score_file_pairs
from drqa_plugin.srval.dist import Dist
from drqa_plugin.srval.dist import current as current_dist
from drqa_plugin.srval.shards import ShardStore

SHARD_SUFFIX = ".shards"


def shard_directory(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + SHARD_SUFFIX)


def score_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``drqa score`` options that decide the scores (a resume with others is refused)."""
    weights = Path(str(args.weights)).expanduser()
    return {
        "weights": str(weights.resolve()) if weights.is_file() else str(args.weights),
        "preprocess": args.preprocess,
        "dtype": args.dtype,
        "reference_interpolation": args.reference_interpolation,
    }


def pair_key(pair: tuple[str | os.PathLike, str | os.PathLike]) -> str:
    return f"{Path(pair[0]).resolve()}|{Path(pair[1]).resolve()}"


def score_file_pairs_sharded(
    scorer: Callable,
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    out: str | os.PathLike | None,
    *,
    settings: Mapping[str, Any],
    batch_size: int = 8,
    progress: bool = True,
    dist: Dist | None = None,
) -> tuple[np.ndarray, dict[int, str]] | None:
    """:func:`~drqa_plugin.scorer.score_file_pairs` split across processes, resumable.

    Returns ``(scores, errors)`` for all ``pairs`` on the main process (NaN and a reason for
    each failed pair) and None on the other processes, which must then write nothing.

    Raises:
        ConfigError: no ``out`` (the shards live next to it), or ``out`` holds a run with
            other settings.
    """
    from tqdm import tqdm

    if out is None:
        raise ConfigError("distributed or resumable scoring needs --out FILE (progress is kept next to it)")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    dist = dist or current_dist()
    store = ShardStore(shard_directory(out), dist, settings, command="score")
    keys = [pair_key(p) for p in pairs]
    mine, _ = store.plan(list(range(len(pairs))), key=lambda i: keys[i])
    with store.writer() as writer, tqdm(total=len(mine), desc="scoring", unit="pair",
                                        disable=not (progress and dist.is_main)) as bar:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            scores, errors = score_file_pairs(scorer, [pairs[i] for i in chunk], batch_size, progress=False)
            for j, i in enumerate(chunk):
                if j in errors:
                    writer.failure(keys[i], keys[i], errors[j], item=keys[i])
                else:
                    writer.row(keys[i], {"score": float(scores[j])})
            bar.update(len(chunk))
    dist.barrier()
    if not dist.is_main:
        return None
    merged = store.merge()
    index = {k: i for i, k in enumerate(keys)}
    all_scores = np.full(len(pairs), np.nan)
    for key, data in merged.rows.items():
        if key in index:
            all_scores[index[key]] = float(data["score"])
    errors_out = {index[f["item"]]: str(f["reason"]) for f in merged.failures if f.get("item") in index}
    return all_scores, errors_out
