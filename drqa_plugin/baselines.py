"""Baselines a DR-IQA model must beat, computed on the same pairs as the model.

Each baseline is a vector of predictions (higher = better) that
``drqa_plugin.metrics`` turns into the same global / grouped SRCC, PLCC, KRCC
rows as a model's scores:

* ``method prior (LOSO)``: the mean label of the same restoration method in the
  *other* scenes (leave one scene out). It needs only the method name, and it
  is what "knowing each method's average quality" is worth; a model that does
  not beat it has learned nothing about the images themselves.
* ``PSNR vs input``: PSNR of the restored image against its degraded input
  brought to the restored size (bicubic). No training, no pristine: how far the
  output strays from its input.
* ``sharpness (no reference)`` (:func:`gradient_energy`): the Tenengrad focus measure
  (mean squared Sobel gradient) of the restored image's luma, blind to both references.
  What "sharper is better" is worth: full-reference labellers of the LPIPS family reward
  detail, so on restorers that do not add noise this row can be hard to beat (it is not
  a DR-IQA measure: it prefers an unfiltered noisy input to any denoiser).
* ``model, another input's reference`` (:func:`other_input_references`): the model
  scores each restoration against the degraded input of *another* group. A DR-IQA
  model that orders the restorations of one input as well this way as with the right
  input has not learnt to compare; it only recognises how each output looks.
* :func:`method_ranks`: not a row but a per-method view of any row: each method's
  mean rank inside its group, next to the label's (where a model misorders).
* ``labeller`` (the ceiling): a full-reference labeller against the pristine
  image, where the pristine is available. With the labeller that made the labels
  this is 1.0 by construction; with another one it measures how much the two
  full-reference metrics agree.

Example::

    from drqa_plugin.baselines import compute_baselines, format_table, score_rows
    baselines = compute_baselines(pairs, pristine=pristine_paths, labeller="stlpips_alex")
    rows = score_rows(targets, groups, {"model": preds, **baselines})
    print(format_table(rows))
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from drqa_plugin.data.photos import DataError, read_rgb
from drqa_plugin.metrics import Values, correlate

PSNR_CAP = 100.0  # dB for identical images, so every prediction is finite

METHOD_PRIOR = "method prior (LOSO)"
PSNR_VS_INPUT = "PSNR vs input"
SHARPNESS = "sharpness (no reference)"

ImageLike = Any  # a path, or a uint8 HWC / float [0, 1] HWC array


def method_prior(methods: Sequence[Hashable], targets: Values, scenes: Sequence[Hashable]) -> np.ndarray:
    """Leave-one-scene-out mean target of each pair's method.

    For pair ``i``: the mean of ``targets[j]`` over pairs ``j`` with
    ``methods[j] == methods[i]`` and ``scenes[j] != scenes[i]``. A method seen in no
    other scene falls back to the mean target of all pairs of the other scenes, and
    with a single scene to the mean of all targets (so the prediction is constant and
    carries no information, as it should).
    """
    m, s = list(methods), list(scenes)
    t = np.asarray(targets, dtype=np.float64).reshape(-1)
    if not (len(m) == len(s) == t.size):
        raise DataError(f"methods ({len(m)}), targets ({t.size}) and scenes ({len(s)}) differ in length")
    if t.size == 0:
        raise DataError("method prior of an empty set of pairs")
    if not np.isfinite(t).all():
        raise DataError("targets must be finite (found NaN or inf)")
    if any(x is None or x == "" for x in m):
        raise DataError("every pair needs a method name for the method prior (found an empty one)")
    # Sums per (method, scene) and per scene, so the prior is O(n).
    by_ms: dict[Any, list[float]] = {}
    by_m: dict[Any, list[float]] = {}
    by_s: dict[Any, list[float]] = {}
    for mi, si, ti in zip(m, s, t):
        for table, key in ((by_ms, (mi, si)), (by_m, mi), (by_s, si)):
            acc = table.setdefault(key, [0.0, 0])
            acc[0] += ti
            acc[1] += 1
    total, count = float(t.sum()), t.size
    out = np.empty(t.size)
    for i, (mi, si) in enumerate(zip(m, s)):
        m_sum, m_n = by_m[mi]
        own_sum, own_n = by_ms[(mi, si)]
        if m_n - own_n > 0:
            out[i] = (m_sum - own_sum) / (m_n - own_n)
            continue
        s_sum, s_n = by_s[si]
        out[i] = (total - s_sum) / (count - s_n) if count - s_n > 0 else total / count
    return out


def _as_float(image: ImageLike) -> np.ndarray:
    """float64 HWC RGB in [0, 1] from a path or an array (uint8, or float in [0, 1])."""
    if isinstance(image, (str, os.PathLike)):
        array = read_rgb(image)
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DataError(f"expected an HWC image, got shape {array.shape}")
    array = array[..., :3] if array.shape[2] != 1 else np.repeat(array, 3, axis=2)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    array = array.astype(np.float64)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise DataError("float images must be finite and in [0, 1]")
    return array


def _resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float HWC image (torch, no antialias), clipped to [0, 1]."""
    if image.shape[:2] == size:
        return image
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    out = F.interpolate(t, size=size, mode="bicubic", align_corners=False)
    return out[0].clamp(0, 1).numpy().transpose(1, 2, 0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1] (capped at PSNR_CAP for identical images)."""
    if a.shape != b.shape:
        raise DataError(f"PSNR of images of different shapes {a.shape} and {b.shape}")
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else -10.0 * math.log10(mse)


def psnr_vs_input(restored: Sequence[ImageLike], degraded: Sequence[ImageLike]) -> np.ndarray:
    """PSNR of each restored image against its degraded input, resized (bicubic) to its size.

    The degraded image must have the restored image's aspect ratio (an SR input is
    1/s of the output). Paths or arrays (uint8 or float in [0, 1], HWC RGB).
    """
    if len(restored) != len(degraded):
        raise DataError(f"restored ({len(restored)}) and degraded ({len(degraded)}) differ in length")
    out = np.empty(len(restored))
    for i, (r, d) in enumerate(zip(restored, degraded)):
        r_img, d_img = _as_float(r), _as_float(d)
        (rh, rw), (dh, dw) = r_img.shape[:2], d_img.shape[:2]
        if abs(rh * dw / rw - dh) > 1.0:  # the height the width's scale predicts, within a pixel
            raise DataError(f"pair {i}: degraded {dw}x{dh} does not have the aspect ratio of restored {rw}x{rh}")
        out[i] = psnr(r_img, _resize_to(d_img, (rh, rw)))
    return out


def luma(images: torch.Tensor) -> torch.Tensor:
    """The BT.601 luma (N,1,H,W) of an (N,3,H,W) RGB batch."""
    return (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]


def sobel_energy(y: torch.Tensor) -> torch.Tensor:
    """The squared Sobel gradient magnitude (N,1,H,W) of an (N,1,H,W) batch, edges replicated."""
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=y.device, dtype=y.dtype)
    kernels = torch.stack([sobel_x, sobel_x.T])[:, None]
    return F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), kernels).pow(2).sum(dim=1, keepdim=True)


def gradient_energy(images: torch.Tensor) -> torch.Tensor:
    """Tenengrad focus measure: the mean squared Sobel gradient magnitude of the luma (BT.601) of an
    (N,3,H,W) batch in [0, 1] (edges replicated): the ``sharpness (no reference)`` baseline, shape (N,)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"expected an (N,3,H,W) batch, got shape {tuple(images.shape)}")
    # float32: MPS has no float64
    return sobel_energy(luma(images.float())).flatten(1).mean(dim=1)


def sharpness(restored: Sequence[ImageLike]) -> np.ndarray:
    """:func:`gradient_energy` of each restored image (paths or arrays, uint8 or float in [0, 1], HWC RGB)."""
    out = np.empty(len(restored))
    for i, image in enumerate(restored):  # one at a time: sizes may differ
        t = torch.from_numpy(np.ascontiguousarray(_as_float(image).transpose(2, 0, 1)))[None]
        out[i] = float(gradient_energy(t)[0])
    return out


def labeller_scores(restored: Sequence[ImageLike], pristine: Sequence[ImageLike], labeller: str | Any,
                    batch_size: int = 4) -> np.ndarray:
    """A full-reference labeller (name or callable) of each restored image against its pristine."""
    from drqa_plugin.data.labellers import get_labeller

    if len(restored) != len(pristine):
        raise DataError(f"restored ({len(restored)}) and pristine ({len(pristine)}) differ in length")
    if isinstance(labeller, str):
        try:
            fn = get_labeller(labeller)
        except (ValueError, ImportError) as exc:
            raise DataError(f"labeller {labeller!r}: {exc}") from None
    else:
        fn = labeller
    out = np.empty(len(restored))
    for i in range(len(restored)):  # one pair at a time: sizes may differ between pairs
        r, p = _as_float(restored[i]), _as_float(pristine[i])
        if r.shape != p.shape:
            raise DataError(f"pair {i}: restored {r.shape[1]}x{r.shape[0]} and pristine {p.shape[1]}x{p.shape[0]} differ in size")
        tr = torch.from_numpy(r.transpose(2, 0, 1).astype(np.float32))[None]
        tp = torch.from_numpy(p.transpose(2, 0, 1).astype(np.float32))[None]
        with torch.no_grad():
            out[i] = float(fn(tr, tp).reshape(-1)[0])
    return out


OTHER_REFERENCE = "model, another input's reference"


def other_input_references(groups: Sequence[Hashable]) -> list[int]:
    """For each pair, the index of a pair of another group whose degraded input it is scored against.

    Groups are sorted and each takes the first pair of the group half-way round, so no group
    keeps its own input and the choice is deterministic. Needs at least two groups.
    """
    order = sorted(set(groups), key=str)
    if len(order) < 2:
        raise DataError("the other-input reference check needs at least two groups")
    first: dict[Hashable, int] = {}
    for i, g in enumerate(groups):
        first.setdefault(g, i)
    partner = {g: order[(k + len(order) // 2) % len(order)] for k, g in enumerate(order)}
    return [first[partner[g]] for g in groups]


def compute_baselines(pairs: Sequence[Any], *, methods: Sequence[Hashable] | None = None,
                      scenes: Sequence[Hashable] | None = None, pristine: Sequence[ImageLike] | None = None,
                      labeller: str | Iterable[str] | None = None, psnr_input: bool = True,
                      sharpness_row: bool = True) -> dict[str, np.ndarray]:
    """Baseline predictions for labelled pairs (e.g. ``drqa_plugin.evaluation.EvalPair``).

    ``pairs`` have ``restored``, ``degraded`` (paths or arrays), ``mos`` and ``group``;
    ``methods`` default to each pair's ``method`` attribute (the method prior is left out
    when no pair has one), ``scenes`` (what the prior leaves out) to each pair's ``photo``
    where it has one (other crops of a photo share its content), else to its group. The
    labeller rows need ``pristine`` (aligned with ``pairs``) and ``labeller`` (one name
    or several). Returns ``{row name: predictions}`` in a fixed order.
    """
    if not pairs:
        raise DataError("no pairs to compute baselines on")
    targets = [float(p.mos) for p in pairs]
    if methods is None:
        found = [getattr(p, "method", "") or "" for p in pairs]
        methods = found if all(found) else None
        if any(found) and not all(found):
            raise DataError(f"{sum(not m for m in found)} of {len(found)} pairs have no method; "
                            "the method prior needs all of them")
    if scenes is None:
        scenes = [getattr(p, "photo", "") or p.group for p in pairs]
    out: dict[str, np.ndarray] = {}
    if methods is not None:
        out[METHOD_PRIOR] = method_prior(methods, targets, scenes)
    if psnr_input:
        out[PSNR_VS_INPUT] = psnr_vs_input([p.restored for p in pairs], [p.degraded for p in pairs])
    if sharpness_row:
        out[SHARPNESS] = sharpness([p.restored for p in pairs])
    if labeller is not None:
        if pristine is None:
            raise DataError("the labeller baseline needs the pristine images")
        for name in ([labeller] if isinstance(labeller, str) else list(labeller)):
            out[f"labeller {name}"] = labeller_scores([p.restored for p in pairs], pristine, name)
    return out


def score_rows(targets: Sequence[float], groups: Sequence[Hashable] | None,
               predictions: Mapping[str, Values], min_group_size: int = 3) -> list[tuple[str, Any]]:
    """``[(row name, Correlations)]`` for every prediction vector, on the same targets and groups."""
    rows = []
    for name, preds in predictions.items():
        rows.append((name, correlate(preds, targets, groups, min_group_size)))
    return rows


def format_table(rows: Sequence[tuple[str, Any]], title: str | None = None) -> str:
    """An aligned text table: one line per row (model first if it is first), global and grouped columns."""
    width = max([len("row")] + [len(name) for name, _ in rows])
    head = (f"{'':{width}}  {'global':^23}  {'grouped (per input)':^23}\n"
            f"{'row':{width}}  {'SRCC':>7} {'PLCC':>7} {'KRCC':>7}  {'SRCC':>7} {'PLCC':>7} {'KRCC':>7}  "
            f"{'n':>6} {'groups':>6}")
    lines = ([title] if title else []) + [head]

    def f(v: float) -> str:
        return f"{v:7.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{'-':>7}"

    for name, r in rows:
        lines.append(f"{name:{width}}  {f(r.srcc)} {f(r.plcc)} {f(r.krcc)}  {f(r.grouped_srcc)} "
                     f"{f(r.grouped_plcc)} {f(r.grouped_krcc)}  {r.n:6d} {r.n_groups:6d}")
    return "\n".join(lines)


def method_ranks(values: Values, groups: Sequence[Hashable], methods: Sequence[Hashable],
                 min_group_size: int = 2) -> dict[Hashable, float]:
    """Mean within-group percentile rank of each method: 0 = last of its group, 1 = first.

    This is what the grouped SRCC compares, per method: a row of predictions whose method
    ranks match the label's orders each input as the label does, and a method ranked far
    from its label rank is where a model is wrong (a recogniser of methods ranks every
    method the same in every group). Ties share their average rank; groups smaller than
    ``min_group_size`` are skipped. Methods are returned in order of first appearance.
    """
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    g, m = list(groups), list(methods)
    if not (len(g) == len(m) == v.size):
        raise DataError(f"values ({v.size}), groups ({len(g)}) and methods ({len(m)}) differ in length")
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(g):
        members.setdefault(key, []).append(i)
    acc: dict[Hashable, list[float]] = {key: [] for key in dict.fromkeys(m)}
    for idx in members.values():
        if len(idx) < max(2, min_group_size):
            continue
        ranks = (rankdata(v[idx]) - 1.0) / (len(idx) - 1)
        for i, r in zip(idx, ranks):
            acc[m[i]].append(float(r))
    return {key: float(np.mean(r)) for key, r in acc.items() if r}


def format_method_ranks(table: Mapping[str, Mapping[Hashable, float]], title: str | None = None) -> str:
    """One line per method, one column per row of :func:`method_ranks` (the label's column first)."""
    methods = list(dict.fromkeys(k for ranks in table.values() for k in ranks))
    methods.sort(key=str)
    width = max([len("method")] + [len(str(k)) for k in methods])
    names = list(table)
    cols = [max(6, len(n)) for n in names]
    lines = ([title] if title else []) + [f"{'method':{width}}  " + "  ".join(f"{n:>{c}}" for n, c in zip(names, cols))]
    for key in methods:
        cells = [f"{table[n][key]:{c}.2f}" if key in table[n] else f"{'-':>{c}}" for n, c in zip(names, cols)]
        lines.append(f"{str(key):{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def method_rank_table(targets: Values, groups: Sequence[Hashable], methods: Sequence[Hashable],
                      predictions: Mapping[str, Values], min_group_size: int = 2, title: str | None = None) -> str:
    """:func:`method_ranks` of the label (first column) and of every row of ``predictions``, formatted."""
    table = {name: method_ranks(values, groups, methods, min_group_size)
             for name, values in {"label": targets, **predictions}.items()}
    return format_method_ranks(table, title=title)


def bank_baselines(bank: Any, split: str | None = "val", labeller: str | Iterable[str] | None = None,
                   psnr_input: bool = True, sharpness_row: bool = True,
                   ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """(baseline predictions, targets, groups) of a restoration bank's split.

    ``bank`` is a folder built by :func:`drqa_plugin.data.bank.build_bank` or its
    manifest. The method prior leaves out whole photos (inputs of one photo share its
    content) and keys methods by task (``sr_x4/bicubic``); groups are the inputs.
    """
    from drqa_plugin.data.bank import BankManifest, load_manifest

    manifest = bank if isinstance(bank, BankManifest) else load_manifest(bank)
    items = manifest.split_items(split)
    if not items:
        raise DataError(f"bank {manifest.out_dir} has no items in split {split!r}")
    root = Path(manifest.out_dir)
    targets = np.array([i.label for i in items])
    groups = [i.input_id for i in items]
    out: dict[str, np.ndarray] = {METHOD_PRIOR: method_prior([f"{i.task}/{i.method}" for i in items], targets,
                                                             [i.photo for i in items])}
    if psnr_input:
        out[PSNR_VS_INPUT] = psnr_vs_input([root / i.name for i in items], [root / i.reference for i in items])
    if sharpness_row:
        out[SHARPNESS] = sharpness([root / i.name for i in items])
    if labeller is not None:
        for name in ([labeller] if isinstance(labeller, str) else list(labeller)):
            out[f"labeller {name}"] = labeller_scores([root / i.name for i in items],
                                                      [root / i.pristine for i in items], name)
    return out, targets, groups


__all__ = [
    "METHOD_PRIOR",
    "PSNR_CAP",
    "PSNR_VS_INPUT",
    "SHARPNESS",
    "bank_baselines",
    "compute_baselines",
    "format_method_ranks",
    "format_table",
    "gradient_energy",
    "labeller_scores",
    "luma",
    "method_prior",
    "method_rank_table",
    "method_ranks",
    "psnr",
    "psnr_vs_input",
    "score_rows",
    "sharpness",
    "sobel_energy",
]
