"""Extra cost per traiNNer-redux SR training iteration: DR-IQA vs traiNNer-redux's own perceptual loss.

One traiNNer-redux ``SRModel`` (our ``DRIQASRModel``, built by traiNNer's own
``build_model``) with its Compact generator (64 features, 16 convolutions, x4) runs
its own ``optimize_parameters`` (forward, losses, backward, AdamW step) on a batch of
8 LQ 32 px / GT 128 px pairs, once with Charbonnier alone (the base) and once with
each extra term added: traiNNer-redux's ``perceptualloss`` (VGG19, its default
criterion and layers) and ``driqaloss`` in several settings. The configurations take
turns in every repeat, so load from other processes hits them alike; the extra cost
of a term is its configuration's time minus the base's, from the median and the fastest
wall times and from the median CPU time (on a shared machine the fastest wall time and
the CPU time of a one-thread run, ``--threads 1``, are the least disturbed).

traiNNer-redux's perceptual loss builds ``torchvision.models.vgg19(weights=DEFAULT)``;
a randomly initialised VGG19 is put in a temporary torch hub cache first, so nothing
is downloaded (weights do not change the amount of work). DR-IQA runs a random CKDN
for the same reason.

    python benchmarks/bench_trainner_loss.py --trainner ~/traiNNer-redux
    python benchmarks/bench_trainner_loss.py --repeats 9 --batch 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import fastest_call, machine_description  # noqa: E402
from drqa_plugin import create_model, save_model  # noqa: E402

DRIQA_VARIANTS = {
    "fp32": {},
    "fp32+channels_last": {"channels_last": True},
    "bf16": {"precision": "bf16"},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
}
DEFAULT_TRAINNER = os.environ.get(
    "TRAINNER_REDUX_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "vendor" / "traiNNer-redux"))


@dataclass(frozen=True)
class BenchConfig:
    batch: int = 8
    size: int = 128
    scale: int = 4
    repeats: int = 5
    warmup: int = 1


@contextmanager
def random_vgg19_in_hub_cache() -> Iterator[Path]:
    """A randomly initialised VGG19 where torchvision looks for its DEFAULT weights (a temporary hub dir)."""
    from torchvision.models import VGG19_Weights, vgg19

    state = vgg19(weights=None).state_dict()
    for key, value in state.items():  # the classifier is unused by the loss: store no 400 MB of it
        if key.startswith("classifier."):
            state[key] = torch.zeros(1, dtype=value.dtype).expand(value.shape)
    old = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = Path(tmp) / "checkpoints"
        checkpoints.mkdir()
        torch.save(state, checkpoints / Path(VGG19_Weights.DEFAULT.url).name)
        torch.hub.set_dir(tmp)
        try:
            yield checkpoints
        finally:
            torch.hub.set_dir(old)


def trainner_options(cfg: BenchConfig) -> Any:
    """ReduxOptions as traiNNer-redux's option parser leaves them for a CPU training run."""
    import msgspec
    from traiNNer.utils.redux_options import ReduxOptions

    raw = {
        "name": "bench_driqa",
        "scale": cfg.scale,
        "num_gpu": 0,
        "use_amp": False,
        "path": {},
        "datasets": {"train": {"name": "bench", "type": "pairedimagedataset", "lq_size": cfg.size // cfg.scale,
                               "batch_size_per_gpu": cfg.batch}},
        "network_g": {"type": "compact", "num_feat": 64, "num_conv": 16},
        "train": {
            "ema_decay": 0,
            "optim_g": {"type": "AdamW", "lr": 1e-4, "weight_decay": 0, "betas": [0.9, 0.99]},
            "scheduler": {"type": "MultiStepLR", "milestones": [100000], "gamma": 0.5},
            "total_iter": 100000,
            "warmup_iter": -1,
            "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}],
        },
    }
    opt = msgspec.convert(raw, type=ReduxOptions)
    opt.is_train, opt.dist, opt.rank, opt.world_size, opt.manual_seed = True, False, 0, 1, 0
    opt.datasets["train"].phase, opt.datasets["train"].scale = "train", cfg.scale
    return opt


def run(cfg: BenchConfig, trainner: Path, variants: list[str]) -> dict[str, tuple[float, float, float]]:
    """(median, fastest) wall seconds and median CPU seconds (all threads) per iteration, per configuration."""
    from drqa_plugin.integrations.trainner import register

    register(trainner)
    from traiNNer.losses import build_loss

    from drqa_plugin.integrations.trainner.models import build_model

    torch.manual_seed(0)
    model = build_model(trainner_options(cfg))
    base = dict(model.losses)  # {"l_g_charbonnier": ...}
    configs: dict[str, dict[str, torch.nn.Module]] = {"base (charbonnier)": base}
    with random_vgg19_in_hub_cache(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        configs["+ perceptualloss (VGG19)"] = {
            **base, "l_g_perceptual": build_loss({"type": "perceptualloss", "loss_weight": 0.03})
        }
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "ckdn_random.safetensors"
        save_model(create_model("ckdn_r50"), weights, provenance="random weights for benchmarking")
        for name in variants:
            loss = build_loss({"type": "driqaloss", "loss_weight": 0.05, "weights": str(weights), **DRIQA_VARIANTS[name]})
            loss.bind_reference(model)
            configs[f"+ driqaloss [{name}]"] = {**base, "l_g_driqa": loss}

    lq_size = cfg.size // cfg.scale
    batch = {"lq": torch.rand(cfg.batch, 3, lq_size, lq_size), "gt": torch.rand(cfg.batch, 3, cfg.size, cfg.size)}
    step = {"i": 0}

    def iteration(losses: dict[str, torch.nn.Module]) -> Callable[[], None]:
        def call() -> None:
            step["i"] += 1
            model.losses = losses
            model.feed_data(batch)
            model.optimize_parameters(step["i"], 0, True)
            model.reset_current_log()

        return call

    calls = {name: iteration(losses) for name, losses in configs.items()}
    for call in calls.values():
        for _ in range(cfg.warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    cpu_times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(cfg.repeats):
        for name, call in calls.items():
            cpu_start = time.process_time()
            times[name].append(fastest_call(call, calls=1, warmup=0))
            cpu_times[name].append(time.process_time() - cpu_start)
    return {
        name: (statistics.median(times[name]), min(times[name]), statistics.median(cpu_times[name]))
        for name in calls
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainner", default=DEFAULT_TRAINNER, help="traiNNer-redux checkout ($TRAINNER_REDUX_DIR)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="output (GT) patch size")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--variants", nargs="+", default=list(DRIQA_VARIANTS), choices=list(DRIQA_VARIANTS))
    args = parser.parse_args()
    cfg = BenchConfig(args.batch, args.size, args.scale, args.repeats, args.warmup)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = run(cfg, Path(args.trainner), args.variants)
    print(f"{machine_description()}; traiNNer-redux at {args.trainner}")
    print(
        f"traiNNer-redux SRModel.optimize_parameters, Compact x{cfg.scale} (64 feat, 16 conv), batch {cfg.batch}, "
        f"LQ {cfg.size // cfg.scale} px -> {cfg.size} px, median of {cfg.repeats} (configurations take turns) "
        f"after {cfg.warmup} warm-up"
    )
    base = results["base (charbonnier)"]
    percep = [t - b for t, b in zip(results["+ perceptualloss (VGG19)"], base)]
    print("extra: the configuration minus the base, from the median wall time, the fastest wall time and the "
          "median CPU time (all threads); x: relative to the perceptual loss's extra")
    columns = ("median", "fastest", "CPU")
    print(f"{'configuration':<34} " + " ".join(f"{c + ' ms':>11}" for c in columns) + "  "
          + " ".join(f"{'extra ' + c:>13} {'x':>6}" for c in columns))
    for name, values in results.items():
        row = f"{name:<34} " + " ".join(f"{v * 1e3:11.1f}" for v in values) + "  "
        if name != "base (charbonnier)":
            row += " ".join(f"{(v - b) * 1e3:13.1f} {(v - b) / p:6.3f}" for v, b, p in zip(values, base, percep))
        print(row)

if __name__ == "__main__":
    main()
