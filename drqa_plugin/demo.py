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
from drqa_plugin.train.config import load_config, packaged_config

DEMO_CONFIG = packaged_config("demo")
QUALITY_CONFIG = packaged_config("quality_cpu")
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
    quality_model: Path  # a quality_cpu.yaml model shown beside the demo's own, when it exists


def parse_args(argv: list[str] | None) -> tuple[DemoConfig, bool, list[str]]:
    p = argparse.ArgumentParser(prog="python -m drqa_plugin.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--processes", type=int, default=2, help="CPU training processes (DDP over gloo)")
    p.add_argument("--skip-training", action="store_true", help="reuse OUTPUT_DIR/model.safetensors")
    p.add_argument("--quality-model", default="runs/quality_cpu/model.safetensors",  # the recipe's output_dir
                   help="also show the table of this model (made by recipes/configs/quality_cpu.yaml) when it exists")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of recipes/configs/demo.yaml")
    a = p.parse_args(argv)
    cfg = DemoConfig(Path(a.output_dir).resolve(), a.processes, crop=192, scale=4, photos=4,
                     quality_model=Path(a.quality_model).resolve())
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

    data_cfg = load_config(DEMO_CONFIG).data
    val = build_dataset(data_cfg, "val")
    return [(p.name, read_rgb(p.path)) for p in list(getattr(val, "photos"))[:n]]  # noqa: B009  (SyntheticPairs)


def bank_val_photos(bank: Path, n: int) -> list[tuple[str, np.ndarray]] | None:
    """The bundled photos a restoration bank held out of training (None without a finished bank)."""
    from drqa_plugin.data import list_photos, read_rgb
    from drqa_plugin.data.bank import load_manifest
    from drqa_plugin.errors import DataError

    try:
        manifest = load_manifest(bank)
    except DataError:
        return None
    names = sorted({i.photo for i in manifest.items if i.split == "val"})
    by_name = {p.name: p for p in list_photos(None)}
    return [(name, read_rgb(by_name[name].path)) for name in names[:n] if name in by_name] or None


def _center_crop(x: np.ndarray, size: int) -> np.ndarray:
    h, w = x.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"photo of {w}x{h} is smaller than the {size} px demo crop")
    top, left = (h - size) // 2, (w - size) // 2
    return x[top:top + size, left:left + size]


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return to_float_batch(img)[0]


@dataclass
class HeldOutTable:
    """Scores of every restoration method on every held-out photo, by a model and by an FR label."""

    photos: list[str]
    dr: dict[str, list[float]]  # method -> the model's DR score per photo
    fr: dict[str, list[float]]  # method -> the full-reference label per photo
    psnr_in: dict[str, list[float]]  # method -> PSNR of the output against its degraded input, per photo


def score_held_out(cfg: DemoConfig, weights: Path, label: str, tile: int | None,
                   photos: list[tuple[str, np.ndarray]] | None = None) -> HeldOutTable:
    from drqa_plugin.baselines import psnr
    from drqa_plugin.data import get_labeller
    from drqa_plugin.scorer import DRIQA

    # Tiles of the training crop size cover each image where the model only ever saw that scale.
    scorer = DRIQA(weights, preprocess="tiles", tile_size=tile) if tile else DRIQA(weights, preprocess="none")
    labeller = get_labeller(label)
    methods = restorations(cfg.scale)
    photos = photos or held_out_photos(cfg.photos)
    table = HeldOutTable([n for n, _ in photos], {m: [] for m in methods}, {m: [] for m in methods},
                         {m: [] for m in methods})
    for _, rgb in photos:
        gt = _pil(_center_crop(rgb, cfg.crop))
        low = _jpeg(_resize(gt, (cfg.crop // cfg.scale,) * 2, Image.Resampling.BOX), quality=60)
        ref = _resize(low, gt.size, Image.Resampling.BICUBIC)  # the degraded reference: what the restorer was given
        outs = {m: f(low, ref, gt) for m, f in methods.items()}
        restored = torch.stack([_to_tensor(o) for o in outs.values()])
        scores = scorer(list(restored), [_to_tensor(ref)] * len(outs))
        labels = labeller(restored, _to_tensor(gt)[None].expand_as(restored))
        ref_array = np.asarray(ref, dtype=np.float64) / 255.0
        for i, m in enumerate(outs):
            table.dr[m].append(float(scores[i]))
            table.fr[m].append(float(labels[i]))
            table.psnr_in[m].append(psnr(np.asarray(outs[m], dtype=np.float64) / 255.0, ref_array))
    return table


def format_held_out(cfg: DemoConfig, table: HeldOutTable, label_title: str) -> str:
    from drqa_plugin.metrics import correlate

    methods = list(table.dr)
    width = max(len(m) for m in methods) + 2
    head = (f"{'method':<{width}}" + "".join(f"{n[:11]:>12}" for n in table.photos)
            + f"{'mean DR':>10}{label_title:>{max(11, len(label_title) + 2)}}")
    lines = [head, "-" * len(head)]
    for m in sorted(methods, key=lambda k: -np.mean(table.dr[k])):
        lines.append(f"{m:<{width}}" + "".join(f"{s:12.4f}" for s in table.dr[m])
                     + f"{np.mean(table.dr[m]):10.4f}{np.mean(table.fr[m]):{max(11, len(label_title) + 2)}.4f}")
    rank = srcc([float(np.mean(table.dr[m])) for m in methods], [float(np.mean(table.fr[m])) for m in methods])
    # Per photo: does the model order the restorations of one input like the label does? Next to the
    # baseline that needs no model at all (PSNR of the output against its degraded input).
    flat = [(m, k) for m in methods for k in range(len(table.photos))]
    label_values = [table.fr[m][k] for m, k in flat]
    groups = [k for _, k in flat]
    model_per_photo = correlate([table.dr[m][k] for m, k in flat], label_values, groups).grouped_srcc
    psnr_per_photo = correlate([table.psnr_in[m][k] for m, k in flat], label_values, groups).grouped_srcc
    lines.append(f"\nDR score = the trained model's degraded-reference score of each restoration, given only the "
                 f"degraded input (x{cfg.scale} down, JPEG q60, bicubic up) as reference; higher is better.")
    lines.append(f"{label_title} = full-reference label against the pristine crop. "
                 f"Rank agreement of the two method means (Spearman): {rank:+.2f}")
    lines.append(f"Per photo (SRCC over the methods, mean over photos): model {model_per_photo:+.2f}; "
                 f"baseline PSNR of the output vs its input {psnr_per_photo:+.2f}")
    return "\n".join(lines)


def score_table(cfg: DemoConfig, weights: Path) -> str:
    """The demo model's table next to SSIM, the label it was trained on."""
    table = score_held_out(cfg, weights, "ssim", tile=load_config(DEMO_CONFIG).data.crop)
    return format_held_out(cfg, table, "SSIM (FR)")


def quality_table(cfg: DemoConfig, weights: Path, bank: Path) -> str:
    """The same table for a model trained by recipes/configs/quality_cpu.yaml, next to its labeller,
    on the photos its bank held out (the demo's own held-out photos may be in that bank's training split)."""
    photos = bank_val_photos(bank, cfg.photos)
    note = (f"photos held out of the bank {bank}" if photos else
            f"the demo's held-out photos (no bank at {bank}: they may have been in this model's training data)")
    try:
        label, table = "stlpips_alex", score_held_out(cfg, weights, "stlpips_alex", None, photos)
    except ImportError:  # the optional stlpips-pytorch is not installed
        label, table = "ssim", score_held_out(cfg, weights, "ssim", None, photos)
    title = "ST-LPIPS (FR)" if label == "stlpips_alex" else "SSIM (FR)"
    return f"Photos: {note}.\n" + format_held_out(cfg, table, title)


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
    if cfg.quality_model.is_file():
        print(f"\nThe same photos scored by the model that recipes/configs/quality_cpu.yaml trained "
              f"({cfg.quality_model}; restoration bank, ST-LPIPS labels, about 15 minutes of training on 2 cores), "
              "not the demo's:\n")
        print(quality_table(cfg, cfg.quality_model, Path(load_config(QUALITY_CONFIG).data.root or "")))
    else:
        print(f"\n(No {cfg.quality_model}: train recipes/configs/quality_cpu.yaml, see docs/quality.md, "
              "to see a model that ranks real restorations next to this one.)")
    print("\nOutputs:\n" + where(cfg))
    print(f"\nScore your own pairs:  drqa score --weights {weights} --restored IMG_OR_DIR --degraded IMG_OR_DIR")
    print("\n" + DISCLAIMER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
