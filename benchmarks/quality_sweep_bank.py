"""An experiment, not a product: strength sweeps in the training bank.

The recipe's model orders the restorations of one input by recognising *methods* (docs/quality.md,
"What the model has learnt"): each restorer runs once per input, at one random strength, so a
method's look predicts most of its label. Here every training input of a recipe bank also gets each
strength-driven classical restorer at several fixed strengths (TV, NL-means, wavelet, bilateral,
median and Gaussian for denoising; unsharp masking for x4 SR). Inside a sweep the method is the
same, so only the image can say which strength is right for this input: how much a denoiser may
smooth, how much sharpening helps.

``build`` runs ``drqa_plugin.data.build_bank`` with restorers registered through the public
``register_restorer`` on the *same* inputs as the base bank (same seed, crops and degradations; the
base bank's val photos left out), so the sweeps extend the base bank's groups. ``merge`` writes a
folder of links to both banks and the bank's lists (``train.txt`` for the trainer, ``train.csv`` for
``drqa eval``) whose sweep labels are put on the base bank's label scale (each labeller's raw score
as a percentile of the base bank's scores, then the base bank's combination), so the base items
keep their labels::

    python benchmarks/quality_sweep_bank.py build --out runs/sweeps --labeller stlpips_alex --labeller stlpips_vgg
    python benchmarks/quality_sweep_bank.py merge --out runs/sweeps --base runs/bank_skimage
    accelerate launch ... -m drqa_plugin.train --config recipes/configs/quality_cpu.yaml \\
        data.root=runs/sweeps/merged schedule.epochs=... (the printed equal-compute schedule)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine_description  # noqa: E402
from drqa_plugin.data.bank import (  # noqa: E402
    BankConfig,
    FloatImage,
    Restorer,
    RestoreRequest,
    available_restorers,
    build_bank,
    list_texts,
    load_manifest,
    plan_inputs,
    register_restorer,
    resolve_restorers,
    select_photos,
)
from drqa_plugin.data.pipal import MOS_OFFSET, MOS_SCALE  # noqa: E402

SWEPT = {"denoise": ("tv", "nlmeans", "wavelet", "bilateral", "median", "gaussian"), "sr_x4": ("unsharp",)}
# quality_cpu.yaml's compute (global batch, steps) and stage boundary.
RECIPE_BATCH, RECIPE_STEPS, RECIPE_EPOCHS, RECIPE_STAGE2 = 16, 2130, 30, 7


def sweep_strengths(restorer: Restorer, count: int) -> list[float]:
    """``count`` strengths spread evenly in log space over the restorer's whole range, ends included."""
    low, high = restorer.strength_range
    if count == 1:
        return [math.sqrt(low * high)]
    return [math.exp(math.log(low) + (math.log(high) - math.log(low)) * k / (count - 1)) for k in range(count)]


def register_sweeps(count: int) -> list[str]:
    """Register ``<restorer>_s<k>`` for every installed swept restorer; returns their names."""
    names = []
    for task, swept in SWEPT.items():
        kind = "denoise" if task == "denoise" else "sr"
        for base in resolve_restorers([n for n in swept if n in available_restorers()], (task,)):
            for k, strength in enumerate(sweep_strengths(base, count)):
                def restore(x: FloatImage, req: RestoreRequest, _fn=base.fn, _s=strength) -> FloatImage:
                    return _fn(x, dataclasses.replace(req, strength=_s))

                name = f"{base.name}_s{k}"
                register_restorer(name, restore, kind, description=f"{base.name} at strength {strength:.3f}")
                names.append(name)
    return names


def build(args: argparse.Namespace) -> None:
    # The base bank's photos, crops, split and inputs (drqa data build's defaults otherwise).
    base = BankConfig(photos=args.photos, crop=args.crop, crops_per_photo=args.crops_per_photo, seed=args.seed)
    photos, _ = select_photos(base)
    val = sorted({p.photo for p in plan_inputs(base, photos) if p.split == "val"})
    cfg = dataclasses.replace(
        base, tasks=tuple(SWEPT), exclude_photos=tuple(val), val_fraction=0.0,
        restorers=tuple(register_sweeps(args.strengths)), vary_strength=False, labellers=tuple(args.labeller),
        combine="rank", progress=not args.quiet,
    )
    print(f"sweep bank: {len(cfg.restorers)} restorers, base val photos left out: {val}\n{machine_description()}")
    start = time.perf_counter()
    manifest = build_bank(cfg, args.out / "bank")
    print(f"{len(manifest.items)} restorations of {len(manifest.inputs)} inputs in {time.perf_counter() - start:.0f} s")


def _rescale(raw: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Percentile of each raw score among the reference scores (the base bank's rank label, extended)."""
    ref = np.sort(reference)
    lo, hi = np.searchsorted(ref, raw, side="left"), np.searchsorted(ref, raw, side="right")
    return np.clip((lo + hi) / 2.0 - 0.5, 0.0, ref.size - 1.0) / (ref.size - 1.0)


def merge(args: argparse.Namespace) -> None:
    base, sweeps = load_manifest(args.base), load_manifest(args.out / "bank")
    if base.combine != "rank" or tuple(base.labellers) != tuple(sweeps.labellers):
        raise SystemExit(f"the base bank must use combine=rank and the sweep bank's labellers {sweeps.labellers}")
    base_inputs = {i.input_id for i in base.items}
    missing = sorted({i.input_id for i in sweeps.items} - base_inputs)
    if missing:
        raise SystemExit(f"sweep inputs not in the base bank (other seed or crops?): {missing[:5]}")
    out = args.out / "merged"
    out.mkdir(parents=True, exist_ok=True)
    for bank in (base, sweeps):
        for f in Path(bank.out_dir).iterdir():
            link = out / f.name
            if f.is_file() and f.suffix == ".png" and not link.exists():
                os.symlink(f.resolve(), link)
    labels = np.mean([_rescale(np.array([i.scores[n] for i in sweeps.items]),
                               np.array([i.scores[n] for i in base.items])) for n in base.labellers], axis=0)
    rescaled = [dataclasses.replace(i, label=float(label), mos=round(MOS_OFFSET + MOS_SCALE * float(label), 6))
                for i, label in zip(sweeps.items, labels)]
    train = base.split_items("train") + rescaled
    for split, items in (("train", train), ("val", base.split_items("val"))):
        text, table = list_texts(items)  # the bank's own list and CSV writers
        (out / f"{split}.txt").write_text(text)
        (out / f"{split}.csv").write_text(table)
    steps_per_epoch = len(train) / RECIPE_BATCH
    epochs = max(1, round(RECIPE_STEPS / steps_per_epoch))
    stage2 = max(1, round(epochs * RECIPE_STAGE2 / RECIPE_EPOCHS))
    print(f"{out}: {len(base.split_items('train'))} base + {len(sweeps.items)} sweep restorations in training, "
          f"{len(base.split_items('val'))} val\nthe recipe's compute: schedule.epochs={epochs} "
          f"schedule.stage2_start={stage2} schedule.eval_every_epochs={max(1, round(epochs / 10))}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the sweep bank on the base bank's training inputs")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--labeller", action="append", required=True, help="the base bank's labellers, in its order")
    b.add_argument("--strengths", type=int, default=3, help="strengths per swept restorer")
    b.add_argument("--photos", default=None, help="the base bank's photo folder (default: scikit-image's)")
    b.add_argument("--crop", type=int, default=256, help="as the base bank")
    b.add_argument("--crops-per-photo", type=int, default=4, help="as the base bank")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--seed", type=int, default=0, help="the base bank's seed")
    m = sub.add_parser("merge", help="link both banks into OUT/merged with one training list")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--base", type=Path, required=True, help="the finished base bank (drqa data build)")
    args = p.parse_args()
    build(args) if args.command == "build" else merge(args)


if __name__ == "__main__":
    main()
