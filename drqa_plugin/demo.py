"""The demo main job (``make demo`` / ``python -m drqa_plugin.demo``).

1. Trains a small DR-IQA (CKDN) model for a couple of minutes on the photos that
   scikit-image ships, with the synthetic degradation/restoration pipeline and
   SSIM labels, through ``accelerate launch`` with 2 CPU processes (DDP, gloo).
2. Scores held-out photos (never seen in training) restored by several methods
   from the same degraded input, and prints the table next to the SSIM label.
3. Prints where the model, plots, metrics and checkpoints are.

A model trained for minutes on a dozen photos from random initialisation is NOT
the paper's model and its scores are not meaningful quality judgements; the demo
shows the machinery end to end.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from drqa_plugin.metrics import srcc
from drqa_plugin.preprocess import to_float_batch

# Shipped inside the package, so the demo runs from an installed wheel as from a checkout.
DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
DISCLAIMER = (
    "NOTE: this demo model is trained for a few minutes on a dozen bundled photos with synthetic SSIM labels,\n"
    "from random initialisation. It is NOT the paper's CKDN model (trained on PIPAL's human scores) and its\n"
    "scores are not meaningful quality judgements. It shows the training/evaluation machinery end to end."
)


@dataclass(frozen=True)
class DemoConfig:
    output_dir: Path
    processes: int
    crop: int  # side of the held-out crops that are scored
    scale: int  # downscaling factor of the degraded input
    photos: int  # held-out photos in the table


def parse_args(argv: list[str] | None) -> tuple[DemoConfig, bool, list[str]]:
    p = argparse.ArgumentParser(prog="python -m drqa_plugin.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--processes", type=int, default=2, help="CPU training processes (DDP over gloo)")
    p.add_argument("--skip-training", action="store_true", help="reuse OUTPUT_DIR/model.safetensors")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of recipes/configs/demo.yaml")
    a = p.parse_args(argv)
    cfg = DemoConfig(Path(a.output_dir).resolve(), a.processes, crop=192, scale=4, photos=4)
    return cfg, a.skip_training, a.overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(cfg: DemoConfig, overrides: list[str]) -> None:
    """Run the trainer under ``accelerate launch``; its progress bar and stage messages stream through."""
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = [str(accelerate), "launch"] if accelerate.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]
    # DDP over gloo on CPU: --multi_gpu with ACCELERATE_USE_CPU=1 (--cpu alone gives one process).
    cmd = [*launcher, "--multi_gpu", "--num_machines", "1", "--num_processes", str(cfg.processes),
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "drqa_plugin.train", "--config", str(DEMO_CONFIG),
           f"output_dir={cfg.output_dir}", "overwrite=true", *overrides]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise SystemExit(f"demo training failed (exit code {result.returncode}); see the messages above")
    print(f"training took {time.perf_counter() - t0:.0f} s", flush=True)


# ----------------------------------------------------------------------------- the held-out table


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(x)


def _resize(img: Image.Image, size: tuple[int, int], method: int) -> Image.Image:
    return img.resize(size, method)


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def restorations(scale: int) -> dict[str, Callable[[Image.Image, Image.Image, Image.Image], Image.Image]]:
    """name -> f(low_res_input, degraded_reference, pristine): restored image at full size."""

    def up(method: int) -> Callable:
        return lambda low, ref, gt: _resize(low, gt.size, method)

    return {
        "pristine (perfect)": lambda low, ref, gt: gt,
        "lanczos x%d" % scale: up(Image.Resampling.LANCZOS),
        "bicubic x%d" % scale: up(Image.Resampling.BICUBIC),
        "bicubic + unsharp": lambda low, ref, gt: _resize(low, gt.size, Image.Resampling.BICUBIC).filter(
            ImageFilter.UnsharpMask(radius=2, percent=120, threshold=2)),
        "bilinear x%d" % scale: up(Image.Resampling.BILINEAR),
        "nearest x%d" % scale: up(Image.Resampling.NEAREST),
        "box blur of bicubic": lambda low, ref, gt: _resize(low, gt.size, Image.Resampling.BICUBIC).filter(
            ImageFilter.BoxBlur(2)),
    }


def held_out_photos(n: int) -> list[tuple[str, np.ndarray]]:
    """Photos of the demo's validation split: never used for training."""
    from drqa_plugin.data import build_dataset, read_rgb
    from drqa_plugin.train.config import load_config

    data_cfg = load_config(DEMO_CONFIG).data
    val = build_dataset(data_cfg, "val")
    return [(p.name, read_rgb(p.path)) for p in list(getattr(val, "photos"))[:n]]  # noqa: B009  (SyntheticPairs)


def _center_crop(x: np.ndarray, size: int) -> np.ndarray:
    h, w = x.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"photo of {w}x{h} is smaller than the {size} px demo crop")
    top, left = (h - size) // 2, (w - size) // 2
    return x[top:top + size, left:left + size]


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return to_float_batch(img)[0]


def score_table(cfg: DemoConfig, weights: Path) -> str:
    from drqa_plugin.data import ssim
    from drqa_plugin.scorer import DRIQA
    from drqa_plugin.train.config import load_config

    train_crop = load_config(DEMO_CONFIG).data.crop
    # Tiles of the training crop size cover each image: the model only ever saw that scale.
    scorer = DRIQA(weights, preprocess="tiles", tile_size=train_crop)
    methods = restorations(cfg.scale)
    photos = held_out_photos(cfg.photos)
    dr: dict[str, list[float]] = {m: [] for m in methods}
    fr: dict[str, list[float]] = {m: [] for m in methods}
    for _, rgb in photos:
        gt = _pil(_center_crop(rgb, cfg.crop))
        low = _jpeg(_resize(gt, (cfg.crop // cfg.scale,) * 2, Image.Resampling.BOX), quality=60)
        ref = _resize(low, gt.size, Image.Resampling.BICUBIC)  # the degraded reference: what the restorer was given
        outs = {m: f(low, ref, gt) for m, f in methods.items()}
        restored = torch.stack([_to_tensor(o) for o in outs.values()])
        scores = scorer(list(restored), [_to_tensor(ref)] * len(outs))
        labels = ssim(restored, _to_tensor(gt)[None].expand_as(restored))
        for i, m in enumerate(outs):
            dr[m].append(float(scores[i]))
            fr[m].append(float(labels[i]))
    names = [n for n, _ in photos]
    width = max(len(m) for m in methods) + 2
    head = f"{'method':<{width}}" + "".join(f"{n[:11]:>12}" for n in names) + f"{'mean DR':>10}{'SSIM (FR)':>11}"
    lines = [head, "-" * len(head)]
    for m in sorted(methods, key=lambda k: -np.mean(dr[k])):
        lines.append(f"{m:<{width}}" + "".join(f"{s:12.4f}" for s in dr[m]) + f"{np.mean(dr[m]):10.4f}{np.mean(fr[m]):11.4f}")
    rank = srcc([float(np.mean(dr[m])) for m in methods], [float(np.mean(fr[m])) for m in methods])
    lines.append(f"\nDR score = the trained model's degraded-reference score of each restoration, given only the "
                 f"degraded input (x{cfg.scale} down, JPEG q60, bicubic up) as reference; higher is better.")
    lines.append(f"SSIM (FR) = full-reference SSIM against the pristine crop, the kind of label the demo trained on. "
                 f"Rank agreement of the two method means (Spearman): {rank:+.2f}")
    return "\n".join(lines)


def where(cfg: DemoConfig) -> str:
    out = cfg.output_dir
    items = [
        ("final model (safetensors)", out / "model.safetensors"),
        ("best model by val SRCC+PLCC", out / "model_best.safetensors"),
        ("loss curves + val correlations", out / "plots" / "losses.png"),
        ("predicted vs target scatter", out / "plots" / "scatter.png"),
        ("per-step losses and val metrics", out / "metrics.csv"),
        ("val predictions", out / "predictions.csv"),
        ("checkpoints (resume=latest)", out / "checkpoints"),
        ("run summary", out / "summary.json"),
    ]
    return "\n".join(f"  {what:<34} {path}{'' if path.exists() else '  (missing)'}" for what, path in items)


def main(argv: list[str] | None = None) -> int:
    cfg, skip, overrides = parse_args(argv)
    print(DISCLAIMER + "\n", flush=True)
    if not skip:
        train(cfg, overrides)
    weights = cfg.output_dir / "model.safetensors"
    if not weights.is_file():
        raise SystemExit(f"{weights} not found: run the demo without --skip-training first")
    print("\nHeld-out photos (not used in training), x%d super-resolution by different methods:\n" % cfg.scale)
    print(score_table(cfg, weights))
    print("\nOutputs:\n" + where(cfg))
    print(f"\nScore your own pairs:  drqa score --weights {weights} --restored IMG_OR_DIR --degraded IMG_OR_DIR")
    print("\n" + DISCLAIMER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
