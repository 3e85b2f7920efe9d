"""Accuracy parity: identical, noisy and regressed outputs, the paired interval's coverage, properties."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harness.measure.parity import (
    ParityBudget,
    ParityMetrics,
    check_parity,
    compare_outputs,
    paired_drop_interval,
)

FloatArray = npt.NDArray[np.float64]


def _logits(rng: np.random.Generator, n: int = 1000, classes: int = 10) -> FloatArray:
    return rng.normal(0.0, 3.0, size=(n, classes))


def _regression(
    rng: np.random.Generator, n: int = 1000, flips: int = 50
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """Reference right on 80% of samples; the candidate turns `flips` of those right answers wrong."""
    ref = _logits(rng, n)
    pred = ref.argmax(axis=1)
    labels = pred.copy()
    wrong = rng.choice(n, size=n // 5, replace=False)
    labels[wrong] = (pred[wrong] + 1) % ref.shape[1]
    right = np.setdiff1d(np.arange(n), wrong)
    flipped = rng.choice(right, size=flips, replace=False)
    cand = ref.copy()
    # Lift a runner-up class above the winner: the decision changes, the other logits stay.
    other = (pred[flipped] + 3) % ref.shape[1]
    cand[flipped, other] = ref[flipped].max(axis=1) + 1.0
    return cand, ref, labels


# --- identical, noisy and regressed outputs ----------------------------------------------------------


def test_identical_outputs_are_in_perfect_parity_and_pass_the_budget() -> None:
    rng = np.random.default_rng(1)
    ref = _logits(rng)
    labels = rng.integers(0, 10, size=1000)
    m = compare_outputs(ref.copy(), ref, labels)
    assert m.n == 1000
    assert m.top1_agreement == 1.0 and m.top5_agreement == 1.0
    assert m.top1_acc == m.reference_top1_acc
    assert m.top1_drop_pp == 0.0
    assert m.psnr_db == math.inf and m.sqnr_db == math.inf
    assert m.cosine == pytest.approx(1.0)
    assert m.max_abs_err == m.mean_abs_err == m.p99_abs_err == 0.0
    assert check_parity(m, ParityBudget()) == ()


def test_no_discordant_pair_still_gives_an_honest_interval_that_shrinks_with_n() -> None:
    # 0 disagreements out of n does not prove the drop is exactly 0; Tango's bound is z^2 / (n + z^2).
    z2 = 1.959963984540054**2
    widths = []
    for n in (100, 1000, 10000):
        ones = np.ones(n, dtype=bool)
        lo, hi = paired_drop_interval(ones, ones)
        assert lo == pytest.approx(-hi)
        assert hi == pytest.approx(100 * z2 / (n + z2), rel=1e-6)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2] > 0


def test_small_noise_gives_finite_high_psnr_and_keeps_decisions() -> None:
    rng = np.random.default_rng(2)
    ref = _logits(rng)
    cand = ref + rng.normal(0.0, 1e-3, size=ref.shape)
    m = compare_outputs(cand, ref)
    assert 60.0 < m.psnr_db < math.inf
    assert 50.0 < m.sqnr_db < math.inf
    assert m.cosine > 0.9999
    assert m.top1_agreement > 0.99
    assert 0 < m.mean_abs_err <= m.p99_abs_err <= m.max_abs_err < 0.01
    assert m.top1_acc is None and m.top1_drop_pp is None and m.top1_drop_ci_pp is None
    assert check_parity(m, ParityBudget()) == ()


def test_psnr_and_sqnr_follow_their_definitions() -> None:
    ref = np.array([[4.0, -2.0], [1.0, 0.0]])
    cand = ref + np.array([[0.1, -0.1], [0.1, -0.1]])
    m = compare_outputs(cand, ref)
    assert m.psnr_db == pytest.approx(10 * math.log10(16.0 / 0.01))
    assert m.sqnr_db == pytest.approx(10 * math.log10(21.0 / 0.04))


def test_five_percent_regression_is_a_five_point_drop_whose_interval_excludes_zero() -> None:
    cand, ref, labels = _regression(np.random.default_rng(3))
    m = compare_outputs(cand, ref, labels)
    assert m.reference_top1_acc == pytest.approx(0.80)
    assert m.top1_acc == pytest.approx(0.75)
    assert m.top1_drop_pp == pytest.approx(5.0)
    assert m.top1_agreement == pytest.approx(0.95)
    assert m.top1_drop_ci_pp is not None
    lo, hi = m.top1_drop_ci_pp
    assert 0.0 < lo < 5.0 < hi
    # The interval reflects that 50 of 1000 is itself an estimate; it does not stop at the point estimate.
    assert hi > 6.0

    breaches = check_parity(m, ParityBudget())
    drop_msg = next(b for b in breaches if b.startswith("top-1 drop"))
    assert drop_msg == f"top-1 drop 5.0 pp (95% CI {lo:.1f}..{hi:.1f} pp) exceeds budget 1.0 pp"
    assert any(b.startswith("top-1 agreement 95.00% (50 of 1000 samples disagree)") for b in breaches)
    # Flipped decisions move the logits too: PSNR breaches the default 30 dB as well.
    assert any(b.startswith("logit PSNR") for b in breaches)
    # A 5.0 pp drop fits a 6 pp budget; with the other budgets loosened nothing breaches.
    assert check_parity(m, ParityBudget(max_top1_drop_pp=6.0, min_top1_agreement=0.9, min_psnr_db=20.0)) == ()


def test_a_value_just_over_the_budget_does_not_print_as_equal_to_it() -> None:
    m = ParityMetrics(
        n=1000, top1_acc=0.7, reference_top1_acc=0.7104, top1_drop_pp=1.04, top1_drop_ci_pp=(0.4, 1.7),
        top1_agreement=0.99, top5_agreement=1.0, psnr_db=40.0, sqnr_db=40.0, cosine=1.0,
        max_abs_err=0.1, mean_abs_err=0.01, p99_abs_err=0.05, confidence=0.9,
    )  # fmt: skip
    assert check_parity(m, ParityBudget()) == (
        "top-1 drop 1.04 pp (90% CI 0.40..1.70 pp) exceeds budget 1.0 pp",
    )


def test_low_psnr_is_a_breach_that_names_the_metric_and_budget() -> None:
    rng = np.random.default_rng(4)
    ref = _logits(rng)
    m = compare_outputs(ref + rng.normal(0.0, 1.0, size=ref.shape), ref)
    breaches = check_parity(m, ParityBudget(min_top1_agreement=0.0))
    assert len(breaches) == 1
    assert breaches[0].startswith("logit PSNR ") and breaches[0].endswith("is below budget 30.0 dB")


def test_non_finite_candidate_rows_are_void_predictions_and_fail_the_gate() -> None:
    rng = np.random.default_rng(5)
    ref = _logits(rng, n=100)
    labels = ref.argmax(axis=1)
    cand = ref.copy()
    cand[7, 2] = np.nan
    cand[9, 0] = np.inf
    m = compare_outputs(cand, ref, labels)
    assert m.top1_agreement == pytest.approx(0.98)
    assert m.top1_acc == pytest.approx(0.98)
    assert m.psnr_db == -math.inf and m.sqnr_db == -math.inf
    assert m.max_abs_err == math.inf and math.isnan(m.cosine)
    assert any("non-finite" in b for b in check_parity(m, ParityBudget(min_top1_agreement=0.9)))


def test_fewer_than_five_classes_compare_all_of_them() -> None:
    ref = np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    cand = ref[:, ::-1].copy()  # every ranking reversed, but a top-3 of 3 classes is all of them
    m = compare_outputs(cand, ref)
    assert m.top5_agreement == 1.0
    assert m.top1_agreement == 0.0


def test_top5_agreement_counts_partial_overlap() -> None:
    ref = np.arange(10.0)[None, :]  # top-5 = {5..9}
    cand = ref.copy()
    cand[0, 9], cand[0, 0] = 0.0, 9.0  # swap class 9 out of the top five for class 0
    assert compare_outputs(cand, ref).top5_agreement == pytest.approx(4 / 5)


def test_dense_outputs_are_flattened_per_sample() -> None:
    rng = np.random.default_rng(6)
    ref = rng.normal(size=(4, 3, 8, 8))
    m = compare_outputs(ref.copy(), ref)
    assert m.n == 4 and m.psnr_db == math.inf


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(
        ValueError, match=r"candidate shape \(8, 10\) does not match reference shape \(8, 11\)"
    ):
        compare_outputs(np.zeros((8, 10)), np.zeros((8, 11)))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([0, 1, 10]), r"labels must lie in 0\.\.9 .* first at index 2: 10"),
        (np.array([0, 1]), r"labels must be shaped \(3,\)"),
        (np.array([0.0, 1.0, 2.0]), "integer class indices"),
    ],
)
def test_bad_labels_say_what_is_wrong(labels: npt.NDArray[np.generic], match: str) -> None:
    ref = np.zeros((3, 10))
    with pytest.raises(ValueError, match=match):
        compare_outputs(ref, ref, labels)


def test_non_finite_reference_is_rejected() -> None:
    ref = np.zeros((3, 4))
    ref[1, 1] = np.nan
    with pytest.raises(ValueError, match="reference outputs contain 1 non-finite"):
        compare_outputs(np.zeros((3, 4)), ref)


def test_budget_rejects_values_that_cannot_be_a_budget() -> None:
    with pytest.raises(ValueError, match=r"min_top1_agreement=99\.0"):
        ParityBudget(min_top1_agreement=99.0)
    with pytest.raises(ValueError, match="max_top1_drop_pp=-1"):
        ParityBudget(max_top1_drop_pp=-1.0)


# --- the paired interval ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "p_lost", "p_gained"),
    [
        # Both right on 75%, both wrong on 18%; the candidate loses 5% and gains 2%: a 3 pp drop.
        (500, 0.05, 0.02),
        # The usual INT8 regression: nearly every discordant pair runs one way. Mapping an exact interval
        # for b / (b + c) onto the drop covers only 60% here, as it takes (b + c) / n as known.
        (1000, 0.04, 0.002),
    ],
)
def test_paired_interval_covers_the_true_drop_at_nominal_level(
    n: int, p_lost: float, p_gained: float
) -> None:
    # Exact coverage by enumerating every outcome is 95.0% in both cases; 2000 replications resolve it to
    # about +-0.5%. Intervals depend on the counts alone, so each distinct (lost, gained) is built once.
    reps, p_both = 2000, 0.75
    true_drop = (p_lost - p_gained) * 100
    rng = np.random.default_rng(20261124)
    counts = rng.multinomial(n, [p_both, p_lost, p_gained, 1 - p_both - p_lost - p_gained], size=reps)
    cache: dict[tuple[int, int], tuple[float, float]] = {}
    hits = 0
    for both, lost, gained, _ in counts:
        key = (int(lost), int(gained))
        if key not in cache:
            ref = np.r_[np.ones(both + lost, bool), np.zeros(n - both - lost, bool)]
            cand = np.r_[np.ones(both, bool), np.zeros(lost, bool), np.ones(gained, bool)]
            cand = np.r_[cand, np.zeros(n - cand.size, bool)]
            cache[key] = paired_drop_interval(cand, ref)
        lo, hi = cache[key]
        hits += lo <= true_drop <= hi
    assert hits / reps >= 0.94


def test_paired_interval_reaches_the_bounds_when_every_pair_disagrees_one_way() -> None:
    lo, hi = paired_drop_interval(np.zeros(20, bool), np.ones(20, bool))
    assert 0 < lo < 100 and hi == 100.0
    lo2, hi2 = paired_drop_interval(np.ones(20, bool), np.zeros(20, bool))
    assert (lo2, hi2) == pytest.approx((-hi, -lo))


def test_paired_interval_rejects_mismatched_or_non_binary_outcomes() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_drop_interval(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="booleans or 0/1"):
        paired_drop_interval(np.array([0.5, 1.0]), np.ones(2))
    with pytest.raises(ValueError, match="confidence"):
        paired_drop_interval(np.ones(3, bool), np.ones(3, bool), confidence=95)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 200).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n)).flatmap(
            lambda t: st.tuples(st.just(t[0]), st.just(t[1]), st.integers(0, t[0] - t[1]))
        )
    ),
    st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_paired_interval_brackets_the_estimate_and_widens_with_confidence(
    nbc: tuple[int, int, int], confidence: float
) -> None:
    n, b, c = nbc
    ref = np.r_[np.ones(b, bool), np.zeros(c, bool), np.zeros(n - b - c, bool)]
    cand = np.r_[np.zeros(b, bool), np.ones(c, bool), np.zeros(n - b - c, bool)]
    est = (b - c) * 100 / n
    lo, hi = paired_drop_interval(cand, ref, confidence)
    assert -100.0 <= lo <= est + 1e-9 and est - 1e-9 <= hi <= 100.0
    assert lo < hi
    lo99, hi99 = paired_drop_interval(cand, ref, 0.995)
    assert lo99 <= lo + 1e-9 and hi - 1e-9 <= hi99


# --- properties ----------------------------------------------------------------------------------------

_shapes = st.tuples(st.integers(1, 12), st.integers(1, 8))
_values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[FloatArray, FloatArray, list[int]]:
    """Two output arrays of one shape, and a permutation of their samples."""
    shape = draw(_shapes)
    a = draw(arrays(np.float64, shape, elements=_values))
    b = draw(arrays(np.float64, shape, elements=_values))
    return a, b, draw(st.permutations(range(shape[0])))


@settings(max_examples=60, deadline=None)
@given(_pairs())
def test_agreement_is_symmetric_and_cosine_is_bounded(case: tuple[FloatArray, FloatArray, list[int]]) -> None:
    a, b, _ = case
    ab, ba = compare_outputs(a, b), compare_outputs(b, a)
    assert ab.top1_agreement == ba.top1_agreement
    assert ab.top5_agreement == ba.top5_agreement
    assert ab.cosine == pytest.approx(ba.cosine)
    assert ab.max_abs_err == ba.max_abs_err
    assert -1.0 <= ab.cosine <= 1.0
    assert 0.0 <= ab.top1_agreement <= 1.0 and 0.0 <= ab.top5_agreement <= 1.0


@settings(max_examples=60, deadline=None)
@given(_pairs())
def test_metrics_do_not_depend_on_sample_order(case: tuple[FloatArray, FloatArray, list[int]]) -> None:
    a, b, perm = case
    n, classes = a.shape
    order = np.array(perm)
    labels = np.arange(n) % classes
    m = compare_outputs(a, b, labels)
    p = compare_outputs(a[order], b[order], labels[order])
    for field in ("top1_agreement", "top5_agreement", "top1_acc", "reference_top1_acc", "top1_drop_pp"):
        assert getattr(p, field) == pytest.approx(getattr(m, field), abs=1e-12)
    assert p.top1_drop_ci_pp == pytest.approx(m.top1_drop_ci_pp)
    for field in ("psnr_db", "sqnr_db", "cosine", "mean_abs_err"):
        assert getattr(p, field) == pytest.approx(getattr(m, field), rel=1e-9, abs=1e-12)
    assert (p.max_abs_err, p.p99_abs_err) == (m.max_abs_err, m.p99_abs_err)
