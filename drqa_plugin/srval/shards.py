"""Split work across processes, write one shard file per process, resume a killed run, merge.

Used by ``drqa validate`` and the distributed mode of ``drqa score``. A run directory holds::

    run.json           the settings that decide the results; a resume with other settings is refused
    shards/*.jsonl     one file per process and attempt, one JSON record a line, flushed as written

Every unit of work has a string key. A record is ``{"key", "kind", "time", "data"}`` with
``kind`` ``"row"`` (a result) or ``"failure"`` (``data`` has ``id``, the failure's identity in
the report, and ``reason``). The protocol (:meth:`ShardStore.plan`):

1. every process reads the shard files: a key with a ``row`` record is done;
2. the main process writes ``run.json`` if it is absent;
3. barrier: nobody writes a record before every process has read, so all processes see the
   same done set and split the same pending list into the same contiguous shares;
4. each process appends its records to its own new file (a killed process leaves at most one
   torn last line, which is ignored, and that item is simply done again);
5. barrier, then the main process reads every shard and merges (:func:`merge`).

Failed items are not done: a rerun tries them again, and a failure whose item later got a row
is dropped from the merge. Shard files are kept after the merge; they are the run's record, so
a second run with the same output directory (say, after new checkpoints appeared) only does
what is new.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from drqa_plugin.errors import ConfigError
from drqa_plugin.files import atomic_write_text
from drqa_plugin.srval.dist import Dist

T = TypeVar("T")

RUN_FILE = "run.json"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".jsonl"


@dataclass
class Merged:
    """The merged result of all shards: one row per done key, the failures still standing."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    duplicate_rows: int = 0  # keys written twice (never expected; kept for diagnostics and tests)
    torn_lines: int = 0  # unparsable lines, e.g. the last line of a killed process


class ShardWriter:
    """Appends records to this process's own shard file, flushing after each one."""

    def __init__(self, directory: Path, dist: Dist) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{socket.gethostname()}-{os.getpid()}-r{dist.rank}of{dist.world}{SHARD_SUFFIX}"
        self.path = directory / name
        self._file: IO[str] | None = None

    def row(self, key: str, data: Mapping[str, Any]) -> None:
        self._write({"key": key, "kind": "row", "time": time.time(), "data": dict(data)})

    def failure(self, key: str, failure_id: str, reason: str, **data: Any) -> None:
        """Record that ``key`` failed; failures sharing ``failure_id`` are reported once."""
        record = {"id": failure_id, "reason": reason, **data}
        self._write({"key": key, "kind": "failure", "time": time.time(), "data": record})

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        # One write of one line, then flush: a kill loses at most the record being written.
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardStore:
    """The shard files and settings of one run directory, seen from one process."""

    def __init__(self, directory: str | os.PathLike, dist: Dist, settings: Mapping[str, Any], command: str) -> None:
        self.directory = Path(directory)
        self.shard_dir = self.directory / SHARD_DIR
        self.dist = dist
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        self.command = command
        self.done: set[str] = set()

    # ------------------------------------------------------------------ planning

    def plan(self, items: Sequence[T], key: Callable[[T], str],
             complete: Callable[[T], bool] | None = None) -> tuple[list[T], int]:
        """(this process's share of the items not yet done, number of items already done).

        An item is done when its key has a row and, if given, ``complete(item)`` is true (say, an
        output file it should have written exists). :attr:`done` holds the keys with a row, so a
        worker redoing an incomplete item knows not to write its row twice. Every process of a
        launch must call this at the same point: it contains a barrier.

        Raises:
            ConfigError: the directory holds a run made with other settings.
        """
        self._check_settings()
        done = self.done = self.done_keys()
        finished = [key(item) in done and (complete is None or complete(item)) for item in items]
        if self.dist.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            if not (self.directory / RUN_FILE).is_file():
                _write_json_atomic(self.directory / RUN_FILE, {"command": self.command, "settings": self.settings})
        self.dist.barrier()
        pending = [item for item, ok in zip(items, finished) if not ok]
        return contiguous_share(pending, self.dist.rank, self.dist.world), len(items) - len(pending)

    def _check_settings(self) -> None:
        path = self.directory / RUN_FILE
        if not path.is_file():
            return
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not readable ({exc}); delete it to start this run afresh") from exc
        if saved.get("command") != self.command:
            raise ConfigError(f"{self.directory} holds a 'drqa {saved.get('command')}' run, not 'drqa {self.command}'; "
                              "use another output")
        old = saved.get("settings", {})
        changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
        if changed:
            details = "; ".join(f"{k}: {old.get(k)!r} then, {self.settings.get(k)!r} now" for k in changed)
            raise ConfigError(
                f"{self.directory} holds results made with other settings ({details}); "
                "use another output, or delete it to start afresh"
            )

    def done_keys(self) -> set[str]:
        return {r["key"] for r in self.records() if r.get("kind") == "row"}

    def writer(self) -> ShardWriter:
        return ShardWriter(self.shard_dir, self.dist)

    # ------------------------------------------------------------------ reading

    def shard_files(self) -> list[Path]:
        if not self.shard_dir.is_dir():
            return []
        return sorted(p for p in self.shard_dir.iterdir() if p.suffix == SHARD_SUFFIX and p.is_file())

    def records(self, stats: Merged | None = None) -> list[dict[str, Any]]:
        """Every complete record of every shard file, oldest first."""
        out: list[dict[str, Any]] = []
        for path in self.shard_files():
            out += _read_records(path, stats)
        out.sort(key=lambda r: r.get("time", 0.0))
        return out

    def merge(self) -> Merged:
        merged = Merged()
        return merge(self.records(merged), merged)


def contiguous_share(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Items ``[rank * n / world, (rank + 1) * n / world)``: contiguous, so a process loads few checkpoints."""
    n = len(items)
    return list(items[rank * n // world : (rank + 1) * n // world])


def merge(records: Iterable[dict[str, Any]], merged: Merged | None = None) -> Merged:
    """Rows by key (the oldest kept), and failures of keys that never got a row, once per failure id."""
    merged = merged or Merged()
    failures: dict[str, dict[str, Any]] = {}
    failed_keys: dict[str, list[str]] = {}
    for record in records:
        key, kind, data = record.get("key"), record.get("kind"), record.get("data", {})
        if not isinstance(key, str) or not isinstance(data, dict):
            merged.torn_lines += 1
            continue
        if kind == "row":
            if key in merged.rows:
                merged.duplicate_rows += 1
            else:
                merged.rows[key] = data
        elif kind == "failure":
            fid = str(data.get("id", key))
            failures[fid] = data  # the newest reason for the same failure wins
            failed_keys.setdefault(fid, []).append(key)
    for fid, data in failures.items():
        if any(k not in merged.rows for k in failed_keys[fid]):
            merged.failures.append(data)
    return merged


def _read_records(path: Path, stats: Merged | None) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    lines = text.split("\n")
    if lines and lines[-1] != "":
        # No trailing newline: the process died while writing this line.
        lines = lines[:-1] + [""]
        if stats is not None:
            stats.torn_lines += 1
    out = []
    for line in lines[:-1]:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if stats is not None:
                stats.torn_lines += 1
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _write_json_atomic(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
