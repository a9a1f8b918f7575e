"""Which process am I: one plain process, or one of several under ``accelerate launch``.

:func:`current` returns a :class:`Dist`. Accelerate is imported only when the
environment says the command was launched with several processes
(``WORLD_SIZE > 1``, as ``accelerate launch`` and ``torchrun`` set it), so a
plain ``drqa validate`` neither needs Accelerate nor pays for its import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from drqa_plugin.constants import resolve_device
from drqa_plugin.errors import ConfigError
from drqa_plugin.srval.options import launched_world_size

T = TypeVar("T")


@dataclass
class Dist:
    """Rank, world size, device and barrier of this process (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # the launcher's device for this rank (None: not launched)
    _state: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait until every process gets here (a no-op for a single process)."""
        if self._state is not None and self.world > 1:
            self._state.wait_for_everyone()

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items``: every ``world``-th one, starting at ``rank``."""
        return list(items[self.rank :: self.world])

    def resolve_device(self, device: str | torch.device) -> torch.device:
        """``"auto"`` is the launcher's device for this rank (``cuda:LOCAL_RANK`` on GPUs), else CUDA if present."""
        if device == "auto" and self.device is not None:
            return self.device
        return resolve_device(device)


_CURRENT: list[Dist] = []


def current(cpu: bool = False) -> Dist:
    """This process's :class:`Dist` (made once per process), from Accelerate's ``PartialState`` when
    launched with several processes.

    The processes talk over gloo on CPU when ``cpu`` is asked for or no CUDA GPU is visible (so
    ``accelerate launch --multi_gpu`` works on a CPU-only machine without ``ACCELERATE_USE_CPU=1``),
    else over NCCL, one GPU per process (``cuda:LOCAL_RANK``, also made the current CUDA device).

    Raises:
        ConfigError: launched with several processes but Accelerate is not installed.
    """
    if _CURRENT:
        return _CURRENT[0]
    if launched_world_size() <= 1:
        _CURRENT.append(Dist())
        return _CURRENT[0]
    try:
        from accelerate import PartialState
    except ImportError as exc:
        raise ConfigError(
            "this command was launched with several processes (WORLD_SIZE > 1) but accelerate is not "
            "installed: pip install 'accelerate>=1.0'"
        ) from exc
    state = PartialState(cpu=cpu or not torch.cuda.is_available())
    if state.num_processes != launched_world_size():
        raise ConfigError(
            f"launched with {launched_world_size()} processes but Accelerate set up {state.num_processes}; "
            "check the launch (accelerate launch --multi_gpu --num_processes N ...)"
        )
    _CURRENT.append(Dist(rank=state.process_index, world=state.num_processes, device=state.device, _state=state))
    return _CURRENT[0]
