"""Atomic, verifiable training checkpoints on top of ``accelerator.save_state``.

``save_state`` itself is not atomic (a crash mid-write leaves a half folder that
looks like a checkpoint), so every rank writes into ``checkpoints/.tmp-step_N``,
all ranks meet at a barrier, and only then the main process renames the folder
to ``checkpoints/step_N`` and deletes the oldest ones beyond ``keep``. A folder
only ever appears under its final name complete, with ``trainer_state.json``
(written last) inside. Multi-node runs need ``output_dir`` on a shared file
system, as Accelerate's own checkpointing does.

``trainer_state.json`` also lists every file of the checkpoint with its size and
SHA-256, so a checkpoint damaged after it was written (a full disk, a copy cut
short) is recognised: ``resume=latest`` then warns and falls back to the newest
intact one. It records the facts a bit-identical resume depends on (process
count, batch size, crop, ...) too, so a resume under a changed config is refused
with the differences named.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from drqa_plugin.errors import MissingFileError, TrainingError
from drqa_plugin.files import sha256_file

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    """Position in the run, stored explicitly so a resume continues mid-epoch exactly."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # epoch the next batch belongs to
    batch_in_epoch: int = 0  # batches of ``epoch`` already consumed (per process)
    stage: int = 0  # schedule stage of the last optimiser step (0: none yet)
    best_score: float | None = None  # best val SRCC + PLCC so far
    best_step: int | None = None
    num_processes: int = 1
    distributed_type: str = "NO"
    nonfinite_skipped: int = 0  # optimiser steps dropped for a non-finite loss (optim.skip_nonfinite)

    @classmethod
    def read(cls, folder: Path) -> TrainerState:
        path = folder / STATE_FILE
        if not path.is_file():
            raise MissingFileError(f"{folder} is not a complete checkpoint: {STATE_FILE} is missing")
        raw = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})  # older files carried an unused "extra"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``None`` -> fresh run; ``"latest"`` -> newest intact checkpoint (or fresh if none); else a path.

    ``"latest"`` skips damaged checkpoints with a warning naming the damage; a checkpoint named
    by path must be intact.

    Raises:
        MissingFileError: a named path is not a complete checkpoint.
        TrainingError: a named checkpoint is damaged, or every checkpoint of the run is.
    """
    if resume is None or resume == "":
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        damaged: list[str] = []
        for folder in reversed(found):
            problem = verify_checkpoint(folder)
            if problem is None:
                if damaged:
                    warnings.warn(f"resume=latest: skipped damaged checkpoint(s) {'; '.join(damaged)}; "
                                  f"resuming from {folder.name}", stacklevel=2)
                return folder
            damaged.append(f"{folder.name} ({problem})")
        if damaged:
            raise TrainingError(f"resume=latest: every checkpoint is damaged: {'; '.join(damaged)}; "
                                "start over with overwrite=true")
        return None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise MissingFileError(f"resume={resume!r}: not a complete checkpoint folder (no {STATE_FILE} inside)")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise TrainingError(f"resume={resume!r}: the checkpoint is damaged ({problem})")
    return path


def file_manifest(folder: Path) -> dict[str, list[Any]]:
    """``{relative path: [size, sha256]}`` of every file under ``folder`` but the state file."""
    return {
        str(p.relative_to(folder)): [p.stat().st_size, sha256_file(p)]
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STATE_FILE
    }


def verify_checkpoint(folder: Path) -> str | None:
    """None if every file the checkpoint lists is there with its size and hash, else what is wrong."""
    try:
        raw = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        return f"{STATE_FILE} unreadable: {exc}"
    listed = raw.get("files")
    if listed is None:
        return None  # written before checkpoints carried a manifest: nothing to check against
    for name, (size, digest) in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written (truncated?)"
        if sha256_file(path) != digest:
            return f"{name} does not match the SHA-256 recorded when it was written (corrupt)"
    return None


def read_run_facts(folder: Path) -> dict[str, Any]:
    """The config facts a checkpoint was written under (empty for older checkpoints)."""
    return dict(json.loads((folder / STATE_FILE).read_text()).get("run", {}))


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, state: TrainerState, keep: int,
                    run_facts: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically on every rank's behalf; returns its final folder.

    ``run_facts`` (the config facts resuming depends on) are stored beside the position.
    """
    root = checkpoint_dir(output_dir)
    final = root / f"step_{state.step:08d}"
    tmp = root / f".tmp-step_{state.step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a crash during an earlier save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record = {**asdict(state), "run": run_facts or {}, "files": file_manifest(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(record, indent=1))
        if final.exists():  # same step saved twice (e.g. final save right after a periodic one)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
