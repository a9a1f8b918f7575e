"""Correlation metrics of IQA evaluation: SRCC, PLCC, KRCC, global and per reference.

Conventions (documented because scipy returns NaN with a warning instead):

* Ties use average ranks (SRCC) and Kendall's tau-b (KRCC), as scipy does.
* Constant predictions carry no ranking information: the correlation is 0.
* Constant targets (or fewer than 2 items) make a correlation undefined: NaN
  globally; such groups are skipped in the grouped protocol and counted.
* PLCC is plain Pearson (no logistic fit), as in the official CKDN evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar, Union

import numpy as np

from drqa_plugin.errors import DataError

#: Predictions or targets: any 1-D sequence of numbers (lists, NumPy arrays, ...).
Values = Union[Sequence[float], np.ndarray]


@dataclass(frozen=True)
class Correlations:
    """Global and per-reference ("grouped") correlations of predictions with targets."""

    #: the fields a validation log row or summary carries
    FIELDS: ClassVar[tuple[str, ...]] = ("srcc", "plcc", "krcc", "grouped_srcc", "grouped_plcc", "grouped_krcc", "n")

    n: int
    srcc: float
    plcc: float
    krcc: float
    grouped_srcc: float  # mean over evaluated groups (NaN if none)
    grouped_plcc: float
    grouped_krcc: float
    n_groups: int  # groups evaluated
    n_groups_skipped: int  # groups too small or with constant targets

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def row(self) -> dict[str, float | int]:
        """The :attr:`FIELDS` of a validation log row or summary."""
        return {k: getattr(self, k) for k in self.FIELDS}

    @property
    def selection_score(self) -> float:
        """SRCC + PLCC, the official model-selection criterion (NaN counts as -inf)."""
        value = self.srcc + self.plcc
        return value if math.isfinite(value) else float("-inf")

    def format(self) -> str:
        """A small aligned table for terminals and logs."""
        rows = [
            ("global", self.srcc, self.plcc, self.krcc, f"n={self.n}"),
            ("grouped", self.grouped_srcc, self.grouped_plcc, self.grouped_krcc,
             f"groups={self.n_groups} skipped={self.n_groups_skipped}"),
        ]
        lines = [f"{'':8} {'SRCC':>7} {'PLCC':>7} {'KRCC':>7}"]
        lines += [f"{name:8} {s:7.4f} {p:7.4f} {k:7.4f}  {note}" for name, s, p, k, note in rows]
        return "\n".join(lines)


def _as_arrays(preds: Values, targets: Values) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(preds, dtype=np.float64).reshape(-1)
    t = np.asarray(targets, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise DataError(f"predictions ({p.size}) and targets ({t.size}) differ in length")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise DataError("predictions and targets must be finite (found NaN or inf)")
    return p, t


def _degenerate(p: np.ndarray, t: np.ndarray) -> float | None:
    """The conventional value when a correlation is not computable, else None."""
    if p.size < 2 or np.ptp(t) == 0:
        return float("nan")
    if np.ptp(p) == 0:
        return 0.0
    return None


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    tie_id = np.cumsum(starts) - 1
    bounds = np.r_[np.flatnonzero(starts), values.size]
    average = 0.5 * (bounds[:-1] + bounds[1:] + 1)  # mean of ranks start+1 .. end
    ranks = np.empty(values.size)
    ranks[order] = average[tie_id]
    return ranks


def plcc(preds: Values, targets: Values) -> float:
    p, t = _as_arrays(preds, targets)
    special = _degenerate(p, t)
    if special is not None:
        return special
    p, t = p - p.mean(), t - t.mean()
    return float(np.clip((p @ t) / math.sqrt((p @ p) * (t @ t)), -1.0, 1.0))


def srcc(preds: Values, targets: Values) -> float:
    p, t = _as_arrays(preds, targets)
    special = _degenerate(p, t)
    if special is not None:
        return special
    return plcc(rankdata(p), rankdata(t))


def krcc(preds: Values, targets: Values) -> float:
    p, t = _as_arrays(preds, targets)
    special = _degenerate(p, t)
    if special is not None:
        return special
    # scipy's O(n log n) tau-b; imported here so the rest works without scipy.
    try:
        from scipy.stats import kendalltau
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("KRCC needs scipy: pip install scipy") from exc
    return float(kendalltau(p, t, variant="b").statistic)


def correlate(
    preds: Values,
    targets: Values,
    groups: Sequence[Hashable] | None = None,
    min_group_size: int = 3,
) -> Correlations:
    """Global correlations plus the per-reference protocol.

    Groups may have any sizes; a group with fewer than ``min_group_size`` items
    or constant targets is skipped (and counted in ``n_groups_skipped``).
    Without ``groups`` the grouped fields are NaN.
    """
    p, t = _as_arrays(preds, targets)
    if p.size == 0:
        raise DataError("cannot evaluate an empty set of predictions")
    per_group: list[tuple[float, float, float]] = []
    skipped = 0
    if groups is not None:
        g = list(groups)
        if len(g) != p.size:
            raise DataError(f"groups ({len(g)}) and predictions ({p.size}) differ in length")
        members: dict[Hashable, list[int]] = {}
        for i, key in enumerate(g):
            members.setdefault(key, []).append(i)
        for idx in members.values():
            gp, gt = p[idx], t[idx]
            if len(idx) < max(2, min_group_size) or np.ptp(gt) == 0:
                skipped += 1
                continue
            per_group.append((srcc(gp, gt), plcc(gp, gt), krcc(gp, gt)))
    means = np.mean(per_group, axis=0) if per_group else np.full(3, np.nan)
    return Correlations(
        n=int(p.size),
        srcc=srcc(p, t),
        plcc=plcc(p, t),
        krcc=krcc(p, t),
        grouped_srcc=float(means[0]),
        grouped_plcc=float(means[1]),
        grouped_krcc=float(means[2]),
        n_groups=len(per_group),
        n_groups_skipped=skipped,
    )
