"""``drqa validate`` throughput, where the time goes, and peak memory with and without tiling.

    .venv/bin/python benchmarks/bench_validate.py [--images 8] [--checkpoints 2] [--lq-size 128] [--big 2048]

1. The share of DR-IQA (CKDN protocol, fp32) in the time per image, next to the SR model's
   (a Real-ESRGAN Compact x4, 32 features, 8 convolutions, random weights).
2. Images/s of the whole command on the same work: one process (all threads), one process with
   one thread, and ``accelerate launch`` with 2 CPU processes of one thread each, each run
   ``--repeats`` times, interleaved; the best run counts (the least disturbed on a shared
   machine), the median is shown too. Steady-state rates come from the shard records'
   timestamps (start-up and model loading excluded); the shortest wall time is printed too.
3. Peak resident memory (``ru_maxrss`` of a fresh subprocess) for one ``--big`` x ``--big`` LQ
   image super-resolved x4 with ``--tile 512`` and without tiling, then scored.

Prints the machine it ran on. Not a test; nothing is downloaded. Run it with nothing else on
the machine, or say that it was shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.common import machine_description  # noqa: E402

SR_FEAT, SR_CONV, SR_SCALE = 32, 8, 4


def prepare(root: Path, images: int, checkpoints: int, lq_size: int) -> tuple[Path, Path, Path]:
    from validate_helpers import make_checkpoints, make_images

    import drqa_plugin as dq

    models, lq = root / "models", root / "lq"
    make_checkpoints(models, [1000 * (i + 1) for i in range(checkpoints)], scale=SR_SCALE, feat=SR_FEAT, conv=SR_CONV)
    make_images(lq, None, images, lq_size, SR_SCALE)
    torch.manual_seed(0)
    weights = root / "ckdn_random.safetensors"
    dq.save_model(dq.create_model("ckdn_r50"), weights, provenance="random weights for the benchmark")
    return models, lq, weights


def time_shares(models: Path, lq: Path, weights: Path, repeats: int = 2) -> dict[str, float]:
    """Median seconds per image of the SR model and of DR-IQA, in this process."""
    from drqa_plugin.images import images_in, read_image
    from drqa_plugin.preprocess import to_float_batch
    from drqa_plugin.scorer import DRIQA
    from drqa_plugin.srval.checkpoints import load_sr_model
    from drqa_plugin.srval.tiling import super_resolve

    model = load_sr_model(sorted(models.iterdir())[0])
    scorer = DRIQA(str(weights))
    sr_times, iqa_times = [], []
    for path in images_in(lq) * repeats:
        x = to_float_batch(read_image(path))
        t0 = time.perf_counter()
        sr = super_resolve(model, x, model.scale, tile=512)
        t1 = time.perf_counter()
        scorer(sr.float().div(255).unsqueeze(0), x)
        t2 = time.perf_counter()
        sr_times.append(t1 - t0)
        iqa_times.append(t2 - t1)
    n = len(images_in(lq))
    sr_s, iqa_s = statistics.median(sr_times[n:]), statistics.median(iqa_times[n:])  # second pass: warm
    return {"sr_s": sr_s, "driqa_s": iqa_s, "driqa_share": iqa_s / (sr_s + iqa_s)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_command(kind: str, models: Path, lq: Path, weights: Path, out: Path) -> dict[str, float]:
    """Run drqa validate one way; images/s from the shard timestamps, and the wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    args = ["validate", "--quiet", "--models", str(models), "--lq", str(lq), "--out", str(out),
            "--weights", str(weights), "--report-images", "0"]
    if kind == "1 process, all threads":
        cmd = [sys.executable, "-m", "drqa_plugin.cli", *args]
    elif kind == "1 process, 1 thread":
        cmd = [sys.executable, "-m", "drqa_plugin.cli", *args]
        env["OMP_NUM_THREADS"] = "1"
    else:
        accelerate = Path(sys.executable).with_name("accelerate")
        cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "-m", "drqa_plugin.cli", *args]
        env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rate, items = 0.0, 0
    for shard in (out / "shards").glob("*.jsonl"):
        times = [json.loads(line)["time"] for line in shard.read_text().splitlines() if line.strip()]
        items += len(times)
        if len(times) > 1:
            rate += (len(times) - 1) / (times[-1] - times[0])
    return {"images_per_s": rate, "wall_s": wall, "items": items}


def memory_child(size: int, tile: int, models: Path, weights: Path) -> None:
    """In a fresh process: peak RSS after loading, after SR, after DR-IQA (MiB)."""
    from drqa_plugin.scorer import DRIQA
    from drqa_plugin.srval.checkpoints import load_sr_model
    from drqa_plugin.srval.tiling import super_resolve

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    model = load_sr_model(sorted(models.iterdir())[0])
    scorer = DRIQA(str(weights))
    torch.manual_seed(0)
    lq = torch.rand(1, 3, size, size)
    loaded = peak_mib()
    start = time.perf_counter()
    sr = super_resolve(model, lq, model.scale, tile=tile)
    sr_seconds = time.perf_counter() - start
    after_sr = peak_mib()
    score = float(scorer(sr.float().div_(255).unsqueeze(0), lq)[0])
    print(json.dumps({"loaded_mib": loaded, "after_sr_mib": after_sr, "after_driqa_mib": peak_mib(),
                      "sr_s": sr_seconds, "score": score, "output": list(sr.shape)}))


def memory(size: int, tile: int, models: Path, weights: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-child", str(size), str(tile), str(models), str(weights)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"memory child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        memory_child(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="LQ images (photos from scikit-image)")
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--lq-size", type=int, default=128, help="LQ side in pixels (output is x4)")
    parser.add_argument("--big", type=int, default=2048, help="LQ side for the memory measurement; 0 skips it")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command (the best counts)")
    args = parser.parse_args()

    print(f"machine: {machine_description()}")
    try:
        load = os.getloadavg()
        print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other work on the machine shows here)")
    except OSError:
        pass
    root = Path(tempfile.mkdtemp(prefix="bench_validate_"))
    try:
        models, lq, weights = prepare(root, args.images, args.checkpoints, args.lq_size)
        work = f"{args.checkpoints} checkpoints x {args.images} LQ images of {args.lq_size}px -> {args.lq_size * 4}px"
        print(f"\nSR model: Real-ESRGAN Compact x{SR_SCALE}, {SR_FEAT} features, {SR_CONV} convs; DR-IQA: CKDN fp32, "
              "ckdn protocol")

        shares = time_shares(models, lq, weights)
        print(f"\n## Time per image ({args.lq_size}px LQ, one process, {torch.get_num_threads()} threads)\n")
        print("| step | ms / image | share |\n|---|---|---|")
        print(f"| SR model | {shares['sr_s'] * 1e3:.0f} | {1 - shares['driqa_share']:.0%} |")
        print(f"| DR-IQA | {shares['driqa_s'] * 1e3:.0f} | {shares['driqa_share']:.0%} |")

        print(f"\n## Throughput, {work}, best of {args.repeats} runs each (interleaved)\n")
        print("| run | images/s (steady) | median images/s | wall s (incl. start-up) | scaling vs 1 process 1 thread |")
        print("|---|---|---|---|---|")
        kinds = ("1 process, all threads", "1 process, 1 thread", "2 processes x 1 thread (accelerate)")
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        for rep in range(args.repeats):
            for i, kind in enumerate(kinds):
                runs[kind].append(run_command(kind, models, lq, weights, root / f"out{rep}_{i}"))
        best = {kind: max(r["images_per_s"] for r in rs) for kind, rs in runs.items()}
        for kind, rs in runs.items():
            median = statistics.median(r["images_per_s"] for r in rs)
            wall = min(r["wall_s"] for r in rs)
            print(f"| {kind} | {best[kind]:.2f} | {median:.2f} | {wall:.1f} | {best[kind] / best[kinds[1]]:.2f}x |")

        if args.big:
            print(f"\n## Peak memory, one {args.big}x{args.big} LQ image -> {args.big * 4}px (fresh process, ru_maxrss)\n")
            print("| tiling | after loading MiB | peak after SR MiB | peak after DR-IQA MiB | SR s |\n|---|---|---|---|---|")
            for tile in (512, 0):
                m = memory(args.big, tile, models, weights)
                label = f"--tile {tile}" if tile else "off (--tile 0)"
                print(f"| {label} | {m['loaded_mib']:.0f} | {m['after_sr_mib']:.0f} | {m['after_driqa_mib']:.0f} "
                      f"| {m['sr_s']:.1f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
