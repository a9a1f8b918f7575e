import math

import numpy as np
import pytest
from scipy import stats

from drqa_plugin.metrics import Correlations, correlate, krcc, plcc, rankdata, srcc


def _made_up(n: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.normal(size=n)
    p = 0.6 * t + rng.normal(scale=0.8, size=n)
    if ties:  # coarse values create many ties in both
        t, p = np.round(t, 0), np.round(p, 0)
    return p, t


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n,seed", [(5, 0), (40, 1), (333, 2)])
def test_matches_scipy(n, seed, ties):
    p, t = _made_up(n, seed, ties)
    assert srcc(p, t) == pytest.approx(stats.spearmanr(p, t).statistic, abs=1e-12)
    assert plcc(p, t) == pytest.approx(stats.pearsonr(p, t).statistic, abs=1e-12)
    assert krcc(p, t) == pytest.approx(stats.kendalltau(p, t).statistic, abs=1e-12)


@pytest.mark.parametrize(
    "preds, targets, tau_b",
    [
        # 6 pairs: 3 concordant, 1 discordant, 1 tied in preds only, 1 tied in targets only:
        # (3 - 1) / sqrt((6 - 1) * (6 - 1)) = 0.4 (tau-a would be 2/6, tau-c 0.375)
        ([1, 2, 2, 3], [1, 3, 2, 2], 0.4),
        # 10 pairs: 7 concordant, 0 discordant, one pair tied in both, ties {0,1},{3,4} in preds and
        # {0,1},{2,3} in targets: 7 / sqrt((10 - 2) * (10 - 2)) = 0.875 (tau-a: 0.7)
        ([1, 1, 2, 3, 3], [1, 1, 2, 2, 3], 0.875),
        # reversed order with a tie in each: (0 - 5) / sqrt((6 - 1) * (6 - 1)) = -1.0
        ([4, 3, 3, 1], [1, 2, 2, 4], -1.0),
    ],
)
def test_krcc_is_kendalls_tau_b_by_hand(preds, targets, tau_b):
    assert krcc(preds, targets) == pytest.approx(tau_b, abs=1e-12)
    assert krcc(targets, preds) == pytest.approx(tau_b, abs=1e-12)  # symmetric


def test_rankdata_matches_scipy():
    rng = np.random.default_rng(5)
    for values in (rng.integers(0, 4, size=50).astype(float), rng.normal(size=20), np.ones(7), np.array([3.0])):
        np.testing.assert_array_equal(rankdata(values), stats.rankdata(values))


def test_perfect_and_inverted_rankings():
    t = np.arange(10.0)
    assert srcc(t**3, t) == pytest.approx(1.0)
    assert krcc(-t, t) == pytest.approx(-1.0)
    assert plcc(2 * t + 1, t) == pytest.approx(1.0)


def test_constant_inputs():
    t = np.arange(6.0)
    # A constant predictor carries no ranking information: 0, not NaN.
    assert srcc(np.ones(6), t) == 0.0 and plcc(np.ones(6), t) == 0.0 and krcc(np.ones(6), t) == 0.0
    # Constant targets (or a single item): undefined.
    assert math.isnan(srcc(t, np.ones(6))) and math.isnan(plcc(t, np.ones(6))) and math.isnan(krcc(t, np.ones(6)))
    assert math.isnan(srcc([1.0], [2.0]))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="differ in length"):
        srcc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        plcc([1, float("nan"), 3], [1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        correlate([], [])
    with pytest.raises(ValueError, match="groups"):
        correlate([1, 2, 3], [1, 2, 3], groups=["a", "b"])


def test_grouped_any_sizes_and_skips():
    rng = np.random.default_rng(7)
    sizes = {"a": 7, "b": 3, "c": 12, "tiny": 2, "flat": 5}
    groups, preds, targets = [], [], []
    for name, size in sizes.items():
        t = np.full(size, 1.0) if name == "flat" else rng.normal(size=size)
        groups += [name] * size
        targets += list(t)
        preds += list(t + rng.normal(scale=0.7, size=size))
    # Interleave to prove grouping does not rely on order.
    order = rng.permutation(len(groups))
    groups = [groups[i] for i in order]
    preds = np.asarray(preds)[order]
    targets = np.asarray(targets)[order]

    result = correlate(preds, targets, groups, min_group_size=3)
    assert isinstance(result, Correlations)
    assert result.n == len(groups)
    assert result.n_groups == 3 and result.n_groups_skipped == 2  # "tiny" too small, "flat" constant targets
    expected = {"srcc": [], "plcc": [], "krcc": []}
    for name in ("a", "b", "c"):
        idx = [i for i, g in enumerate(groups) if g == name]
        expected["srcc"].append(stats.spearmanr(preds[idx], targets[idx]).statistic)
        expected["plcc"].append(stats.pearsonr(preds[idx], targets[idx]).statistic)
        expected["krcc"].append(stats.kendalltau(preds[idx], targets[idx]).statistic)
    assert result.grouped_srcc == pytest.approx(np.mean(expected["srcc"]), abs=1e-12)
    assert result.grouped_plcc == pytest.approx(np.mean(expected["plcc"]), abs=1e-12)
    assert result.grouped_krcc == pytest.approx(np.mean(expected["krcc"]), abs=1e-12)
    assert result.srcc == pytest.approx(stats.spearmanr(preds, targets).statistic, abs=1e-12)

    # With min_group_size=2 the two-item group counts too.
    assert correlate(preds, targets, groups, min_group_size=2).n_groups == 4


def test_no_groups_and_formatting():
    p, t = _made_up(30, 3, False)
    result = correlate(p, t)
    assert result.n_groups == 0 and math.isnan(result.grouped_srcc)
    assert result.selection_score == pytest.approx(result.srcc + result.plcc)
    text = result.format()
    assert "SRCC" in text and f"{result.srcc:.4f}" in text and "n=30" in text
    assert set(result.as_dict()) >= {"srcc", "plcc", "krcc", "grouped_srcc", "n_groups_skipped"}
    # An undefined global score must never win model selection.
    assert correlate([1.0, 2.0], [3.0, 3.0]).selection_score == float("-inf")
