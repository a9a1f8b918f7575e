"""Shared pieces of the benchmarks: machine description, matmul peak, timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def machine_description() -> str:
    """CPU model, usable cores, relevant ISA, GPU, torch and python versions."""
    cpu, isa = platform.processor() or "unknown CPU", []
    try:
        info = Path("/proc/cpuinfo").read_text()
        for line in info.splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in info]
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu} ({cores} usable cores, ISA {'/'.join(isa) or '?'}){gpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; python {platform.python_version()}"
    )


def matmul_peak_flops(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """FLOP/s of the fastest of several square matmuls: the practical peak in ``dtype``."""
    device = torch.device(device)
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds = fastest_call(lambda: a @ b, calls=10 if device.type == "cpu" else 50, warmup=2, sync=sync)
    return 2 * size**3 / seconds


def fastest_call(fn: Callable[[], object], calls: int, warmup: int = 1, sync: Callable[[], object] = lambda: None) -> float:
    """Seconds of the fastest of ``calls`` timed calls (the least disturbed on a shared machine)."""
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


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
