"""Training-step throughput of the CKDN trainer on CPU (or the current GPU).

Measures, at 288 px crops (the paper's) and the paper's per-process batch of 8:
* samples/s of one optimiser step per stage (stage 1: d3 path; stage 2: d1+d2+d4 paths),
  fp32 and bf16 autocast, each in contiguous and channels_last memory format;
* achieved FLOP/s of the step (forward + backward FLOPs counted by torch's FlopCounterMode)
  against the machine's measured matmul peak in the same dtype (target: >= 40 %);
* the throughput of 2 DDP processes (1 thread each, real `accelerate launch`, gloo) against
  1 process using all threads;
* ``--launchers``: the real trainer (``python -m drqa_plugin.train``, synthetic data, stage 2)
  under the shipped ``cpu_2proc`` (DDP) and ``deepspeed_zero2`` launchers, with
  ``model.channels_last`` on and off: seconds per optimiser step from the difference of a
  2N- and an N-step run (start-up and the final evaluation cancel out).

Timings are only meaningful on a quiet machine: other jobs on the same cores distort them.

    python benchmarks/bench_train.py                 # full run (a few minutes on 2 cores)
    python benchmarks/bench_train.py --crop 96 --steps 2   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drqa_plugin import create_model  # noqa: E402
from drqa_plugin.train.losses import STAGE_PATHS  # noqa: E402
from benchmarks.common import fastest_call, machine_description, matmul_peak_flops  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def batch(n: int, crop: int, device: torch.device, channels_last: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [torch.randn(n, 3, crop, crop, generator=g).to(device).contiguous(memory_format=fmt) for _ in range(4)]


def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer, xs: list[torch.Tensor], stage: int,
              dtype: torch.dtype | None, device: torch.device):
    targets = torch.rand(xs[0].shape[0], device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(*xs, paths=STAGE_PATHS[stage])
        if stage == 1:
            loss = 0.5 * (out.nr.float() - targets).pow(2).mean()
        else:
            loss = (out.dr.float() - targets).pow(2).mean() + (out.fr.float() - targets).pow(2).mean() \
                + 30 * out.feature_gap.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def step_flops(crop: int, n: int, stage: int, device: torch.device) -> float:
    """Forward + backward FLOPs of one training step (counted on a batch of 1, FLOPs scale with the batch)."""
    model = create_model("ckdn_r50").train().to(device)
    xs = batch(1, crop, device, False)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(*xs, paths=STAGE_PATHS[stage])
        loss = sum(t.float().sum() for t in out if t is not None)
        loss.backward()
    return float(counter.get_total_flops()) * n


def single_process(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    flops = {s: step_flops(args.crop, args.batch, s, device) for s in (1, 2)}
    peaks = {name: matmul_peak_flops(dt or torch.float32, device) for name, dt in DTYPES.items()}
    for name, dtype in DTYPES.items():
        for channels_last in (False, True):
            for stage in (1, 2):
                # Re-measure the peak next to each case and keep the best: load from other jobs lowers both.
                peaks[name] = max(peaks[name], matmul_peak_flops(dtype or torch.float32, device))
                model = create_model("ckdn_r50").train().to(device)
                if channels_last:
                    model = model.to(memory_format=torch.channels_last)
                opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
                xs = batch(args.batch, args.crop, device, channels_last)
                seconds = fastest_call(make_step(model, opt, xs, stage, dtype, device), args.steps, sync=sync)
                achieved = flops[stage] / seconds
                rows.append(dict(dtype=name, channels_last=channels_last, stage=stage, s_per_step=seconds,
                                 samples_per_s=args.batch / seconds, gflops=achieved / 1e9,
                                 peak_gflops=peaks[name] / 1e9, fraction_of_peak=achieved / peaks[name],
                                 step_gflop=flops[stage] / 1e9))
                print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(r: dict) -> str:
    return (f"  {r['dtype']:>4} {'channels_last' if r['channels_last'] else 'contiguous   '} stage {r['stage']}: "
            f"{r['s_per_step']:7.3f} s/step  {r['samples_per_s']:6.2f} samples/s  {r['gflops']:7.1f} GFLOP/s "
            f"= {100 * r['fraction_of_peak']:5.1f} % of matmul peak {r['peak_gflops']:.0f} ({r['step_gflop']:.1f} GFLOP/step)")


# ----------------------------------------------------------------------------- DDP scaling


def worker(args: argparse.Namespace) -> None:
    """One DDP process (under `accelerate launch`): time stage-2 steps, rank 0 writes the result."""
    from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    acc = Accelerator(kwargs_handlers=handlers, mixed_precision="bf16" if args.dtype == "bf16" else "no")
    model = create_model("ckdn_r50").train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    model, opt = acc.prepare(model, opt)
    xs = batch(args.batch, args.crop, acc.device, True)
    targets = torch.rand(args.batch)

    def step() -> None:
        with acc.autocast():
            out = model(*xs, paths=STAGE_PATHS[2])
        loss = (out.dr.float() - targets).pow(2).mean() + (out.fr.float() - targets).pow(2).mean() \
            + 30 * out.feature_gap.float().pow(2).mean()
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = fastest_call(step, args.steps, sync=acc.wait_for_everyone)
    if acc.is_main_process:
        Path(args.out).write_text(json.dumps({"processes": acc.num_processes, "type": str(acc.distributed_type),
                                              "s_per_step": seconds, "threads": torch.get_num_threads()}))
    acc.free_memory()
    acc.end_training()


def ddp_scaling(args: argparse.Namespace) -> dict:
    cores = len(os.sched_getaffinity(0))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for procs in (1, 2):
            out = Path(tmp) / f"{procs}.json"
            common = [__file__, "--worker", "--out", str(out), "--crop", str(args.crop), "--batch", str(args.batch),
                      "--steps", str(args.steps), "--dtype", args.scaling_dtype]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // procs))}
            if procs == 1:
                cmd = [sys.executable, *common]
            else:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                env["ACCELERATE_USE_CPU"] = "1"
                cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                       str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"), "--num_processes", str(procs),
                       "--main_process_port", str(port), *common]
            subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
            r = json.loads(out.read_text())
            r["samples_per_s_total"] = procs * args.batch / r["s_per_step"]
            results[procs] = r
            print(f"  {procs} process(es) x {r['threads']} thread(s) [{r['type']}]: {r['s_per_step']:.3f} s/step, "
                  f"{r['samples_per_s_total']:.2f} samples/s in total", flush=True)
    ratio = results[2]["samples_per_s_total"] / results[1]["samples_per_s_total"]
    print(f"  2-process / 1-process throughput: {ratio:.2f}x", flush=True)
    return {"runs": results, "ratio_2_over_1": ratio}


def launcher_matrix(args: argparse.Namespace) -> dict:
    """s/step of the shipped trainer per (launcher, channels_last), 2 CPU processes."""
    results: dict[str, float] = {}
    base = ["--config", "recipes/configs/test_tiny.yaml", f"data.crop={args.crop}", f"loader.batch_size={args.batch}",
            "schedule.unit=step", "schedule.stage2_start=0", "schedule.eval_every_epochs=1000", "checkpoint_every=0",
            "data.num_samples=4096", "data.val_samples=4", "log.progress=false", "overwrite=true"]
    with tempfile.TemporaryDirectory() as tmp:
        for launcher in ("cpu_2proc", "deepspeed_zero2"):
            for channels_last in (True, False):
                seconds = {}
                for steps in (args.launch_steps, 2 * args.launch_steps):
                    out = Path(tmp) / f"{launcher}_{channels_last}_{steps}"
                    with socket.socket() as sock:
                        sock.bind(("127.0.0.1", 0))
                        port = sock.getsockname()[1]
                    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
                    env["OMP_NUM_THREADS"] = "1"
                    if launcher == "cpu_2proc":
                        env["ACCELERATE_USE_CPU"] = "1"
                    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                           f"recipes/accelerate/{launcher}.yaml", "--num_processes", "2", "--main_process_port",
                           str(port), "-m", "drqa_plugin.train", *base, f"max_steps={steps}", f"output_dir={out}",
                           f"model.channels_last={str(channels_last).lower()}"]
                    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                    seconds[steps] = json.loads((out / "summary.json").read_text())["seconds"]
                per_step = (seconds[2 * args.launch_steps] - seconds[args.launch_steps]) / args.launch_steps
                key = f"{launcher} channels_last={channels_last}"
                results[key] = per_step
                print(f"  {key}: {per_step:.3f} s/step ({2 * args.batch / per_step:.2f} samples/s in total)",
                      flush=True)
    for launcher in ("cpu_2proc", "deepspeed_zero2"):
        on, off = results[f"{launcher} channels_last=True"], results[f"{launcher} channels_last=False"]
        print(f"  {launcher}: channels_last speed-up {off / on:.2f}x", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crop", type=int, default=288)
    p.add_argument("--batch", type=int, default=8, help="samples per process and step (paper: 8 per GPU)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up step)")
    p.add_argument("--scaling-dtype", default="bf16", choices=sorted(DTYPES), dest="scaling_dtype")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--launchers", action="store_true", help="only the trainer under DDP and ZeRO-2, channels-last on/off")
    p.add_argument("--launch-steps", type=int, default=4, dest="launch_steps")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine_description()}")
    if args.launchers:
        print(f"shipped trainer, 2 CPU processes, {args.crop} px, batch {args.batch} per process, stage 2:", flush=True)
        results = {"machine": machine_description(), "launchers": launcher_matrix(args)}
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return
    print(f"training step, {args.crop} px, batch {args.batch} per process, device {device}:", flush=True)
    results = {"machine": machine_description(), "crop": args.crop, "batch": args.batch, "single": single_process(args, device)}
    best = max(results["single"], key=lambda r: r["fraction_of_peak"])
    print(f"best fraction of matmul peak: {100 * best['fraction_of_peak']:.1f} % "
          f"({best['dtype']}, {'channels_last' if best['channels_last'] else 'contiguous'}, stage {best['stage']}); "
          f"target >= 40 %: {'met' if best['fraction_of_peak'] >= 0.4 else 'NOT met'}")
    if not args.skip_scaling and device.type == "cpu":
        print(f"DDP scaling on CPU (stage 2, {args.scaling_dtype}, channels_last):", flush=True)
        results["scaling"] = ddp_scaling(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
