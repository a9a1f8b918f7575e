"""Ablations of ``recipes/configs/quality_cpu.yaml``: the same recipe with one thing changed.

Each variant is the shipped recipe plus a few ``key=value`` overrides, trained from the
same seed on the same bank; several run side by side (one GPU holds many of these small
runs; on a CPU run one at a time). Prints each run's validation row next to the
baselines on the bank's val split, and can export each final model as compact fp16
inference weights (what ``drqa_plugin.load_model`` reads after :func:`expand_compact`)::

    python benchmarks/quality_ablations.py --bank runs/bank_skimage --out runs/ablations \\
        --parallel 4 --variant recipe --variant paper_losses max_steps=2000

Variants (``--variant NAME``; default: all):
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = REPO / "drqa_plugin" / "configs" / "quality_cpu.yaml"  # recipes/configs/ links to it

# name -> (what it tests, overrides of the recipe)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("the shipped recipe", []),
    "paper_losses": ("the paper's losses only (d5 off)", ["loss.pair=0"]),
    "crop96": ("96 px crops, same compute (2.25x per step: 40 epochs)",
               ["data.crop=96", "schedule.epochs=40", "schedule.stage2_start=9"]),
    "alex_labels": ("labels from ST-LPIPS AlexNet alone", ["data.list_file=train_alex.txt",
                                                            "data.val_list_file=val_alex.txt"]),
    "no_distill": ("without feature distillation (d4 weight 0)", ["loss.distill=0"]),
    "no_stage1": ("stage 2 from the start (no NR pre-training)", ["schedule.stage2_start=0"]),
    "pair2": ("with d5, weight 2", ["loss.pair=2"]),
    "pair8": ("with d5, weight 8", ["loss.pair=8"]),
    "lr002": ("learning rate 0.02 instead of 0.04", ["optim.lr=0.02"]),
    "scaled_gpu": ("one GPU: 192 px crops, batch 32, bf16", ["data.crop=192", "loader.batch_size=32",
                                                              "runtime.mixed_precision=bf16"]),
}
__doc__ += "\n".join(f"    {k:14s} {v[0]}" for k, v in VARIANTS.items()) + "\n"


def single_labeller_lists(bank: Path, labeller: str, suffix: str) -> None:
    """``train_<suffix>.txt/.csv`` and ``val_<suffix>.txt/.csv``: the bank's lists labelled by one labeller."""
    from drqa_plugin.data.bank import MOS_OFFSET, MOS_SCALE, combine_scores, list_texts, load_manifest

    manifest = load_manifest(bank)
    labels = combine_scores([i.scores for i in manifest.items], [labeller], "rank")
    relabelled = [dataclasses.replace(i, label=float(v), mos=MOS_OFFSET + MOS_SCALE * float(v))
                  for i, v in zip(manifest.items, labels)]
    for split in ("train", "val"):
        text, table = list_texts([i for i in relabelled if i.split == split])
        (bank / f"{split}_{suffix}.txt").write_text(text)
        (bank / f"{split}_{suffix}.csv").write_text(table)


def compact(weights: Path, out: Path) -> Path:
    """fp16 copy of the inference part (the NR branch is only used in training): ~14 MB instead of 54."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("nr_")}
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(out), metadata=meta)
    return out


def expand_compact(path: Path, out: Path) -> Path:
    """Back to a loadable fp32 file: the NR branch (unused when scoring) is filled with fresh weights."""
    import drqa_plugin as dq
    from drqa_plugin.weights import load_state_dict, read_metadata, save_weights

    state, _ = load_state_dict(path)
    full = dq.create_model().state_dict()
    full.update({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    meta = read_metadata(path)
    save_weights(full, out, arch=meta.get("arch", "ckdn_r50"),
                 provenance=meta.get("provenance", "") + " [fp16 inference copy; NR branch not kept]",
                 license=meta.get("license", "unspecified"))
    return out


def run_variants(names: list[str], bank: Path, out: Path, parallel: int, extra: list[str],
                 on_done: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Train every variant, ``parallel`` at a time; ``on_done(name, summary)`` as each one finishes."""
    if "alex_labels" in names:
        single_labeller_lists(bank, "stlpips_alex", "alex")
    pending = list(names)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    done: dict[str, dict] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            run_dir = out / name
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "drqa_plugin.train", "--config", str(RECIPE), f"data.root={bank}",
                   f"output_dir={run_dir}", "overwrite=true", "log.progress=false", *extra, *VARIANTS[name][1]]
            log = open(run_dir / "train.log", "w")
            running[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT),
                             time.perf_counter())
            print(f"started {name}: {' '.join(cmd[3:])}", flush=True)
        time.sleep(2)
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            summary_path = out / name / "summary.json"
            ok = proc.returncode == 0 and summary_path.is_file()
            done[name] = json.loads(summary_path.read_text()) if ok else {"failed": proc.returncode}
            print(f"finished {name} in {time.perf_counter() - t0:.0f} s ({'ok' if ok else 'FAILED'})", flush=True)
            if on_done is not None:
                on_done(name, done[name])
    return done


def report(done: dict[str, dict]) -> str:
    lines = [f"{'variant':14s} {'what':48s} {'steps':>6s} {'s':>6s}  {'val SRCC':>8s} {'grouped':>8s}   "
             f"{'prior grouped':>13s} {'PSNR-in grouped':>15s}"]
    for name, s in done.items():
        if "failed" in s:
            lines.append(f"{name:14s} FAILED (exit {s['failed']})")
            continue
        ev, base = s["final_eval"] or {}, s.get("final_eval_baselines") or {}
        prior = base.get("method prior (LOSO)", {}).get("grouped_srcc", float("nan"))
        psnr = base.get("PSNR vs input", {}).get("grouped_srcc", float("nan"))
        lines.append(f"{name:14s} {VARIANTS[name][0][:48]:48s} {s['steps']:6d} {s['seconds']:6.0f}  "
                     f"{ev.get('srcc', float('nan')):8.4f} {ev.get('grouped_srcc', float('nan')):8.4f}   "
                     f"{prior:13.4f} {psnr:15.4f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bank", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/ablations"))
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--compact", type=Path, help="write <variant>.safetensors (fp16, inference part) here")
    p.add_argument("--compact-variant", action="append", help="only these variants (default: every finished one)")
    p.add_argument("overrides", nargs="*", help="key=value for every variant, before the variant's own "
                   "(e.g. max_steps=2000 loader.batch_size=16 on one GPU for the global batch of 2 x 8)")
    args = p.parse_args()
    names = args.variant or list(VARIANTS)
    finished: dict[str, dict] = {}

    def on_done(name: str, summary: dict) -> None:  # results survive a run that is cut short
        finished[name] = summary
        (args.out / "ablations.txt").write_text(report(finished) + "\n")
        if args.compact and "failed" not in summary and (not args.compact_variant or name in args.compact_variant):
            args.compact.mkdir(parents=True, exist_ok=True)
            compact(args.out / name / "model.safetensors", args.compact / f"{name}.safetensors")

    run_variants(names, args.bank.resolve(), args.out.resolve(), args.parallel, args.overrides, on_done)
    print(report(finished))


if __name__ == "__main__":
    main()
