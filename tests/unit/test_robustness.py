"""Robustness metrics: CE and mCE against a reference, extras, undefined ratios, softmax shifts."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from harness.measure.robustness import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    CorruptionCell,
    RobustnessReport,
    cell_from_logits,
    robustness_delta,
    robustness_report,
)

FloatArray = npt.NDArray[np.float64]
N, CLASSES = 400, 10


def _logits_with_accuracy(
    acc: float, scale: float = 8.0, seed: int = 0
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Logits whose argmax is right on exactly `acc` of N samples; `scale` sets how peaked the softmax is."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=N)
    pred = labels.copy()
    wrong = rng.choice(N, size=round((1 - acc) * N), replace=False)
    pred[wrong] = (labels[wrong] + 1) % CLASSES
    z = rng.normal(0.0, 0.1, size=(N, CLASSES))
    z[np.arange(N), pred] += 1.0
    return z * scale, labels


def _cells(err: Callable[[str, int], float], names: tuple[str, ...] = CORRUPTIONS) -> list[CorruptionCell]:
    return [
        CorruptionCell(name, s, 1.0 - err(name, s), mean_confidence=0.5, mean_entropy=1.0)
        for name in names
        for s in range(1, 6)
    ]


def _base_err(name: str, s: int) -> float:
    # A distinct error per corruption, growing with severity, never above 0.45 so doubling stays <= 0.9.
    return 0.05 + 0.02 * (CORRUPTIONS + EXTRA_CORRUPTIONS).index(name) / 2 + 0.03 * s


def _report(
    cells: list[CorruptionCell], reference: list[CorruptionCell] | None, clean_acc: float = 0.95
) -> RobustnessReport:
    clean, labels = _logits_with_accuracy(clean_acc)
    return robustness_report(clean, labels, cells, reference, reference_clean_acc=0.95)


# --- CE and mCE ----------------------------------------------------------------------------------------


def test_a_model_normalised_by_itself_has_every_ce_equal_to_one() -> None:
    cells = _cells(_base_err)
    r = _report(cells, cells)
    assert set(r.ce) == set(CORRUPTIONS)
    assert all(v == pytest.approx(1.0) for v in r.ce.values())
    assert r.mce == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in r.relative_ce.values())
    assert r.rel_mce == pytest.approx(1.0)
    assert r.clean_acc == pytest.approx(0.95)
    assert r.excluded == {}


def test_twice_the_errors_is_a_ce_of_two() -> None:
    r = _report(_cells(lambda c, s: 2 * _base_err(c, s)), _cells(_base_err))
    assert all(v == pytest.approx(2.0) for v in r.ce.values())
    assert r.mce == pytest.approx(2.0)


def test_relative_ce_measures_the_fall_from_each_models_own_clean_accuracy() -> None:
    # Candidate clean error 10%, reference 5%; both lose 10 points under every corruption: same relative CE.
    ref = _cells(lambda c, s: 0.15)
    cand = _cells(lambda c, s: 0.20)
    r = _report(cand, ref, clean_acc=0.90)
    assert r.relative_ce["fog"] == pytest.approx(1.0)
    assert r.ce["fog"] == pytest.approx(0.20 / 0.15)


def test_worst_corruption_is_the_one_with_lowest_mean_accuracy() -> None:
    def err(name: str, s: int) -> float:
        return 0.6 if name == "glass_blur" else _base_err(name, s)

    r = _report(_cells(err), _cells(_base_err))
    assert r.worst_corruption == "glass_blur"


def test_extra_corruptions_are_reported_but_kept_out_of_mce() -> None:
    names = CORRUPTIONS + EXTRA_CORRUPTIONS
    ref = _cells(_base_err, names)
    cand = _cells(lambda c, s: 2 * _base_err(c, s) if c in EXTRA_CORRUPTIONS else _base_err(c, s), names)
    r = _report(cand, ref)
    assert r.ce["spatter"] == pytest.approx(2.0)
    assert r.mce == pytest.approx(1.0)
    assert list(r.ce) == list(names)  # benchmark order, then the extras
    assert set(r.excluded) == set(EXTRA_CORRUPTIONS)
    assert "not part of mCE" in r.excluded["saturate"]


def test_a_reference_without_errors_leaves_ce_undefined_and_says_why() -> None:
    ref = _cells(lambda c, s: 0.0 if c == "brightness" else _base_err(c, s))
    r = _report(_cells(_base_err), ref)
    assert math.isnan(r.ce["brightness"]) and math.isnan(r.relative_ce["brightness"])
    assert "CE undefined: the reference made no errors" in r.excluded["brightness"]
    assert r.mce == pytest.approx(1.0)  # the mean of the 14 defined values


def test_relative_ce_is_undefined_when_the_reference_does_not_degrade() -> None:
    # Reference clean error 5%; under contrast it errs 4%: its error fell, so the ratio has no meaning.
    ref = _cells(lambda c, s: 0.04 if c == "contrast" else _base_err(c, s))
    r = _report(_cells(_base_err), ref)
    assert not math.isnan(r.ce["contrast"])
    assert math.isnan(r.relative_ce["contrast"])
    assert "relative CE undefined" in r.excluded["contrast"]
    assert "-5.00 pp" in r.excluded["contrast"]


def test_without_a_reference_outside_imagenet_the_report_asks_for_one() -> None:
    clean, labels = _logits_with_accuracy(0.9)
    for dataset in (None, "cifar10"):
        with pytest.raises(ValueError, match=r"a reference \(FP32 run\) is needed"):
            robustness_report(clean, labels, _cells(_base_err), None, None, dataset=dataset)


def test_imagenet_without_a_reference_normalises_by_alexnet() -> None:
    clean, labels = _logits_with_accuracy(1.0 - ALEXNET_CLEAN_ERROR)
    names = CORRUPTIONS + EXTRA_CORRUPTIONS
    alexnet_like = _cells(lambda c, s: ALEXNET_ERRORS[c], names)
    r = robustness_report(clean, labels, alexnet_like, None, None, dataset="imagenet")
    assert all(v == pytest.approx(1.0) for v in r.ce.values())
    assert r.mce == pytest.approx(1.0)
    # The clean accuracy is 0.565 of 400 samples, so relative CE is 1 only to that resolution.
    assert r.rel_mce == pytest.approx(1.0, abs=0.01)
    assert len(ALEXNET_ERRORS) == 19

    with pytest.raises(ValueError, match="severities 1-5"):
        robustness_report(clean, labels, alexnet_like[:3], None, None, dataset="imagenet")


def test_mismatched_reference_is_an_error_that_says_how_to_fix_it() -> None:
    cells = _cells(_base_err)
    clean, labels = _logits_with_accuracy(0.9)
    with pytest.raises(ValueError, match="reference has no cells for fog"):
        robustness_report(clean, labels, cells, [c for c in cells if c.corruption != "fog"], 0.9)
    with pytest.raises(ValueError, match=r"'snow': candidate severities \[1, 2, 3, 4, 5\] but reference has"):
        robustness_report(
            clean, labels, cells, [c for c in cells if (c.corruption, c.severity) != ("snow", 5)], 0.9
        )
    with pytest.raises(ValueError, match="reference_clean_acc"):
        robustness_report(clean, labels, cells, cells, None)
    with pytest.raises(ValueError, match="two cells for 'fog' severity 1"):
        robustness_report(clean, labels, [*cells, cells[CORRUPTIONS.index("fog") * 5]], cells, 0.9)


# --- cells, confidence and entropy -----------------------------------------------------------------------


def test_cell_from_logits_is_stable_for_huge_logits_and_exact_for_uniform_ones() -> None:
    labels = np.array([0, 1, 2])
    huge = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0], [5e3, 0.0, 1e4]])
    cell = cell_from_logits("snow", 3, huge, labels)
    assert cell.top1_acc == 1.0
    assert cell.mean_confidence == pytest.approx(1.0)
    assert cell.mean_entropy == pytest.approx(0.0, abs=1e-12)

    uniform = cell_from_logits("fog", 1, np.zeros((3, 4)), np.array([0, 1, 2]))
    assert uniform.mean_confidence == pytest.approx(0.25)
    assert uniform.mean_entropy == pytest.approx(math.log(4))


def test_a_flattened_softmax_lowers_confidence_and_raises_entropy() -> None:
    clean, labels = _logits_with_accuracy(0.9, scale=8.0)
    # Same decisions, softer scores: what noise does to a network's certainty before it changes its mind.
    cells = [cell_from_logits("gaussian_noise", s, clean / (1 + s), labels) for s in range(1, 6)]
    r = robustness_report(clean, labels, cells, cells, reference_clean_acc=0.9)
    assert r.confidence_shift["gaussian_noise"] < -0.1
    assert r.entropy_shift["gaussian_noise"] > 0.1
    assert all(c.top1_acc == pytest.approx(0.9) for c in r.cells)


def test_cells_reject_values_that_cannot_be_measurements() -> None:
    with pytest.raises(ValueError, match=r"top1_acc=1\.5"):
        CorruptionCell("fog", 1, 1.5, 0.5, 1.0)
    with pytest.raises(ValueError, match="severity must be a positive integer"):
        CorruptionCell("fog", 0, 0.5, 0.5, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        cell_from_logits("fog", 1, np.array([[np.nan, 0.0]]), np.array([0]))


# --- quantised vs FP32 -----------------------------------------------------------------------------------


def test_robustness_delta_is_candidate_minus_reference_in_points() -> None:
    ref_cells = _cells(_base_err)
    int8_cells = _cells(lambda c, s: _base_err(c, s) + (0.04 if c == "shot_noise" else 0.0))
    fp32 = _report(ref_cells, ref_cells)
    int8 = _report(int8_cells, ref_cells)
    delta = robustness_delta(int8, fp32)
    assert list(delta) == list(CORRUPTIONS)
    assert delta["shot_noise"] == pytest.approx(-4.0)
    assert delta["fog"] == pytest.approx(0.0)

    partial = _report(ref_cells[:10], ref_cells)
    with pytest.raises(ValueError, match="different corruptions"):
        robustness_delta(partial, fp32)
