"""Scoring throughput: our DRIQA scorer vs pyiqa's CKDN (test-only reference), same inputs, one run.

    .venv/bin/python benchmarks/bench_score.py [--seconds 6]

512x512 RGB inputs, the CKDN protocol (shorter side 329, centre crop 288), batch 1
and 8, fp32 and bf16. Prints the machine, pairs/s, ratios to pyiqa fp32 at the same
batch size, achieved GFLOP/s against the measured matmul peak, and the bf16 vs fp32
score gap on real photos. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import drqa_plugin as dq  # noqa: E402
from benchmarks.common import machine_description, matmul_peak_flops, time_rate  # noqa: E402


def pyiqa_ckdn() -> torch.nn.Module:
    import pyiqa.archs.ckdn_arch as ckdn_arch

    original = ckdn_arch.load_state_dict_from_url
    ckdn_arch.load_state_dict_from_url = lambda *a, **k: {}  # no download: random weights
    try:
        return ckdn_arch.CKDN(pretrained=False).eval()
    finally:
        ckdn_arch.load_state_dict_from_url = original


def flops_per_pair(model: torch.nn.Module) -> float:
    x = torch.randn(1, 3, 288, 288)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, x)
    return counter.get_total_flops()


def photo_gap(model: torch.nn.Module) -> float:
    """Largest |bf16 - fp32| score over real photos with SR-like references."""
    from skimage import data
    import torch.nn.functional as F

    imgs = [getattr(data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]
    restored = [torch.from_numpy(i).permute(2, 0, 1).float()[None] / 255 for i in imgs]
    degraded = [F.interpolate(r, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1) for r in restored]
    fp32 = dq.DRIQA(model)([r[0] for r in restored], [d[0] for d in degraded])
    bf16 = dq.DRIQA(model, dtype=torch.bfloat16)([r[0] for r in restored], [d[0] for d in degraded])
    return float((bf16 - fp32).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timing window per configuration")
    args = parser.parse_args()

    torch.manual_seed(0)
    ours_model = dq.create_model()
    # Timing needs no trained weights; say so, so the scorer's random-weights warning stays for real users.
    ours_model.pretrained_cfg = replace(ours_model.pretrained_cfg, provenance="random weights for timing")
    reference = pyiqa_ckdn()
    flops = flops_per_pair(ours_model)
    print(f"machine: {machine_description()}")
    peak = {name: matmul_peak_flops(dt) / 1e9 for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    print(f"network: {flops / 1e9:.2f} GFLOP per pair at 288x288 (torch.utils.flop_counter)")
    print(f"inputs: 512x512 RGB pairs, ckdn protocol; {args.seconds:.0f} s per configuration\n")

    scorers = {
        "fp32": dq.DRIQA(ours_model),
        "bf16": dq.DRIQA(ours_model, dtype=torch.bfloat16),
    }
    header = f"{'batch':>5} {'impl':<14} {'pairs/s':>8} {'vs pyiqa':>9} {'GFLOP/s':>8} {'% peak':>7}"
    print(header)
    print("-" * len(header))
    for batch in (1, 8):
        x, y = torch.rand(batch, 3, 512, 512), torch.rand(batch, 3, 512, 512)
        with torch.inference_mode():
            base = time_rate(lambda: reference(x, y), args.seconds) * batch
        print(f"{batch:>5} {'pyiqa fp32':<14} {base:>8.2f} {'1.00x':>9} {base * flops / 1e9:>8.0f} "
              f"{100 * base * flops / 1e9 / peak['fp32']:>6.0f}%")
        for name, scorer in scorers.items():
            rate = time_rate(lambda: scorer(x, y), args.seconds) * batch
            gflops = rate * flops / 1e9
            print(f"{batch:>5} {'drqa ' + name:<14} {rate:>8.2f} {rate / base:>8.2f}x {gflops:>8.0f} "
                  f"{100 * gflops / peak[name]:>6.0f}%")
    print(f"\nbf16 vs fp32 score gap on skimage photos: {photo_gap(ours_model):.4f} (target < 0.01)")
    print(f"scorer chunk size on CPU: {scorers['fp32'].chunk_size} pairs per forward")


if __name__ == "__main__":
    main()
