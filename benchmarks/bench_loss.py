"""Extra cost per SR training iteration: DRIQALoss vs BasicSR's VGG19 PerceptualLoss.

Both losses get the same generator output (batch x 3 x size x size, requires grad)
and are timed forward + backward (the gradient reaches the output, as in training;
neither loss network's parameters get gradients). DRIQALoss also gets the LQ batch
(size / scale). The VGG19 has random weights: BasicSR loads VGG19 from
``basicsr.archs.vgg_arch.VGG_PRETRAIN_PATH`` when that file exists (otherwise it
downloads), so a randomly initialised torchvision VGG19 is saved there in a
temporary folder first. Weights do not change the amount of work.

    python benchmarks/bench_loss.py                    # batch 8, 128 px output, x4, CPU
    python benchmarks/bench_loss.py --device cuda --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drqa_plugin.integrations.basicsr._compat import import_basicsr  # noqa: E402

import_basicsr()  # BasicSR 1.4.2 needs its torchvision shim before the first import
from drqa_plugin import create_model
from drqa_plugin.loss import DRIQALoss
from benchmarks.common import machine_description  # noqa: E402

VARIANTS = {
    "fp32": {},
    "fp32+channels_last": {"channels_last": True},
    "bf16": {"precision": "bf16"},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
}


@dataclass(frozen=True)
class BenchConfig:
    batch: int = 8
    size: int = 128
    scale: int = 4
    repeats: int = 5
    warmup: int = 2
    device: str = "cpu"


def describe_machine() -> str:
    try:
        import basicsr

        return f"{machine_description()}, basicsr {basicsr.__version__}"
    except (ImportError, AttributeError):
        return machine_description()


@contextmanager
def random_vgg19_file() -> Iterator[Path]:
    """Point BasicSR's VGG loader at a randomly initialised VGG19 (nothing is downloaded).

    The classifier (unused by the perceptual loss, 400 MB of weights) is stored as an
    expanded zero tensor, so the file holds only the convolutional weights.
    """
    from basicsr.archs import vgg_arch
    from torchvision.models import vgg19

    state = vgg19(weights=None).state_dict()
    for key, value in state.items():
        if key.startswith("classifier."):
            state[key] = torch.zeros(1, dtype=value.dtype).expand(value.shape)
    old_path = vgg_arch.VGG_PRETRAIN_PATH
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vgg19_random.pth"
        torch.save(state, path)
        vgg_arch.VGG_PRETRAIN_PATH = str(path)
        try:
            yield path
        finally:
            vgg_arch.VGG_PRETRAIN_PATH = old_path


def build_perceptual_loss(device: str) -> torch.nn.Module:
    """ESRGAN's perceptual loss: VGG19 conv5_4 features, L1, weight 1."""
    from basicsr.losses import build_loss

    with random_vgg19_file(), warnings.catch_warnings():
        # BasicSR 1.4.2 still passes torchvision's deprecated `pretrained=` argument.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")
        loss = build_loss(
            {
                "type": "PerceptualLoss",
                "layer_weights": {"conv5_4": 1.0},
                "vgg_type": "vgg19",
                "use_input_norm": True,
                "range_norm": False,
                "perceptual_weight": 1.0,
                "style_weight": 0.0,
                "criterion": "l1",
            }
        )
    return loss.to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_once(step: Callable[[torch.Tensor], torch.Tensor], output: torch.Tensor, device: str) -> float:
    output.grad = None
    sync(device)
    start = time.perf_counter()
    step(output).backward()
    sync(device)
    seconds = time.perf_counter() - start
    assert output.grad is not None and torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    return seconds


def time_round_robin(
    steps: dict[str, Callable[[torch.Tensor], torch.Tensor]], output: torch.Tensor, cfg: BenchConfig
) -> dict[str, float]:
    """Median seconds of ``step(output).backward()`` per step.

    The steps take turns within every repeat, so load from other processes on a shared
    machine hits all of them alike and the ratios stay meaningful.
    """
    for step in steps.values():
        for _ in range(cfg.warmup):
            time_once(step, output, cfg.device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(cfg.repeats):
        for name, step in steps.items():
            times[name].append(time_once(step, output, cfg.device))
    return {name: statistics.median(values) for name, values in times.items()}


def run(cfg: BenchConfig, variants: list[str]) -> dict[str, float]:
    torch.manual_seed(0)
    lq_size = cfg.size // cfg.scale
    output = torch.rand(cfg.batch, 3, cfg.size, cfg.size, device=cfg.device, requires_grad=True)
    gt = torch.rand(cfg.batch, 3, cfg.size, cfg.size, device=cfg.device)
    lq = torch.rand(cfg.batch, 3, lq_size, lq_size, device=cfg.device)

    perceptual = build_perceptual_loss(cfg.device)
    steps: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"vgg19_perceptual": lambda x: perceptual(x, gt)[0]}
    network = create_model("ckdn_r50")  # random weights: the work is the same as trained ones
    for name in variants:
        loss = DRIQALoss(network, **VARIANTS[name]).to(cfg.device)
        steps[f"driqa[{name}]"] = lambda x, loss=loss: loss(x, lq)
    return time_round_robin(steps, output, cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="output (GT) patch size")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    cfg = BenchConfig(args.batch, args.size, args.scale, args.repeats, args.warmup, args.device)

    print(describe_machine())
    print(
        f"batch {cfg.batch}, output {cfg.size}x{cfg.size}, LQ {cfg.size // cfg.scale}x{cfg.size // cfg.scale} "
        f"(x{cfg.scale}), forward+backward to the output, "
        f"median of {cfg.repeats} (losses take turns) after {cfg.warmup} warm-up"
    )
    results = run(cfg, args.variants)
    vgg = results["vgg19_perceptual"]
    print(f"{'loss':<28} {'ms/iter':>9} {'x VGG19':>8}")
    for name, seconds in results.items():
        print(f"{name:<28} {seconds * 1e3:9.1f} {seconds / vgg:8.3f}")


if __name__ == "__main__":
    main()
