"""A probe, not a product: can a dozen hand-made image statistics of a (restored, degraded input) pair,
weighted by a ranker trained on a restoration bank's within-input order, order the restorations of
inputs it never saw?

The statistics are classic degraded-reference cues, all on luma except the residual energies:
sharpness of the output and of the input (Tenengrad, at full and half resolution), the noise level of
each (Donoho's median estimate on the finest diagonal Haar band), the residual's energy split into
coarse (colour and brightness shifts) and fine (removed noise or detail) parts, how much the residual
follows the input's edges (over-smoothing removes edges, good denoising removes noise), gradient
similarity of output and input (GMSD's), and pixel-grid blockiness (nearest-neighbour upscaling). A
linear scorer or a small MLP over the standardised statistics is trained with the RankNet cross-entropy
over every pair of restorations of one training input (the probe's ``listwise`` objective), in seconds.

Where CKDN and the CNN probe learn a method's look, a scorer over these statistics can only learn how
sharp, noisy, smooth or blocky an output is relative to its input, so this tells whether such cues,
trained on the bank, carry the per-input order to new photos (docs/quality.md, "Twelve image statistics").
Measured: they do not (0.50 and 0.23 per input on the two held-out sets, and 0.56 and 0.42 when fitted
on those sets' own other photos with ``--leave-one-photo-out``; the method prior 0.53 and 0.47). Its
printout puts each evaluation set next to its method prior and sharpness rows, and with ``--weights``
next to a CKDN model and the two's mean rank inside each input::

    python benchmarks/quality_stats_ranker.py --bank runs/bank_skimage --eval runs/bank_skimage:val \\
        --eval runs/heldout/bank:val [--leave-one-photo-out] [--weights W] [--train-method NAME ...] [--scorer mlp]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine_description  # noqa: E402
from benchmarks.quality_rank_probe import Input, listwise_loss, load_inputs, print_tables  # noqa: E402
from drqa_plugin.baselines import bank_baselines, luma, sobel_energy  # noqa: E402
from drqa_plugin.data.bank import BankManifest, load_manifest  # noqa: E402

STATISTICS = ("sharpness out", "sharpness in", "sharpness out, half res", "sharpness in, half res",
              "noise out", "noise in", "residual coarse", "residual fine", "residual on input edges",
              "gradient similarity", "blockiness out", "blockiness in")
EPS = 1e-8


def _noise_sigma(y: Tensor) -> Tensor:
    """Donoho's estimate: median |finest diagonal Haar coefficient| / 0.6745, per image."""
    h, w = y.shape[2] // 2 * 2, y.shape[3] // 2 * 2
    y = y[:, :, :h, :w]
    diagonal = (y[:, :, 0::2, 0::2] - y[:, :, 0::2, 1::2] - y[:, :, 1::2, 0::2] + y[:, :, 1::2, 1::2]) / 2
    return diagonal.abs().flatten(1).median(dim=1).values / 0.6745


def _blockiness(y: Tensor) -> Tensor:
    """How unevenly the horizontal and vertical pixel steps fall on the phases of a 2- and 4-pixel grid:
    log(largest phase's mean squared step / mean over phases), averaged; 0 for an image with no grid."""
    out = []
    for steps in (y[:, 0, :, 1:] - y[:, 0, :, :-1], (y[:, 0, 1:, :] - y[:, 0, :-1, :]).transpose(1, 2)):
        energy = steps.pow(2).mean(1)  # (N, W-1): per column of steps
        for period in (2, 4):
            usable = energy.shape[1] // period * period
            phases = energy[:, :usable].reshape(len(energy), -1, period).mean(1)
            out.append(torch.log((phases.max(1).values + EPS) / (phases.mean(1) + EPS)))
    return torch.stack(out, 1).mean(1)


def statistics(restored: Tensor, degraded: Tensor) -> Tensor:
    """The (N, len(STATISTICS)) statistics of uint8 (N,3,H,W) restored images against their inputs (same size)."""
    r, d = restored.float() / 255, degraded.float() / 255
    yr, yd = luma(r), luma(d)
    er, ed = sobel_energy(yr), sobel_energy(yd)
    half = (sobel_energy(F.avg_pool2d(yr, 2)), sobel_energy(F.avg_pool2d(yd, 2)))
    blur = (F.avg_pool2d(r, 4), F.avg_pool2d(d, 4))
    residual = r - d
    coarse = (blur[0] - blur[1]).pow(2).flatten(1).mean(1)
    fine = (residual - F.interpolate(blur[0] - blur[1], size=r.shape[2:], mode="nearest")).pow(2).flatten(1).mean(1)
    local_residual = F.avg_pool2d(luma(residual).pow(2), 8).flatten(1)
    local_edges = F.avg_pool2d(ed, 8).flatten(1)
    lr, le = local_residual - local_residual.mean(1, keepdim=True), local_edges - local_edges.mean(1, keepdim=True)
    on_edges = (lr * le).mean(1) / (lr.pow(2).mean(1).sqrt() * le.pow(2).mean(1).sqrt() + EPS)
    gr, gd = er.sqrt(), ed.sqrt()
    c = 0.0026 * 16  # GMSD's constant for [0, 1] images, times Sobel's gain
    similarity = ((2 * gr * gd + c) / (er + ed + c)).flatten(1).mean(1)
    columns = [
        torch.log(er.flatten(1).mean(1) + EPS), torch.log(ed.flatten(1).mean(1) + EPS),
        torch.log(half[0].flatten(1).mean(1) + EPS), torch.log(half[1].flatten(1).mean(1) + EPS),
        torch.log(_noise_sigma(yr) + 1e-4), torch.log(_noise_sigma(yd) + 1e-4),
        torch.log(coarse + EPS), torch.log(fine + EPS), on_edges, similarity,
        _blockiness(yr), _blockiness(yd),
    ]
    return torch.stack(columns, 1)


def input_statistics(inputs: list[Input]) -> list[Tensor]:
    return [statistics(x.restored, x.degraded.expand(len(x.restored), -1, -1, -1)) for x in inputs]


def make_scorer(kind: str, width: int) -> nn.Module:
    n = len(STATISTICS)
    if kind == "linear":
        return nn.Linear(n, 1)
    return nn.Sequential(nn.Linear(n, width), nn.Tanh(), nn.Linear(width, 1))


def only_methods(inputs: list[Input], bank: Path, methods: set[str]) -> list[Input]:
    """The training inputs with only the named restorers' outputs; inputs left with fewer than two are dropped."""
    items = load_manifest(bank).split_items("train")
    unknown = methods - {i.method for i in items}
    if unknown:
        raise SystemExit(f"no restorations by {sorted(unknown)} in {bank}'s train split")
    out = []
    for x in inputs:
        keep = [k for k, r in enumerate(x.rows) if items[r].method in methods]
        if len(keep) >= 2:
            out.append(Input(x.restored[keep], x.degraded, x.labels[keep], x.task, [x.rows[k] for k in keep]))
    return out


def train_scorer(features: list[Tensor], labels: list[Tensor], kind: str, width: int, steps: int,
                 weight_decay: float) -> tuple[nn.Module, Tensor, Tensor]:
    """Full-batch Adam on the RankNet loss over every within-input pair; returns (scorer, mean, std)."""
    x = torch.cat(features)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    y = torch.cat(labels)
    group = torch.cat([torch.full((len(f),), k) for k, f in enumerate(features)])
    scorer = make_scorer(kind, width)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=0.01, weight_decay=weight_decay)
    for _ in range(steps):
        loss = listwise_loss(scorer(x).squeeze(1), y, group)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return scorer, mean, std


def leave_one_photo_out(inputs: list[Input], features: list[Tensor], photos: list[str], args: argparse.Namespace,
                        size: int) -> np.ndarray:
    """Scores of every pair by a ranker trained on the same split's inputs of the other photos."""
    out = np.full(size, np.nan)
    for photo in sorted(set(photos)):
        train = [k for k, p in enumerate(photos) if p != photo]
        scorer, mean, std = train_scorer([features[k] for k in train], [inputs[k].labels for k in train],
                                         args.scorer, args.width, args.steps, args.weight_decay)
        with torch.no_grad():
            for k in (k for k, p in enumerate(photos) if p == photo):
                out[inputs[k].rows] = scorer((features[k] - mean) / std).squeeze(1).numpy()
    return out


def model_scores(weights: str, manifest: BankManifest, split: str) -> np.ndarray:
    """A DR-IQA model's score of every pair of a bank split, whole images, as the held-out benchmark scores them."""
    from drqa_plugin.scorer import DRIQA

    root = Path(manifest.out_dir)
    items = manifest.split_items(split)
    return DRIQA(weights, preprocess="none")([root / i.name for i in items], [root / i.reference for i in items]).numpy()


def mean_rank_in_group(predictions: list[np.ndarray], groups: list) -> np.ndarray:
    """Each prediction's rank inside its group, scaled to [0, 1], averaged over the predictions: an
    ensemble for per-input orders (its global figures mean nothing)."""
    from scipy.stats import rankdata

    out = np.zeros(len(groups))
    keys = np.asarray([str(g) for g in groups])
    for key in set(keys):
        idx = np.flatnonzero(keys == key)
        for values in predictions:
            out[idx] += (rankdata(values[idx]) - 1) / max(len(idx) - 1, 1) / len(predictions)
    return out


def evaluate(spec: str, trained: tuple[nn.Module, Tensor, Tensor], args: argparse.Namespace) -> None:
    """Print the ranker's rows for one ``BANK:SPLIT`` next to its baselines, overall and per task."""
    bank, split = Path(spec.rsplit(":", 1)[0]), spec.rsplit(":", 1)[1]
    scorer, mean, std = trained
    manifest = load_manifest(bank)
    inputs = load_inputs(bank, split)
    features = input_statistics(inputs)
    baselines, targets, groups = bank_baselines(manifest, split=split, psnr_input=False)
    ranker = np.full(len(targets), np.nan)
    tasks = [""] * len(targets)
    with torch.no_grad():
        for x, f in zip(inputs, features):
            ranker[x.rows] = scorer((f - mean) / std).squeeze(1).numpy()
            for r in x.rows:
                tasks[r] = x.task
    keep = [r for x in inputs for r in x.rows]
    rows = {f"statistics ranker ({args.scorer})": ranker[keep]}
    if args.leave_one_photo_out:
        items = manifest.split_items(split)
        photos = [items[x.rows[0]].photo for x in inputs]
        inside = leave_one_photo_out(inputs, features, photos, args, len(targets))
        rows[f"statistics ranker ({args.scorer}), trained on this split's other photos"] = inside[keep]
    for weights in args.weights:
        model = model_scores(weights, manifest, split)
        rows[f"model {weights}"] = model[keep]
        rows[f"model {weights} + ranker (mean rank in input)"] = mean_rank_in_group(
            [model[keep], ranker[keep]], [groups[r] for r in keep])
    rows.update({k: np.asarray(v)[keep] for k, v in baselines.items()})
    print_tables(spec, np.asarray(targets)[keep], [groups[r] for r in keep], [tasks[r] for r in keep], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bank", type=Path, required=True, help="restoration bank to train on (its train split)")
    p.add_argument("--eval", action="append", default=[], metavar="BANK:SPLIT", help="bank split(s) to score")
    p.add_argument("--scorer", choices=("linear", "mlp"), default="linear")
    p.add_argument("--width", type=int, default=16, help="hidden units of the MLP scorer")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blends", action="store_true", help="also train on the bank's blends (method 'blend')")
    p.add_argument("--train-method", action="append", default=[], metavar="NAME",
                   help="train only on these restorers' outputs (repeatable; e.g. the judged set's restorers)")
    p.add_argument("--leave-one-photo-out", action="store_true",
                   help="also train the ranker on each evaluated split itself, leaving out the photo it scores "
                        "(the cues' ceiling on that kind of input, as the method prior is the methods')")
    p.add_argument("--weights", action="append", default=[], metavar="W",
                   help="also score with this DR-IQA model, alone and averaged with the ranker (repeatable)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    print(f"machine: {machine_description()}")
    start = time.perf_counter()
    train = load_inputs(args.bank, "train", args.blends)
    if args.train_method:
        train = only_methods(train, args.bank, set(args.train_method))
    train_features = input_statistics(train)
    scorer, mean, std = train_scorer(train_features, [x.labels for x in train], args.scorer, args.width,
                                     args.steps, args.weight_decay)
    print(f"trained a {args.scorer} scorer on {len(train)} inputs ({sum(len(x.restored) for x in train)} "
          f"restorations) of {args.bank} in {time.perf_counter() - start:.0f} s, seed {args.seed}")
    if args.scorer == "linear":
        weights = scorer.weight.detach()[0]
        print("weights (per standard deviation of each statistic):")
        for name, w in sorted(zip(STATISTICS, weights.tolist()), key=lambda t: -abs(t[1])):
            print(f"  {w:+.3f}  {name}")

    for spec in args.eval:
        evaluate(spec, (scorer, mean, std), args)

if __name__ == "__main__":
    main()
