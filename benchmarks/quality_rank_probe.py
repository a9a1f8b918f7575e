"""A probe, not a product: how well can a *tiny* degraded-reference network order the restorations of
one input when it is trained on exactly that, the order inside each input of a restoration bank?

Every step takes a few training inputs of the bank and *all* their restorations at one shared random
crop, scores each (restored, degraded input) crop with a six-layer convolutional network (early
fusion of restored, input and their difference; ~38k parameters at width 16), and minimises the
RankNet cross-entropy over every pair of restorations of the same input (``--loss listwise``), or,
for comparison, the squared error to the standardised labels (``--loss pointwise``: what CKDN's
student term d1 does). ``--no-reference`` gives the network the restored crop alone. Whole images
are scored at evaluation (the network is fully convolutional; mean and RMS pooling).

It separates the objective from the network (docs/quality.md, "A ranking probe"): the same tiny
network trained pointwise learns the method order and little else; trained listwise it matches the
recipe on the held-out photos and passes it on the bank's own val photos. Its printout puts each
evaluation set next to its method prior and sharpness rows::

    python benchmarks/quality_rank_probe.py --bank runs/bank_skimage --eval runs/bank_skimage:val \\
        --eval runs/heldout/bank:val [--loss pointwise] [--no-reference] [--steps 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine_description  # noqa: E402
from drqa_plugin.baselines import bank_baselines, format_table, score_rows  # noqa: E402
from drqa_plugin.data.bank import load_manifest  # noqa: E402
from drqa_plugin.data.photos import read_rgb  # noqa: E402


@dataclass
class Input:
    """One degraded input of a bank with all its restorations, as uint8 NCHW tensors in memory."""

    restored: Tensor  # (K, 3, H, W)
    degraded: Tensor  # (3, H, W): the bank's reference at the restored size
    labels: Tensor  # (K,)
    task: str
    rows: list[int]  # the restorations' positions in the bank split's item list


def load_inputs(bank: Path, split: str, blends: bool = False) -> list[Input]:
    manifest = load_manifest(bank)
    root = Path(manifest.out_dir)
    groups: dict[str, list[int]] = {}
    items = manifest.split_items(split)
    for row, item in enumerate(items):
        if blends or item.method != "blend":
            groups.setdefault(item.input_id, []).append(row)
    if not groups:
        raise SystemExit(f"{bank} has no items in split {split!r}")

    def chw(path: Path) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(read_rgb(path).transpose(2, 0, 1)))

    return [Input(torch.stack([chw(root / items[r].name) for r in rows]), chw(root / items[rows[0]].reference),
                  torch.tensor([items[r].label for r in rows], dtype=torch.float32), items[rows[0]].task, rows)
            for rows in groups.values()]


class RankProbe(nn.Module):
    """Six 3x3 convolutions (two at full resolution) over [restored, input, restored - input],
    mean and RMS pooled, a two-layer head: an unbounded score, higher = better."""

    def __init__(self, width: int = 16, reference: bool = True) -> None:
        super().__init__()
        self.reference = reference
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(9 if reference else 3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(4 * w, 2 * w), nn.ReLU(), nn.Linear(2 * w, 1))

    def forward(self, restored: Tensor, degraded: Tensor) -> Tensor:
        r = restored.float() / 255 - 0.5
        d = degraded.float() / 255 - 0.5
        f = self.body(torch.cat([r, d, r - d], 1) if self.reference else r)
        return self.head(torch.cat([f.mean((2, 3)), f.pow(2).mean((2, 3)).sqrt()], 1)).squeeze(1)


def batch_of(inputs: list[Input], chosen: np.ndarray, crop: int, rng: np.random.Generator
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All restorations of the chosen inputs, each input at one random crop (shared by its restorations)."""
    restored, degraded, labels, group = [], [], [], []
    for k, index in enumerate(chosen):
        x = inputs[index]
        h, w = x.degraded.shape[1:]
        top, left = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        n = len(x.restored)
        restored.append(x.restored[:, :, top:top + crop, left:left + crop])
        degraded.append(x.degraded[None, :, top:top + crop, left:left + crop].expand(n, -1, -1, -1))
        labels.append(x.labels)
        group += [k] * n
    r, d = torch.cat(restored), torch.cat(degraded)
    if rng.random() < 0.5:  # one mirror per step
        r, d = r.flip(3), d.flip(3)
    return r, d, torch.cat(labels), torch.tensor(group)


def listwise_loss(scores: Tensor, labels: Tensor, group: Tensor) -> Tensor:
    """RankNet cross-entropy over every ordered pair of restorations of the same input (ties left out)."""
    same = group[:, None] == group[None, :]
    label_gap = labels[:, None] - labels[None, :]
    pairs = same & (label_gap.abs() > 1e-9)
    return F.binary_cross_entropy_with_logits((scores[:, None] - scores[None, :])[pairs], (label_gap[pairs] > 0).float())


@torch.no_grad()
def scores_of(model: nn.Module, inputs: list[Input]) -> list[np.ndarray]:
    model.eval()
    out = [model(x.restored, x.degraded.expand(len(x.restored), -1, -1, -1)).numpy() for x in inputs]
    model.train()
    return out


def print_tables(title: str, targets: np.ndarray, groups: list, tasks: list[str], rows: dict[str, np.ndarray]
                 ) -> None:
    """Every row's figures against ``targets``, over all pairs and then per task."""
    print(format_table(score_rows(targets, groups, rows), title=f"{title}: all inputs"))
    for task in sorted(set(tasks)):
        idx = [k for k, name in enumerate(tasks) if name == task]
        print(format_table(score_rows(targets[idx], [groups[k] for k in idx], {k: v[idx] for k, v in rows.items()}),
                           title=f"{title}: {task} inputs"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bank", type=Path, required=True, help="restoration bank to train on (its train split)")
    p.add_argument("--eval", action="append", default=[], metavar="BANK:SPLIT", help="bank split(s) to score")
    p.add_argument("--loss", choices=("listwise", "pointwise"), default="listwise")
    p.add_argument("--no-reference", action="store_true", help="score the restored image alone")
    p.add_argument("--blends", action="store_true", help="also train on the bank's blends (method 'blend')")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--inputs-per-step", type=int, default=8)
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", type=Path, default=None, help="write the probe's state dict here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    print(f"machine: {machine_description()}")
    train = load_inputs(args.bank, "train", args.blends)
    evals = {spec: load_inputs(Path(spec.rsplit(":", 1)[0]), spec.rsplit(":", 1)[1]) for spec in args.eval}
    print(f"train: {len(train)} inputs, {sum(len(x.restored) for x in train)} restorations of {args.bank}")

    model = RankProbe(args.width, reference=not args.no_reference)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    all_labels = torch.cat([x.labels for x in train])
    mean, std = all_labels.mean(), all_labels.std()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        chosen = rng.choice(len(train), size=min(args.inputs_per_step, len(train)), replace=False)
        restored, degraded, labels, group = batch_of(train, chosen, args.crop, rng)
        scores = model(restored, degraded)
        loss = (listwise_loss(scores, labels, group) if args.loss == "listwise"
                else F.mse_loss(scores, (labels - mean) / std))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(1, args.steps // 4) == 0:
            print(f"step {step}: loss {float(loss.detach()):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    print(f"trained {args.steps} steps in {seconds:.0f} s ({args.loss}, reference {'off' if args.no_reference else 'on'}, "
          f"width {args.width}, crop {args.crop}, {args.inputs_per_step} inputs per step, seed {args.seed})")
    if args.save is not None:
        torch.save(model.state_dict(), args.save)

    for spec, inputs in evals.items():
        bank, split = spec.rsplit(":", 1)
        baselines, targets, groups = bank_baselines(Path(bank), split=split, psnr_input=False)
        probe = np.full(len(targets), np.nan)
        tasks = [""] * len(targets)
        for x, scores in zip(inputs, scores_of(model, inputs)):
            probe[x.rows] = scores
            for r in x.rows:
                tasks[r] = x.task
        keep = [r for x in inputs for r in x.rows]  # blends are never evaluated
        rows = {"rank probe": probe[keep], **{k: np.asarray(v)[keep] for k, v in baselines.items()}}
        print_tables(spec, np.asarray(targets)[keep], [groups[r] for r in keep], [tasks[r] for r in keep], rows)


if __name__ == "__main__":
    main()
