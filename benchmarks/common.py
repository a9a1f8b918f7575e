"""Shared pieces of the benchmarks: machine description, matmul peak, timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads){gpu}, python {platform.python_version()}"
    )


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """Achieved GFLOP/s of a square matmul: the practical peak of this machine in ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    rate = time_rate(lambda: a @ b, seconds=seconds)
    return rate * 2 * n**3 / 1e9


def time_rate(fn: Callable[[], object], seconds: float = 3.0, repeats: int = 3) -> float:
    """Calls per second: the median over ``repeats`` windows of at least ``seconds / repeats`` each."""
    fn()  # warm-up (allocations, oneDNN primitive creation)
    rates = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / repeats:
                break
        rates.append(calls / elapsed)
    return statistics.median(rates)
