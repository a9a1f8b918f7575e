"""Atomic training checkpoints on top of ``accelerator.save_state``.

``save_state`` itself is not atomic (a crash mid-write leaves a half folder that
looks like a checkpoint), so every rank writes into ``checkpoints/.tmp-step_N``,
all ranks meet at a barrier, and only then the main process renames the folder
to ``checkpoints/step_N`` and deletes the oldest ones beyond ``keep``. A folder
only ever appears under its final name complete, with ``trainer_state.json``
(written last) inside. Multi-node runs need ``output_dir`` on a shared file
system, as Accelerate's own checkpointing does.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from accelerate import Accelerator

from drqa_plugin.errors import MissingFileError

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
    """``None`` -> fresh run; ``"latest"`` -> newest complete checkpoint (or fresh if none); else a path."""
    if resume is None or resume == "":
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise MissingFileError(f"resume={resume!r}: not a complete checkpoint folder (no {STATE_FILE} inside)")
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, state: TrainerState, keep: int) -> Path:
    """Write a checkpoint atomically on every rank's behalf; returns its final folder."""
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
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        if final.exists():  # same step saved twice (e.g. final save right after a periodic one)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
